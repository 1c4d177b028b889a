"""kapture and COLMAP input/output of matchlens.localize.

Cameras are written with the ``kapture`` package and with pycolmap and read by matchlens's own
readers; exported datasets are read back with the ``kapture`` package. The posed images are
castle-P19 of ../shared/data/strecha_posed (skipped where absent); the index uses the small
128 px pipeline, so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from matchlens.config import PipelineSpec
from matchlens.errors import MapError
from matchlens.local.features import CACHE_KIND, FeatureCache, LocalFeatures, feature_key
from matchlens.localize.cameras import PosedCamera, read_cameras_json, write_cameras_json
from matchlens.localize.colmap_io import read_colmap
from matchlens.localize.kapture_io import (GLOBAL_FEATURES, KEYPOINTS, MAX_KEYPOINTS, MAX_SIDE, PAIRS_FILE,
                                           export_kapture, read_kapture, retrieval_pairs, write_pairs)
from matchlens.localize.mapstore import FORMAT, VERSION, load_map, pair_file
from matchlens.pipeline.index import Index
from tests.conftest import SHARED_DATA, require_module

CASTLE = SHARED_DATA / "strecha_posed" / "castle-P19"
EXPORTED = ["0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg"]


def nearest_rotation(R: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(R)
    return u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt


@pytest.fixture(scope="module")
def castle() -> dict[str, PosedCamera]:
    """castle-P19's ground-truth cameras (skipped where the shared data is absent), each R replaced by
    the nearest exact rotation: cameras.json gives R to 6 digits (R Rᵀ = I to 1e-6), and formats that
    store a quaternion (kapture, COLMAP) hold exact rotations only, so only those round-trip to 1e-9."""
    if not (CASTLE / "cameras.json").is_file():
        pytest.skip("../shared/data/strecha_posed is not present beside the repository")
    cameras = read_cameras_json(CASTLE / "cameras.json")
    return {name: replace(camera, R=nearest_rotation(camera.R)) for name, camera in cameras.items()}


def assert_same_cameras(found: dict[str, PosedCamera], expected: dict[str, PosedCamera]) -> None:
    assert sorted(found) == sorted(expected)
    for name, camera in expected.items():
        got = found[name]
        np.testing.assert_allclose(got.K, camera.K, rtol=0, atol=1e-9)
        np.testing.assert_allclose(got.R, camera.R, rtol=0, atol=1e-9)
        np.testing.assert_allclose(got.C, camera.C, rtol=0, atol=1e-9)
        assert (got.width, got.height) == (camera.width, camera.height)


def one_line_error(call, *args, match: str, **kwargs) -> str:
    with pytest.raises(MapError, match=match) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- kapture cameras --------------------------------------------------------------------------

def kapture_package():
    """The kapture package with its csv and features modules loaded (skipped where absent)."""
    require_module("kapture")
    import kapture.io.csv
    import kapture.io.features

    return kapture

def kapture_pose(camera: PosedCamera):
    """The world → camera pose of a camera as a kapture.PoseTransform."""
    kapture = kapture_package()
    quaternion = require_module("quaternion")
    return kapture.PoseTransform(quaternion.from_rotation_matrix(camera.R), camera.t)


def write_kapture_dataset(root: Path, cameras: dict[str, PosedCamera], model: str = "PINHOLE",
                          extra: list[float] | None = None) -> None:
    """A kapture dataset of ``cameras`` written by the kapture package (one sensor per image)."""
    kapture = kapture_package()
    sensors, records, trajectories = kapture.Sensors(), kapture.RecordsCamera(), kapture.Trajectories()
    for timestamp, (name, camera) in enumerate(sorted(cameras.items())):
        K = camera.K
        params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]] if model != "SIMPLE_RADIAL" else [K[0, 0], K[0, 2], K[1, 2]]
        sensors[f"cam{timestamp}"] = kapture.Camera(model, [camera.width, camera.height] + params + (extra or []))
        records[timestamp, f"cam{timestamp}"] = name
        trajectories[timestamp, f"cam{timestamp}"] = kapture_pose(camera)
    kapture.io.csv.kapture_to_dir(str(root), kapture.Kapture(sensors=sensors, records_camera=records,
                                                             trajectories=trajectories))


def test_read_kapture_written_by_kapture(tmp_path, castle):
    kapture = kapture_package()
    write_kapture_dataset(tmp_path / "k", castle)
    assert_same_cameras(read_kapture(tmp_path / "k"), castle)

    # An uncalibrated camera and an image without pose are left out; the others still read.
    data = kapture.io.csv.kapture_from_dir(str(tmp_path / "k"))
    data.sensors["unknown"] = kapture.Camera("UNKNOWN_CAMERA", [1024, 683])
    data.records_camera[100, "unknown"] = "query/unknown.jpg"
    data.trajectories[100, "unknown"] = kapture.PoseTransform()
    data.records_camera[101, "cam0"] = "query/unposed.jpg"
    kapture.io.csv.kapture_to_dir(str(tmp_path / "k2"), data)
    assert_same_cameras(read_kapture(tmp_path / "k2"), castle)


def test_read_kapture_accepts_zero_distortion(tmp_path, castle):
    """SIMPLE_RADIAL with k = 0 is a pinhole camera (castle's fx and fy differ by 0.2 %: one f is used)."""
    subset = {name: castle[name] for name in EXPORTED}
    write_kapture_dataset(tmp_path / "k", subset, model="SIMPLE_RADIAL", extra=[0.0])
    found = read_kapture(tmp_path / "k")
    for name, camera in subset.items():
        assert found[name].K[1, 1] == pytest.approx(camera.K[0, 0], abs=1e-9)
        np.testing.assert_allclose(found[name].C, camera.C, atol=1e-9)


def test_read_kapture_composes_rig_poses(tmp_path, castle):
    """A camera posed through a rig gets sensor_from_rig ∘ rig_from_world, as kapture's rigs_remove."""
    kapture = kapture_package()
    camera = castle["0000.jpg"]
    sensors, records, trajectories, rigs = (kapture.Sensors(), kapture.RecordsCamera(), kapture.Trajectories(),
                                            kapture.Rigs())
    K = camera.K
    sensors["cam"] = kapture.Camera("PINHOLE", [camera.width, camera.height, K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    rigs["rig", "cam"] = kapture.PoseTransform([0.9, 0.1, -0.3, 0.2], [0.5, -0.2, 0.1])
    trajectories[7, "rig"] = kapture_pose(camera)
    records[7, "cam"] = "rigged.jpg"
    kapture.io.csv.kapture_to_dir(str(tmp_path / "k"), kapture.Kapture(
        sensors=sensors, rigs=rigs, trajectories=trajectories, records_camera=records))
    found = read_kapture(tmp_path / "k")["rigged.jpg"]
    expected = kapture.rigs_remove(trajectories, rigs)[7, "cam"]
    np.testing.assert_allclose(found.R, require_module("quaternion").as_rotation_matrix(expected.r), atol=1e-9)
    np.testing.assert_allclose(found.t, expected.t.ravel(), atol=1e-9)


def test_read_kapture_errors(tmp_path, castle):
    one_line_error(read_kapture, tmp_path / "missing", match="kapture folder not found")
    (tmp_path / "empty").mkdir()
    one_line_error(read_kapture, tmp_path / "empty", match="is not a kapture dataset")
    subset = {name: castle[name] for name in EXPORTED[:2]}
    write_kapture_dataset(tmp_path / "outer" / "mapping", subset)
    assert "mapping" in one_line_error(read_kapture, tmp_path / "outer", match="is not a kapture dataset")
    write_kapture_dataset(tmp_path / "radial", subset, model="SIMPLE_RADIAL", extra=[0.05])
    one_line_error(read_kapture, tmp_path / "radial", match="undistort the images first")
    kapture = kapture_package()
    data = kapture.io.csv.kapture_from_dir(str(tmp_path / "outer" / "mapping"))
    data.sensors["cam0"] = kapture.Camera("OPENCV_FISHEYE", [1024, 683, 900, 900, 512, 341, 0, 0, 0, 0])
    kapture.io.csv.kapture_to_dir(str(tmp_path / "fisheye"), data)
    one_line_error(read_kapture, tmp_path / "fisheye", match="OPENCV_FISHEYE.*undistort")
    plain = kapture.io.csv.kapture_from_dir(str(tmp_path / "outer" / "mapping"))
    kapture.io.csv.kapture_to_dir(str(tmp_path / "unposed"), kapture.Kapture(sensors=plain.sensors,
                                                                             records_camera=plain.records_camera))
    one_line_error(read_kapture, tmp_path / "unposed", match="no image with both")


# --- COLMAP cameras ---------------------------------------------------------------------------

def write_colmap_model(folder: Path, cameras: dict[str, PosedCamera], model: str = "PINHOLE",
                       extra: tuple[float, ...] = (), text: bool = False) -> None:
    pycolmap = require_module("pycolmap")

    reconstruction = pycolmap.Reconstruction()
    for number, (name, camera) in enumerate(sorted(cameras.items()), start=1):
        K = camera.K
        params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]] if model == "PINHOLE" else [K[0, 0], K[0, 2], K[1, 2]]
        reconstruction.add_camera_with_trivial_rig(pycolmap.Camera(
            model=model, width=camera.width, height=camera.height, params=params + list(extra), camera_id=number))
        reconstruction.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=number, image_id=number),
                                                    camera.cam_from_world())
    folder.mkdir(parents=True)
    (reconstruction.write_text if text else reconstruction.write)(str(folder))


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_read_colmap_written_by_pycolmap(tmp_path, castle, text):
    write_colmap_model(tmp_path / "sparse" / "0", castle, text=text)
    assert_same_cameras(read_colmap(tmp_path / "sparse" / "0"), castle)


