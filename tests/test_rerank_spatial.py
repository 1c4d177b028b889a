"""Spatial verification ("sv") and its RootSIFT features and cache, on small synthetic scenes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from matchlens.errors import ConfigError
from matchlens.local.features import CACHE_KIND, FeatureCache, LocalFeatures, extract_rootsift, feature_key
from matchlens.local.verify import count_inliers, inlier_mask, match_features, to_working_frame, verify_pair
from matchlens.rerank import RERANKERS, QueryInput, Shortlist, parse_chain
from matchlens.rerank import spatial
from matchlens.rerank.spatial import SpatialVerification

TRUE_SEED, DISTRACTOR_SEEDS = 1, (2, 3, 4, 5)


def textured_scene(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """Coloured noise with many random rectangles and ellipses: plenty of distinctive corners."""
    rng = np.random.default_rng(seed)
    w, h = size
    noise = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(noise).resize(size, Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(25):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        box = (x0, y0, x0 + int(rng.integers(8, w // 3)), y0 + int(rng.integers(8, h // 3)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape(box, fill=colour, outline=(0, 0, 0))
    return image


def rotated_scaled_crop(image: Image.Image) -> Image.Image:
    """The query: the scene rotated by 15 degrees, cropped inside the black corners, scaled by 0.8."""
    crop = image.rotate(15, resample=Image.BICUBIC).crop((40, 30, 280, 210))
    return crop.resize((round(crop.width * 0.8), round(crop.height * 0.8)), Image.LANCZOS)


class FakeContext:
    """Just enough of a RerankContext: image files by row, their hashes, a cache folder."""

    def __init__(self, paths: list[Path], cache_root: Path | None) -> None:
        self.paths = paths
        self.cache_root = cache_root

    def image_path(self, row: int) -> str:
        return str(self.paths[row])

    def image_sha256(self, row: int) -> str:
        return hashlib.sha256(self.paths[row].read_bytes()).hexdigest()  # a missing file raises OSError

    def cache_dir(self, kind: str) -> Path | None:
        return None if self.cache_root is None else self.cache_root / kind


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory) -> dict[str, Path]:
    """PNG files: the true scene, four distractors, a non-image file, and a path that does not exist."""
    folder = tmp_path_factory.mktemp("sv_scenes")
    files = {"true": folder / "true.png", "garbage": folder / "garbage.png", "missing": folder / "missing.png"}
    textured_scene(TRUE_SEED).save(files["true"])
    for i, seed in enumerate(DISTRACTOR_SEEDS):
        files[f"d{i}"] = folder / f"d{i}.png"
        textured_scene(seed).save(files[f"d{i}"])
    files["garbage"].write_bytes(b"this is not an image at all")
    return files


@pytest.fixture(scope="module")
def query() -> QueryInput:
    return QueryInput(vector=np.zeros(4, np.float32), image=rotated_scaled_crop(textured_scene(TRUE_SEED)),
                      sha256="ab" * 32)


def four_scene_case(scene_files: dict[str, Path], cache_root: Path | None) -> tuple[FakeContext, Shortlist]:
    """Rows 0-2 distractors with high global scores, row 3 the true scene with a low one."""
    ctx = FakeContext([scene_files["d0"], scene_files["d1"], scene_files["d2"], scene_files["true"]], cache_root)
    return ctx, Shortlist(np.arange(4), np.array([0.9, 0.8, 0.7, 0.2]))


# ------------------------------------------------------------------------------------------------
# RootSIFT


def test_rootsift_descriptors_are_nonnegative_unit_norm_and_bounded_in_number() -> None:
    image = textured_scene(7)
    features = extract_rootsift(image, max_keypoints=80)
    assert 0 < len(features) <= 80
    assert features.xy.dtype == np.float32 and features.xy.shape == (len(features), 2)
    assert features.descriptors.dtype == np.float32 and features.descriptors.shape == (len(features), 128)
    assert (features.descriptors >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-5)
    assert features.size == image.size


def test_keypoints_are_scaled_back_to_the_image_frame() -> None:
    image = textured_scene(8, size=(480, 360))
    features = extract_rootsift(image, max_keypoints=500, max_side=160)  # detected at 160x120
    x, y = features.xy[:, 0], features.xy[:, 1]
    assert (x >= 0).all() and (x <= 479).all() and (y >= 0).all() and (y <= 359).all()
    assert x.max() > 300 and y.max() > 200  # coordinates are not left in the 160x120 working frame


def test_a_blank_image_has_no_features() -> None:
    features = extract_rootsift(Image.new("RGB", (64, 48), (128, 128, 128)))
    assert len(features) == 0 and features.descriptors.shape == (0, 128) and features.xy.shape == (0, 2)


# ------------------------------------------------------------------------------------------------
# Pair verification (matchlens.local.verify)


def test_verify_pair_separates_the_true_scene_from_a_distractor(query) -> None:
    q = extract_rootsift(query.image)
    true, other = extract_rootsift(textured_scene(TRUE_SEED)), extract_rootsift(textured_scene(DISTRACTOR_SEEDS[0]))
    assert verify_pair(q, true) >= 12 > verify_pair(q, other)
    src, dst = match_features(q, true, 0.8)
    mask = inlier_mask(to_working_frame(src, q.size, 1024), to_working_frame(dst, true.size, 1024))
    assert mask.dtype == bool and mask.shape == (len(src),)
    assert count_inliers(src, dst, "homography", "magsac", 8.0) == verify_pair(q, true) == int(mask.sum())


def test_too_few_matches_have_no_inliers() -> None:
    points = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    assert count_inliers(points, points, "homography", "magsac", 8.0) == 0
    assert not inlier_mask(points, points).any() and inlier_mask(points, points).shape == (3,)
    empty = LocalFeatures.empty((64, 48))
    assert match_features(empty, empty, 0.8)[0].shape == (0, 2) and verify_pair(empty, empty) == 0


# ------------------------------------------------------------------------------------------------
# Feature cache


def test_feature_cache_round_trip_is_compact_and_atomic(tmp_path: Path) -> None:
    cache, features = FeatureCache(tmp_path), extract_rootsift(textured_scene(9), max_keypoints=100)
    sha = "cd" * 32
    assert cache.get(sha, "k1") is None and (cache.hits, cache.misses) == (0, 1)
    assert cache.put(sha, "k1", features)
    assert cache.path(sha, "k1") == tmp_path / "cd" / f"{sha}-k1.npz"
    assert [p.name for p in (tmp_path / "cd").iterdir()] == [f"{sha}-k1.npz"]  # no temporary left behind
    with np.load(cache.path(sha, "k1")) as stored:
        assert stored["descriptors"].dtype == np.float16 and stored["xy"].dtype == np.float32
    loaded = cache.get(sha, "k1")
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(loaded.xy, features.xy)
    np.testing.assert_allclose(loaded.descriptors, features.descriptors, atol=1e-3)
    assert loaded.descriptors.dtype == np.float32 and loaded.size == features.size


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", b"garbage"])
def test_feature_cache_treats_a_corrupt_file_as_a_miss(tmp_path: Path, content: bytes) -> None:
    cache, sha = FeatureCache(tmp_path), "ef" * 32
    cache.path(sha, "k").parent.mkdir(parents=True)
    cache.path(sha, "k").write_bytes(content)
    assert cache.get(sha, "k") is None and cache.misses == 1


def test_feature_cache_rejects_an_entry_of_the_wrong_shape(tmp_path: Path) -> None:
    cache, sha = FeatureCache(tmp_path), "ef" * 32
    cache.path(sha, "k").parent.mkdir(parents=True)
    np.savez(cache.path(sha, "k"), xy=np.zeros((3, 2), np.float32), scale=np.zeros(3), angle=np.zeros(3),
             descriptors=np.zeros((3, 64), np.float16), size=np.array([10, 10]))
    assert cache.get(sha, "k") is None


# ------------------------------------------------------------------------------------------------
# Re-ranking


def test_spatial_verification_moves_the_true_scene_to_the_top(scene_files, query, tmp_path) -> None:
    ctx, shortlist = four_scene_case(scene_files, tmp_path)
    sv = SpatialVerification(k=4)
    result = sv.rerank(query, shortlist, ctx)
    assert result.rows.tolist() == [3, 0, 1, 2]  # unverified distractors keep their order
    assert sv.last_inliers[3] >= sv.config["min_inliers"]
    assert all(sv.last_inliers[row] < sv.config["min_inliers"] for row in (0, 1, 2))
    assert max(sv.last_inliers[row] for row in (0, 1, 2)) <= 5
    assert result.scores[0] == pytest.approx(1 + sv.last_inliers[3] / 1000, abs=1e-6)
    np.testing.assert_allclose(result.scores[1:], [0.9, 0.8, 0.7])
    assert sv.depth == 4


def test_fundamental_matrix_with_ransac_also_verifies(scene_files, query, tmp_path) -> None:
    ctx, shortlist = four_scene_case(scene_files, tmp_path)
    sv = SpatialVerification(k=4, model="fundamental", method="ransac")
    assert sv.rerank(query, shortlist, ctx).rows[0] == 3


def test_verified_scores_stay_above_unverified_ones_whatever_their_scale(scene_files, query, tmp_path) -> None:
    ctx, _ = four_scene_case(scene_files, tmp_path)
    result = SpatialVerification(k=2).rerank(query, Shortlist([0, 3, 1, 2], [50.0, 40.0, 30.0, 20.0]), ctx)
    assert result.rows.tolist() == [3, 0, 1, 2] and result.scores[0] > 50.0
    assert (np.diff(result.scores) <= 0).all()


def test_a_repeated_verification_reads_database_features_from_the_cache(scene_files, query, tmp_path,
                                                                         monkeypatch) -> None:
    ctx, shortlist = four_scene_case(scene_files, tmp_path)
    sv = SpatialVerification(k=4)
    first = sv.rerank(query, shortlist, ctx)
    assert (sv.cache.hits, sv.cache.misses) == (0, 5)  # four database images and the query
    key = feature_key(sv.config["max_keypoints"], sv.config["max_side"])
    for row in range(4):
        assert sv.cache.path(ctx.image_sha256(row), key).is_file()

    def no_extraction(*args, **kwargs) -> LocalFeatures:
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(spatial, "extract_rootsift", no_extraction)
    second = sv.rerank(query, shortlist, ctx)
    assert (sv.cache.hits, sv.cache.misses) == (5, 5)
    assert second.rows.tolist() == first.rows.tolist()


def test_a_corrupt_cache_file_is_recomputed(scene_files, query, tmp_path) -> None:
    ctx, shortlist = four_scene_case(scene_files, tmp_path)
    SpatialVerification(k=4).rerank(query, shortlist, ctx)
    sv = SpatialVerification(k=4)
    path = FeatureCache(tmp_path / CACHE_KIND).path(ctx.image_sha256(3), sv._key)
    path.write_bytes(b"\x00 not an npz")
    assert sv.rerank(query, shortlist, ctx).rows[0] == 3
    assert (sv.cache.hits, sv.cache.misses) == (4, 1)
    assert FeatureCache(path.parents[1]).get(ctx.image_sha256(3), sv._key) is not None  # rewritten whole


def test_without_a_cache_folder_verification_still_works(scene_files, query) -> None:
    ctx, shortlist = four_scene_case(scene_files, None)
    sv = SpatialVerification(k=4)
    assert sv.rerank(query, shortlist, ctx).rows[0] == 3 and sv.cache is None


def test_unreadable_database_images_are_left_unverified_in_order(scene_files, query, tmp_path) -> None:
    names = ["d0", "garbage", "d1", "true", "missing", "d2", "d3"]
    ctx = FakeContext([scene_files[name] for name in names], tmp_path)
    shortlist = Shortlist([0, 1, 2, 4, 3, 5, 6], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    sv = SpatialVerification(k=5)
    result = sv.rerank(query, shortlist, ctx)
    assert result.rows.tolist() == [3, 0, 1, 2, 4, 5, 6]
    np.testing.assert_allclose(result.scores[1:], [0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
    assert sv.last_unreadable == {1, 4} and set(sv.last_inliers) == {0, 2, 3}


def test_a_query_without_an_image_leaves_the_shortlist_unchanged(scene_files, tmp_path) -> None:
    ctx, shortlist = four_scene_case(scene_files, tmp_path)
    result = SpatialVerification(k=4).rerank(QueryInput(vector=np.zeros(4, np.float32)), shortlist, ctx)
    assert result.rows.tolist() == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------------
# Configuration


def test_sv_is_registered_and_parsed_from_a_chain() -> None:
    assert RERANKERS.get("sv") is SpatialVerification
    (sv,) = parse_chain("sv:k=20,ratio=0.7,model=fundamental")
    assert isinstance(sv, SpatialVerification) and sv.depth == 20
    assert sv.config["ratio"] == 0.7 and sv.config["model"] == "fundamental"


@pytest.mark.parametrize("params", [
    {"k": 0}, {"k": 2.5}, {"k": True}, {"max_keypoints": -1}, {"max_side": 0}, {"min_inliers": 0},
    {"ratio": 0}, {"ratio": 1.5}, {"ratio": "high"}, {"threshold": 0}, {"threshold": float("inf")},
    {"method": "lmeds"}, {"model": "affine"}, {"model": ["homography"]}, {"inliers": 3},
])
def test_bad_parameters_raise_a_one_line_config_error(params) -> None:
    with pytest.raises(ConfigError) as error:
        SpatialVerification(**params)
    assert "\n" not in str(error.value)
