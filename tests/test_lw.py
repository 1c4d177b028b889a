"""Learned whitening Lw (P3 §3.3; defaults = cirtorch's whitenlearn) on constructed data, its registry
entry and its file format. Exactness against cirtorch itself: tests/test_reference_exact.py."""

from __future__ import annotations

import numpy as np
import pytest

from matchlens.errors import ConfigError
from matchlens.whitening import LearnedWhitening, load_whitening, make_whitening


def _constructed(seed: int = 0, d: int = 6, n: int = 300):
    """Descriptors of n objects seen twice: the second view differs by anisotropic noise."""
    rng = np.random.default_rng(seed)
    objects = rng.normal(size=(n, d)) * np.linspace(3.0, 0.5, d)
    mixing = rng.normal(size=(d, d))  # matching differences with a full, correlated covariance
    views = objects + rng.normal(size=(n, d)) @ mixing * 0.3
    X = np.vstack([objects, views])
    matching = [(i, n + i) for i in range(n)]
    non_matching = [(i, (i + 1 + rng.integers(n - 1)) % n) for i in range(n)]
    return X, matching, non_matching


def test_matching_differences_are_whitened_to_identity():
    X, matching, non_matching = _constructed()
    lw = LearnedWhitening(shrinkage=0.0, eps=1e-12).fit_pairs(X, matching, non_matching)
    a, b = np.array(matching).T
    diff = lw.project(X[a]) - lw.project(X[b])
    np.testing.assert_allclose(diff.T @ diff / len(diff), np.eye(X.shape[1]), atol=1e-8)


def test_default_rotation_decorrelates_all_descriptors_about_the_query_mean():
    """cirtorch's rotation: principal directions of every training descriptor, centred on the
    mean of the matching pairs' first members."""
    X, matching, _ = _constructed(1)
    lw = LearnedWhitening().fit_pairs(X, matching)
    np.testing.assert_allclose(lw.mean_, X[np.array(matching)[:, 0]].mean(axis=0))
    z = lw.project(X)
    cov = z.T @ z / len(z)
    np.testing.assert_allclose(cov, np.diag(lw.eigenvalues_), atol=1e-8)
    assert np.all(np.diff(lw.eigenvalues_) <= 1e-9)


def test_pairs_rotation_decorrelates_non_matching_differences_largest_first():
    X, matching, non_matching = _constructed(1)
    lw = LearnedWhitening(shrinkage=0.0, eps=1e-12, rotation="pairs").fit_pairs(X, matching, non_matching)
    a, b = np.array(non_matching).T
    diff = lw.project(X[a]) - lw.project(X[b])
    cov = diff.T @ diff / len(diff)
    np.testing.assert_allclose(cov, np.diag(np.diag(cov)), atol=1e-8)
    np.testing.assert_allclose(np.diag(cov), lw.eigenvalues_, rtol=1e-8)
    assert np.all(np.diff(np.diag(cov)) <= 1e-9)  # the kept components are the most discriminative


def test_dim_keeps_leading_components_and_output_is_l2_normalised():
    X, matching, non_matching = _constructed(2)
    full = LearnedWhitening(shrinkage=0.0).fit_pairs(X, matching, non_matching)
    cut = LearnedWhitening(dim=3, shrinkage=0.0).fit_pairs(X, matching, non_matching)
    np.testing.assert_allclose(cut.project(X), full.project(X)[:, :3], atol=1e-9)
    np.testing.assert_allclose(full.truncated(3).project(X), cut.project(X), atol=1e-9)
    out = cut.transform(X)
    assert out.dtype == np.float32 and out.shape == (len(X), 3)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_lw_separates_matches_better_than_raw_on_noisy_directions():
    """Noise dominates one direction of the raw space; Lw damps it, so the true match of each
    view ranks first far more often."""
    rng = np.random.default_rng(3)
    n, d = 200, 8
    objects = rng.normal(size=(n, d))
    noise = np.zeros((n, d))
    noise[:, 0] = rng.normal(scale=4.0, size=n)  # nuisance variation along one axis
    views = objects + noise + rng.normal(scale=0.05, size=(n, d))
    X = np.vstack([objects, views])
    pairs = [(i, n + i) for i in range(n)]
    others = [(i, (i + 7) % n) for i in range(n)]
    lw = LearnedWhitening(shrinkage=0.0).fit_pairs(X, pairs, others)

    def top1(Y):
        Y = Y / np.linalg.norm(Y, axis=1, keepdims=True)
        return np.mean(np.argmax(Y[n:] @ Y[:n].T, axis=1) == np.arange(n))

    assert top1(lw.transform(X)) > top1(X) + 0.3


def test_shrinkage_makes_few_pairs_usable():
    X, matching, non_matching = _constructed(4, d=20, n=8)  # 8 matching pairs, 20 dimensions
    lw = LearnedWhitening(shrinkage=0.1).fit_pairs(X, matching, non_matching)
    assert np.isfinite(lw.projection_).all()


def test_singular_pair_covariance_gets_cirtorchs_growing_jitter():
    """Without shrinkage, 8 pairs in 20 dimensions leave C_S singular: as cirtorch, a diagonal
    jitter from eps upwards (x10) makes it factorisable; the directions no pair varies in are
    amplified, while the whitened matching differences keep identity covariance in the pairs' span."""
    X, matching, _ = _constructed(4, d=20, n=8)
    lw = LearnedWhitening().fit_pairs(X, matching)
    assert np.isfinite(lw.projection_).all() and np.abs(lw.projection_).max() > 1e3
    a, b = np.array(matching).T
    diff = lw.project(X[a]) - lw.project(X[b])
    values = np.sort(np.linalg.eigvalsh(diff.T @ diff / len(diff)))
    np.testing.assert_allclose(values[-len(matching):], 1.0, atol=1e-4)
    np.testing.assert_allclose(values[:-len(matching)], 0.0, atol=1e-4)


def test_registry_save_load_and_errors(tmp_path):
    X, matching, non_matching = _constructed(5)
    lw = make_whitening("lw", dim=4, shrinkage=0.0)
    assert isinstance(lw, LearnedWhitening)
    with pytest.raises(ConfigError, match="matching pairs"):
        lw.fit(X)
    with pytest.raises(ConfigError, match="non-matching"):
        make_whitening("lw", rotation="pairs").fit_pairs(X, matching, [])
    with pytest.raises(ConfigError, match="rotation"):
        LearnedWhitening(rotation="queries")
    with pytest.raises(ConfigError, match="centre"):
        LearnedWhitening(centre="median")
    with pytest.raises(ConfigError, match="outside"):
        lw.fit_pairs(X, [(0, len(X))], non_matching)
    with pytest.raises(ConfigError):
        LearnedWhitening(shrinkage=2.0)
    lw.fit_pairs(X, matching, non_matching)
    lw.save(tmp_path / "lw.npz")
    again = load_whitening(tmp_path / "lw.npz")
    assert isinstance(again, LearnedWhitening) and again.params() == lw.params()
    np.testing.assert_array_equal(again.transform(X), lw.transform(X))