def test_read_colmap_errors(tmp_path, castle):
    subset = {name: castle[name] for name in EXPORTED[:2]}
    write_colmap_model(tmp_path / "radial", subset, model="SIMPLE_RADIAL", extra=(0.02,))
    one_line_error(read_colmap, tmp_path / "radial", match="SIMPLE_RADIAL has non-zero distortion.*undistort")
    write_colmap_model(tmp_path / "zero", subset, model="SIMPLE_RADIAL", extra=(0.0,))
    assert sorted(read_colmap(tmp_path / "zero")) == sorted(subset)
    one_line_error(read_colmap, tmp_path / "missing", match="COLMAP model folder not found")
    write_colmap_model(tmp_path / "sparse" / "0", subset)
    assert "0" in one_line_error(read_colmap, tmp_path / "sparse", match="is not a COLMAP model")


# --- export -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def index(tmp_path_factory, castle) -> Index:
    """An index of four castle-P19 images with the small pipeline (the files stay in ../shared)."""
    paths = [CASTLE / "images" / name for name in EXPORTED]
    built, _ = Index.build(paths, tmp_path_factory.mktemp("castle") / "index", PipelineSpec(max_side=128))
    return built


@pytest.fixture(scope="module")
def exported(tmp_path_factory, index) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "castle.kapture"
    return out, export_kapture(index, out, k=2)


