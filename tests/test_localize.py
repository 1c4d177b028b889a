"""Visual localisation: cameras, epipolar checks, triangulation, maps and PnP on real posed photos.

The end-to-end tests use 7 map images and 2 queries of ../shared/data/strecha_posed/castle-P19
(real photographs with metric ground-truth cameras).
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from matchlens.errors import MapError
from matchlens.local.features import LocalFeatures
from matchlens.localize.cameras import (PosedCamera, parse_camera_model, parse_intrinsics, pose_errors,
                                        read_cameras_json, rotation_error_deg)
from matchlens.localize.matching import fundamental_from_poses, sampson_distance
from matchlens.localize.triangulate import build_tracks, triangulate_tracks
from tests.conftest import SHARED_DATA, make_scene, run_cli

SCENE = SHARED_DATA / "strecha_posed" / "castle-P19"
MAP_NAMES = ["0000.jpg", "0002.jpg", "0003.jpg", "0005.jpg", "0006.jpg", "0008.jpg", "0009.jpg"]
QUERIES = ["0004.jpg", "0007.jpg"]


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _camera(name: str, C, look_at=(0.0, 0.0, 10.0)) -> PosedCamera:
    """A camera at C looking at ``look_at`` (y down)."""
    z = np.asarray(look_at, float) - np.asarray(C, float)
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    K = np.array([[800.0, 0, 320], [0, 800, 240], [0, 0, 1]])
    return PosedCamera(name, K, R, np.asarray(C, float), 640, 480)


def _features(xy: np.ndarray) -> LocalFeatures:
    n = len(xy)
    return LocalFeatures(xy.astype(np.float32), np.ones(n, np.float32), np.zeros(n, np.float32),
                         np.zeros((n, 128), np.float32), (640, 480))


# ---------------------------------------------------------------------------------------------
# Cameras and geometry


def test_cameras_json_of_the_shared_scene_are_rotations_and_project_in_front():
    if not SCENE.is_dir():
        pytest.skip("strecha_posed is not present")
    cameras = read_cameras_json(SCENE / "cameras.json")
    assert len(cameras) == 19
    cam = cameras["0000.jpg"]
    assert np.allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-5) and cam.t.shape == (3,)
    ahead = cam.C + 5.0 * cam.R[2]  # 5 m along the optical axis projects to the principal point
    pixel, depth = cam.project(ahead[None])
    assert depth[0] == pytest.approx(5.0) and np.allclose(pixel[0], cam.K[:2, 2])


@pytest.mark.parametrize("content, message", [
    ("{", "cannot read cameras file"), ("[]", "non-empty JSON object"),
    ('{"a.jpg": {"K": [[1,0,0],[0,1,0],[0,0,1]]}}', "needs K"),
    ('{"a.jpg": {"K": [[1,0,0],[0,1,0],[0,0,1]], "R": [[2,0,0],[0,1,0],[0,0,1]], "C": [0,0,0], '
     '"width": 4, "height": 4}}', "not a rotation"),
])
def test_bad_cameras_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "cameras.json"
    path.write_text(content)
    with pytest.raises(MapError, match=message) as caught:
        read_cameras_json(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(MapError, match="not found"):
        read_cameras_json(tmp_path / "missing.json")


def test_intrinsics_and_camera_model_strings():
    assert parse_intrinsics("900,901,512,341.5", 1024, 683).params == (900.0, 901.0, 512.0, 341.5)
    assert parse_intrinsics("900,512,341", 1024, 683).model == "SIMPLE_PINHOLE"
    model = parse_camera_model("SIMPLE_RADIAL 1024 683 900 512 341 0.01")
    assert (model.model, model.width, model.params[-1]) == ("SIMPLE_RADIAL", 1024, 0.01)
    for bad in ("a,b,c,d", "-1,1,2,3", "1,2"):
        with pytest.raises(MapError, match="--intrinsics"):
            parse_intrinsics(bad, 10, 10)
    with pytest.raises(MapError, match="camera-model"):
        parse_camera_model("PINHOLE 1024 683 900")


def test_rotation_and_position_errors():
    rng = np.random.default_rng(0)
    R = _rotation(rng)
    turn = np.array([[math.cos(0.1), -math.sin(0.1), 0], [math.sin(0.1), math.cos(0.1), 0], [0, 0, 1]])
    assert rotation_error_deg(turn @ R, R) == pytest.approx(math.degrees(0.1))
    truth = PosedCamera("q", np.eye(3), R, np.zeros(3), 1, 1)
    assert pose_errors(R, np.array([3.0, 4.0, 0.0]), truth) == pytest.approx((5.0, 0.0), abs=1e-6)


def test_epipolar_distance_is_zero_for_true_matches_and_large_for_wrong_ones():
    rng = np.random.default_rng(1)
    first, second = _camera("a", [0, 0, 0]), _camera("b", [2, 0.3, 0.5])
    points = rng.uniform([-3, -2, 8], [3, 2, 14], size=(50, 3))
    x1, _ = first.project(points)
    x2, _ = second.project(points)
    F = fundamental_from_poses(first, second)
    assert sampson_distance(F, x1, x2).max() < 1e-6
    assert np.median(sampson_distance(F, x1, x2[::-1])) > 5.0


def test_tracks_join_matches_transitively_and_drop_tracks_seeing_an_image_twice():
    tracks = build_tracks([(0, 1, np.array([[0, 0], [1, 1]])), (1, 2, np.array([[0, 5]])),
                           (0, 2, np.array([[2, 7]])), (1, 2, np.array([[1, 7]]))])
    assert [(0, 0), (1, 0), (2, 5)] in tracks
    # (0,1)-(1,1)-(2,7)-(0,2): image 0 twice, inconsistent, dropped
    assert all({image for image, _ in t} != {0, 1, 2} or len(t) == 3 for t in tracks)
    assert not any((0, 2) in t for t in tracks)


def test_triangulation_with_known_poses_recovers_points_and_rejects_outliers():
    rng = np.random.default_rng(2)
    cameras = [_camera("a", [0, 0, 0]), _camera("b", [1.5, 0, 0]), _camera("c", [0.5, -1, 0.3])]
    points = rng.uniform([-3, -2, 8], [3, 2, 14], size=(40, 3))
    features = [_features(cam.project(points)[0] - 0.5) for cam in cameras]  # OpenCV frame: centres at ints
    tracks = [[(0, i), (1, i), (2, i)] for i in range(40)]
    features[2].xy[39] += 40.0  # one observation far off: dropped, the point survives on the other two
    result = triangulate_tracks(tracks, features, cameras, max_reproj_error=4.0, min_angle=1.5)
    assert len(result.xyz) == 40
    assert np.abs(result.xyz - points).max() < 1e-4  # keypoints are float32: 0.1 mm at 10 m
    assert result.track[39] == 2 and (result.track[:39] == 3).all()
    assert [2, 39] not in result.observations[:, :2].tolist()


# ---------------------------------------------------------------------------------------------
# Maps and localisation on real photographs


@pytest.fixture(scope="module")
def castle(tmp_path_factory):
    """(work folder, index, map) of 7 castle-P19 map images (index at 256 px, 2048 keypoints)."""
    if not (SCENE / "cameras.json").is_file():
        pytest.skip("../shared/data/strecha_posed is not present")
    from matchlens.api import build_index
    from matchlens.config import PipelineSpec
    from matchlens.localize.mapping import MapSettings, build_map

    work = tmp_path_factory.mktemp("castle")
    index = build_index([str(SCENE / "images" / n) for n in MAP_NAMES], work / "idx", spec=PipelineSpec(max_side=256))
    scene_map = build_map(index, SCENE / "images", read_cameras_json(SCENE / "cameras.json"), work / "map",
                          MapSettings(k=4, max_keypoints=2048), names=MAP_NAMES)
    return work, index, scene_map


@pytest.mark.slow
def test_map_holds_triangulated_points_that_reproject_in_their_images(castle):
    _, _, scene_map = castle
    counts = scene_map.manifest["counts"]
    assert counts["images"] == 7 and counts["points"] > 500
    assert (scene_map.track >= 2).all() and float(scene_map.error.max()) <= 4.0
    i = 0
    rows = scene_map.observations[scene_map.observations[:, 0] == i]
    features = scene_map.image_features(i)
    pixels, depth = scene_map.cameras[scene_map.images[i].name].project(scene_map.xyz[rows[:, 2]])
    assert (depth > 0).all()
    assert np.median(np.linalg.norm(pixels - (features.xy[rows[:, 1]] + 0.5), axis=1)) < 1.5


@pytest.mark.slow
def test_queries_are_localised_within_a_quarter_metre_and_two_degrees(castle):
    from matchlens.localize.localizer import Localizer

    _, index, scene_map = castle
    truth = read_cameras_json(SCENE / "cameras.json")
    localizer = Localizer(scene_map, index, k=4)
    for name in QUERIES:
        result = localizer.localize(SCENE / "images" / name, truth[name].camera)
        assert result.ok, result.reason
        position, rotation = pose_errors(result.R, result.C, truth[name])
        assert position < 0.25 and rotation < 2.0
        assert np.allclose(result.t, -result.R @ result.C) and result.inliers >= 30
        assert set(result.timings_ms) == {"features", "retrieval", "matching", "pnp"}
    unknown = localizer.localize(SCENE / "images" / QUERIES[0])  # focal estimated with the pose
    assert unknown.ok and pose_errors(unknown.R, unknown.C, truth[QUERIES[0]])[0] < 1.0


@pytest.mark.slow
def test_an_unrelated_photo_fails_with_a_reason_never_a_pose(castle, tmp_path, capsys):
    from matchlens.localize.localizer import Localizer

    work, index, scene_map = castle
    make_scene(3, (640, 480)).save(tmp_path / "elsewhere.jpg")
    result = Localizer(scene_map, index, k=4).localize(tmp_path / "elsewhere.jpg")
    assert not result.ok and result.R is None and "too few" in result.reason
    code, out, _ = run_cli(capsys, "localize", work / "map", tmp_path / "elsewhere.jpg", "--json")
    assert code == 1 and json.loads(out)["status"] == "failed"


@pytest.mark.slow
def test_cli_localize_and_eval_loc_with_plot(castle, tmp_path, capsys):
    work, _, _ = castle
    code, out, _ = run_cli(capsys, "localize", work / "map", SCENE / "images" / QUERIES[0], "--cameras",
                           SCENE / "cameras.json", "--json", "-k", "4")
    answer = json.loads(out)
    assert code == 0 and answer["status"] == "ok" and len(answer["R"]) == 3 and len(answer["retrieved"]) == 4
    queries = tmp_path / "queries"
    queries.mkdir()
    for name in QUERIES:
        shutil.copy(SCENE / "images" / name, queries / name)
    code, out, _ = run_cli(capsys, "eval-loc", work / "map", "--queries", queries, "--cameras", SCENE / "cameras.json",
                           "-k", "4", "--plot", tmp_path / "plot.png", "--json")
    summary = json.loads(out)["summary"]
    assert code == 0 and summary["matchlens"]["0.25m,2.0deg"] == 100.0
    assert summary["top-1 retrieved pose"]["0.25m,2.0deg"] == 0.0  # no map image is where a query is
    with Image.open(tmp_path / "plot.png") as plot:
        assert plot.format == "PNG" and min(plot.size) > 300


@pytest.mark.slow
def test_map_for_another_index_damaged_maps_and_replace_are_refused(castle, tmp_path, capsys, built_index):
    from matchlens.localize.localizer import Localizer
    from matchlens.localize.mapping import MapSettings, build_map
    from matchlens.localize.mapstore import load_map

    work, index, scene_map = castle
    with pytest.raises(MapError, match="built for another index"):
        Localizer(scene_map, built_index)
    code, _, err = run_cli(capsys, "localize", work / "map", SCENE / "images" / QUERIES[0], "-i", built_index.root)
    assert code != 0 and "built for another index" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(MapError, match="already exists"):
        build_map(index, SCENE / "images", scene_map.cameras, work / "map", MapSettings(k=4), names=MAP_NAMES)
    broken = tmp_path / "broken"
    shutil.copytree(work / "map", broken)
    (broken / "points.npz").write_bytes(b"not a zip")
    with pytest.raises(MapError, match="damaged"):
        load_map(broken)
    with pytest.raises(MapError, match="not a matchlens map"):
        load_map(tmp_path)


@pytest.mark.slow
def test_an_interrupted_map_build_resumes_with_its_stored_matches(castle, tmp_path, monkeypatch):
    import matchlens.localize.mapping as mapping

    work, index, scene_map = castle
    cameras = read_cameras_json(SCENE / "cameras.json")
    settings = mapping.MapSettings(k=4, max_keypoints=2048)
    calls = {"n": 0}
    real = mapping.match_pair

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mapping, "match_pair", failing)
    with pytest.raises(KeyboardInterrupt):
        mapping.build_map(index, SCENE / "images", cameras, tmp_path / "map", settings, names=MAP_NAMES)
    assert not (tmp_path / "map").exists() and len(list((tmp_path / "map.partial" / "matches").iterdir())) == 4
    calls["n"] = -1000  # no more interruptions; count the pairs matched by the resumed run
    resumed = mapping.build_map(index, SCENE / "images", cameras, tmp_path / "map", settings, names=MAP_NAMES)
    pairs = resumed.manifest["counts"]["pairs"]
    assert calls["n"] + 1000 == pairs - 4
    assert resumed.manifest["counts"]["points"] == scene_map.manifest["counts"]["points"]
    assert not (tmp_path / "map.partial").exists()


def test_map_cli_errors_are_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "map", tmp_path, "-i", tmp_path / "idx", "-o", tmp_path / "map")
    assert code != 0 and "exactly one of --cameras" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "localize", tmp_path / "nomap", tmp_path / "q.jpg")
    assert code != 0 and "map not found" in err


def test_clahe_keeps_the_keypoints_of_a_dark_photo_and_is_part_of_the_feature_key():
    from matchlens.io.degrade import degrade
    from matchlens.local.features import extract_rootsift, feature_key

    photo = make_scene(5, (640, 480))
    dark = degrade(photo, "low_light", seed=0)
    plain, equalised = (len(extract_rootsift(dark, 4096, 1024, contrast)) for contrast in ("none", "clahe"))
    assert equalised > 2 * plain
    assert feature_key(4096, 1024) == feature_key(4096, 1024, "none") != feature_key(4096, 1024, "clahe")
    with pytest.raises(Exception, match="unknown contrast normalisation"):
        extract_rootsift(photo, 10, 100, "sharpen")


@pytest.mark.slow
def test_a_broken_query_in_a_batch_is_a_failed_line_and_the_batch_goes_on(castle, tmp_path, capsys):
    work, _, _ = castle
    shutil.copy(SCENE / "images" / QUERIES[0], tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes((SCENE / "images" / QUERIES[0]).read_bytes()[:3000])  # truncated
    code, out, _ = run_cli(capsys, "localize", work / "map", "--queries", tmp_path, "-k", "4")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [line["status"] for line in lines] == ["ok", "failed"]
    assert "truncated" in lines[1]["reason"]
    code, _, err = run_cli(capsys, "localize", work / "map", tmp_path / "b.jpg")  # alone: a one-line error
    assert code != 0 and len(err.strip().splitlines()) == 1
