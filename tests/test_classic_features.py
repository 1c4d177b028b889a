"""Local features for the classic encodings: compact uint8 cache, dense RootSIFT grid, stores, codebooks."""

from __future__ import annotations

import numpy as np
import pytest

from matchlens.classic.codebook import Codebook, aggregate_residuals, train_codebook
from matchlens.classic.features import FeatureParams, LocalFeatureStore, _pyramid_level, extract_dense_rootsift
from matchlens.errors import ConfigError
from matchlens.local.features import FeatureCache, extract_rootsift
from tests.conftest import make_scene


def test_uint8_cache_halves_the_size_and_keeps_rootsift(tmp_path):
    features = extract_rootsift(make_scene(1), max_keypoints=300)
    assert len(features) > 50
    small, half = FeatureCache(tmp_path / "u8", descriptor_dtype="uint8"), FeatureCache(tmp_path / "f16")
    small.put("ab" * 32, "k", features)
    half.put("ab" * 32, "k", features)
    assert small.path("ab" * 32, "k").stat().st_size < 0.65 * half.path("ab" * 32, "k").stat().st_size
    back = FeatureCache(tmp_path / "u8").get("ab" * 32, "k")  # a float16 reader reads uint8 files too
    assert back.descriptors.dtype == np.float32
    assert np.linalg.norm(back.descriptors, axis=1) == pytest.approx(np.ones(len(features)), abs=1e-5)
    assert np.abs(back.descriptors - features.descriptors).max() < 0.01
    assert back.xy == pytest.approx(features.xy)
    with pytest.raises(ValueError):
        FeatureCache(tmp_path, descriptor_dtype="int4")


def test_dense_grid_positions_sizes_and_pyramid_levels():
    image = make_scene(2, size=(160, 120))
    dense = extract_dense_rootsift(image, step=20, sizes=(16, 32), max_side=80)  # works at 80x60: 4x3 points
    assert len(dense) == 2 * 4 * 3
    # grid points at 10, 30, 50, 70 (x) and 10, 30, 50 (y) of the 80x60 frame, reported in the 160x120 frame
    assert sorted(set(dense.xy[:, 0].tolist())) == [20, 60, 100, 140]
    assert sorted(set(dense.xy[:, 1].tolist())) == [20, 60, 100]
    assert sorted(set(dense.scale.tolist())) == [32, 64]
    assert np.linalg.norm(dense.descriptors, axis=1) == pytest.approx(np.ones(len(dense)), abs=1e-5)
    # size = 3.2·2^(octave + layer/3): 16 → 2^2.32 → octave 2, layer 1; 40 → 2^3.64 → octave 3, layer 2
    assert _pyramid_level(16) == 2 | (1 << 8) and _pyramid_level(40) == 3 | (2 << 8) and _pyramid_level(3.2) == 0


def test_feature_params_are_validated():
    with pytest.raises(ConfigError, match="max_keypoints"):
        FeatureParams(max_keypoints=0)
    with pytest.raises(ConfigError, match="dense_sizes"):
        FeatureParams(dense=True, dense_sizes=(2,))
    assert FeatureParams(max_keypoints=1000, max_side=1024).key == "rootsift1-n1000-s1024"  # spatial verification's


def test_store_extracts_once_and_memoises_queries(tmp_path):
    for i in range(3):
        make_scene(i).save(tmp_path / f"{i}.jpg")
    store = LocalFeatureStore(tmp_path / "cache", FeatureParams(max_keypoints=200), workers=2)
    items = [(f"{i:064d}", str(tmp_path / f"{i}.jpg")) for i in range(3)] + [("f" * 64, str(tmp_path / "missing.jpg"))]
    first = list(store.many(items))
    assert [i for i, _ in first] == [0, 1, 2, 3] and first[3][1] is None  # unreadable: None, not an exception
    again = LocalFeatureStore(tmp_path / "cache", FeatureParams(max_keypoints=200), workers=2)
    second = list(again.many(items[:3]))
    assert again.cache.hits == 3 and again.cache.misses == 0
    assert all(np.abs(a.descriptors - b.descriptors).max() < 0.01 for (_, a), (_, b) in zip(first, second))
    LocalFeatureStore._query_memo.clear()
    q1 = store.query(str(tmp_path / "0.jpg"), box=(10, 10, 200, 200))
    assert store.query(str(tmp_path / "0.jpg"), box=(10, 10, 200, 200)) is q1
    assert store.query(str(tmp_path / "0.jpg")) is not q1


def test_two_level_codebook_assigns_like_the_exhaustive_one():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((64, 16)).astype(np.float32) * 5
    sample = (centres[rng.integers(0, 64, 6000)] + 0.1 * rng.standard_normal((6000, 16))).astype(np.float32)
    import matchlens.classic.codebook as cb

    tree = cb._two_level(sample, 64, 10, 0, None)  # the large-codebook path, at a testable size
    assert tree.size == 64 and tree.coarse is not None and set(tree.parents.tolist()) == set(range(len(tree.coarse)))
    exact = Codebook(tree.centroids)
    tree.nprobe = len(tree.coarse)  # every coarse cluster searched: exact
    assert (tree.assign(sample[:500])[1] == exact.assign(sample[:500])[1]).all()
    flat = train_codebook(sample, 64, niter=10)
    assert flat.coarse is None and flat.size == 64
    with pytest.raises(ConfigError, match="visual words"):
        train_codebook(sample[:10], 64)


def test_aggregate_residuals_per_word():
    words, sums, counts = aggregate_residuals(np.array([[1.0, 1.0], [3.0, 1.0], [0.0, 2.0]]), np.array([5, 5, 2]),
                                              np.zeros((6, 2)) + np.array([[0.0, 1.0]]))
    assert words.tolist() == [2, 5] and counts.tolist() == [1, 2]
    assert sums == pytest.approx(np.array([[0.0, 1.0], [4.0, 0.0]]))