def expected_pairs(index: Index, k: int) -> list[tuple[str, str]]:
    """Each image's top-k other images by the index's search."""
    pairs = []
    for entry in sorted(index.entries, key=lambda e: e.row):
        results = [r for r in index.search(entry.path, k=k + 1) if r.id != entry.id][:k]
        pairs += [(Path(entry.path).name, Path(r.path).name) for r in results]
    return pairs


def cached_features(index: Index, name: str) -> LocalFeatures:
    entry = next(e for e in index.entries if Path(e.path).name == name)
    found = FeatureCache(Path(index.root) / "cache" / CACHE_KIND).get(entry.sha256, feature_key(MAX_KEYPOINTS,
                                                                                                MAX_SIDE))
    assert found is not None
    return found


def test_export_reads_back_with_kapture(exported, index):
    kapture = kapture_package()
    features_io = kapture.io.features

    out, report = exported
    data = kapture.io.csv.kapture_from_dir(str(out))
    assert sorted(name for _, _, name in kapture.flatten(data.records_camera)) == EXPORTED
    for sensor in data.sensors.values():  # no map: uncalibrated cameras of the image size
        assert sensor.sensor_params == ["UNKNOWN_CAMERA", "1024", "683"]
    assert data.trajectories is None and report["posed"] == 0 and report["images"] == 4

    keypoints, descriptors = data.keypoints[KEYPOINTS], data.descriptors[KEYPOINTS]
    globals_ = data.global_features[GLOBAL_FEATURES]
    assert (keypoints.dtype, keypoints.dsize, descriptors.dsize, descriptors.metric_type) == (
        np.float32, 4, 128, "L2")
    assert set(keypoints) == set(descriptors) == set(globals_) == set(EXPORTED)
    vectors = index.vectors()
    total = 0
    for entry in index.entries:
        name = Path(entry.path).name
        features = cached_features(index, name)
        kpt = features_io.image_keypoints_from_file(
            features_io.get_keypoints_fullpath(KEYPOINTS, str(out), name), np.float32, 4)
        desc = features_io.image_descriptors_from_file(
            features_io.get_descriptors_fullpath(KEYPOINTS, str(out), name), np.float32, 128)
        gfeat = features_io.image_global_features_from_file(
            features_io.get_global_features_fullpath(GLOBAL_FEATURES, str(out), name), globals_.dtype, globals_.dsize)
        assert kpt.shape == (len(features), 4) and desc.shape == (len(features), 128) and len(features) > 500
        # Keypoints move to the corner origin of K (+0.5); angles to radians as COLMAP's keypoints.
        np.testing.assert_allclose(kpt[:, :2], features.xy + 0.5, atol=1e-4)
        np.testing.assert_allclose(kpt[:, 3], np.radians(features.angle), atol=1e-5)
        np.testing.assert_allclose(desc, features.descriptors, atol=2e-3)  # the cache stores float16
        np.testing.assert_array_equal(gfeat, vectors[entry.row:entry.row + 1])
        total += len(features)
    assert report["keypoints"] == total


def test_export_matches_and_pairs(exported, index):
    kapture = kapture_package()
    get_matches_fullpath, image_matches_from_file = (kapture.io.features.get_matches_fullpath,
                                                     kapture.io.features.image_matches_from_file)

    out, report = exported
    pairs = expected_pairs(index, k=2)
    with open(out / PAIRS_FILE) as stream:
        head = [stream.readline().strip() for _ in range(2)]
        stream.seek(0)
        table = kapture.io.csv.table_from_file(stream)
    assert head == ["# kapture format: 1.1", "# query_image, map_image, score"]
    assert [(q, m) for q, m, _ in table] == pairs and report["pairs"] == len(pairs) == 8
    assert all(0.0 < float(score) <= 1.0 + 1e-6 for _, _, score in table)

    data = kapture.io.csv.kapture_from_dir(str(out), matches_pairs_file_path=str(out / PAIRS_FILE))
    unordered = {tuple(sorted(p)) for p in pairs}
    assert set(data.matches[KEYPOINTS]) == unordered and report["matched_pairs"] == len(unordered)
    counts = []
    for first, second in unordered:
        matches = image_matches_from_file(get_matches_fullpath((first, second), KEYPOINTS, str(out)))
        assert matches.shape[1] == 3 and matches.dtype == np.float64
        indices = matches[:, :2]
        assert np.array_equal(indices, np.round(indices)) and (indices >= 0).all()
        assert (indices[:, 0] < len(cached_features(index, first))).all()
        assert (indices[:, 1] < len(cached_features(index, second))).all()
        assert len(np.unique(indices[:, 0])) == len(indices)  # mutual nearest neighbours: one-to-one
        assert ((matches[:, 2] > 0.5) & (matches[:, 2] <= 1.0 + 1e-5)).all()
        counts.append(len(matches))
    assert sum(counts) == report["matches"] and max(counts) > 100  # neighbouring castle views match well


def test_write_pairs_hloc_and_kapture(tmp_path, index):
    pairs = expected_pairs(index, k=2)
    assert write_pairs(index, tmp_path / "pairs.txt", k=2) == len(pairs)
    assert (tmp_path / "pairs.txt").read_text().splitlines() == [f"{q} {m}" for q, m in pairs]
    write_pairs(index, tmp_path / "kpairs.txt", k=2, style="kapture")
    lines = (tmp_path / "kpairs.txt").read_text().splitlines()
    assert lines[:2] == ["# kapture format: 1.1", "# query_image, map_image, score"]
    assert [tuple(line.split(", ")[:2]) for line in lines[2:]] == pairs
    assert len(retrieval_pairs(index, k=10)) == 4 * 3  # k beyond the collection: every other image
    one_line_error(write_pairs, index, tmp_path / "x.txt", style="colmap", match="pairs style")
    one_line_error(write_pairs, index, tmp_path / "no" / "x.txt", match="does not exist")
    one_line_error(write_pairs, index, tmp_path / "x.txt", k=0, match="positive integer")


def test_export_refuses_and_leaves_nothing_half_written(tmp_path, index, exported, monkeypatch):
    import matchlens.localize.kapture_io as kapture_io

    out, _ = exported
    one_line_error(export_kapture, index, out, match="already exists and is not empty")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(kapture_io, "_write_matches", broken)
    with pytest.raises(OSError, match="disk full"):
        export_kapture(index, tmp_path / "failed", k=1)
    assert os.listdir(tmp_path) == []  # neither the dataset nor its temporary folder


def make_map(root: Path, index: Index, castle: dict[str, PosedCamera], names: list[str],
             stored: np.ndarray) -> None:
    """A minimal map folder in mapstore's layout: cameras, features and one stored pair (0, 1)."""
    entries = {Path(e.path).name: e for e in index.entries}
    key = feature_key(MAX_KEYPOINTS, MAX_SIDE)
    cache = FeatureCache(root / "features")
    for name in names:
        cache.put(entries[name].sha256, key, cached_features(index, name))
    write_cameras_json({name: castle[name] for name in names}, root / "cameras.json")
    np.savez(root / "points.npz", xyz=np.zeros((0, 3)), error=np.zeros(0), track=np.zeros(0, np.int32))
    np.savez(root / "observations.npz", image=np.zeros(0, np.int32), keypoint=np.zeros(0, np.int32),
             point=np.zeros(0, np.int32))
    pair_file(root, 0, 1).parent.mkdir()
    np.savez(pair_file(root, 0, 1), matches=stored)
    manifest = {"format": FORMAT, "version": VERSION, "index": str(index.root), "features": {"key": key},
                "settings": {"ratio": 0.8, "epipolar_error": 4.0},
                "images": [{"name": n, "path": entries[n].path, "sha256": entries[n].sha256} for n in names]}
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_export_with_map_writes_poses_and_stored_matches(tmp_path, index, castle, exported):
    kapture = kapture_package()
    get_matches_fullpath, image_matches_from_file = (kapture.io.features.get_matches_fullpath,
                                                     kapture.io.features.image_matches_from_file)

    mapped = EXPORTED[:3]
    stored = np.array([[5, 7], [11, 13], [17, 19]], np.int32)  # recognisable: not what matching finds
    make_map(tmp_path / "map", index, castle, mapped, stored)
    report = export_kapture(index, tmp_path / "out", scene_map=load_map(tmp_path / "map"), k=3)
    assert report["posed"] == 3 and report["pairs"] == 12 and report["matched_pairs"] == 6

    # Poses and intrinsics round-trip through trajectories.txt / sensors.txt (our reader and kapture's).
    assert_same_cameras(read_kapture(tmp_path / "out"), {name: castle[name] for name in mapped})
    data = kapture.io.csv.kapture_from_dir(str(tmp_path / "out"))
    models = sorted(sensor.sensor_params[0] for sensor in data.sensors.values())
    assert models == ["PINHOLE", "UNKNOWN_CAMERA"]  # the three posed images share one calibration
    assert len(list(kapture.flatten(data.trajectories))) == 3

    def read(first: str, second: str) -> np.ndarray:
        return image_matches_from_file(get_matches_fullpath((first, second), KEYPOINTS, str(tmp_path / "out")))

    np.testing.assert_array_equal(read("0000.jpg", "0001.jpg")[:, :2], stored)  # the map's, not recomputed
    # Posed pairs the map did not match are verified by the known poses; they match well.
    assert len(read("0001.jpg", "0002.jpg")) > 100
    assert len(read("0002.jpg", "0003.jpg")) > 0  # one unposed image: fundamental-matrix verification


def test_export_with_a_map_of_another_index(tmp_path, index, castle, exported):
    make_map(tmp_path / "map", index, castle, EXPORTED[:2], np.zeros((0, 2), np.int32))
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    for image in manifest["images"]:
        image["sha256"] = "0" * 64
    (tmp_path / "map" / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(export_kapture, index, tmp_path / "out", scene_map=load_map(tmp_path / "map"),
                   match="built with another index")
