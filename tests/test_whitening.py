"""Whitening: a hand-worked 2-D example, statistical properties, persistence and every error."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matchlens.config import WHITENING_NAMES
from matchlens.errors import ConfigError, WeightsError
from matchlens.whitening import (
    WHITENINGS, IdentityWhitening, PCAWhitening, load_whitening, make_whitening, whitening_names,
)
from matchlens.whitening import pca as pca_module

# Four points on the axes. Mean (0, 0); sample covariance (n-1 = 3):
# var_x = (1+1)/3 = 2/3, var_y = (4+4)/3 = 8/3, cov_xy = 0.
# So λ = (8/3, 2/3) with directions (0, 1) then (1, 0).
CROSS = np.array([[1, 0], [-1, 0], [0, 2], [0, -2]], dtype=np.float32)


def correlated(seed: int, n: int, d: int) -> np.ndarray:
    """Random correlated rows (a random linear mix of Gaussians plus an offset), L2-normalised."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


# --- the hand-worked example --------------------------------------------------------------------
def test_cross_eigenvalues_and_directions():
    w = PCAWhitening().fit(CROSS)
    np.testing.assert_allclose(w.mean_, [0, 0], atol=1e-12)
    np.testing.assert_allclose(w.eigenvalues_, [8 / 3, 2 / 3], rtol=1e-12)
    np.testing.assert_allclose(w.components_, [[0, 1], [1, 0]], atol=1e-12)
    assert w.output_dim == 2 and w.input_dim == 2


def test_cross_whitened_coordinates():
    w = PCAWhitening().fit(CROSS)
    # (0, ±2) -> (±2/√(8/3), 0) = (±√1.5, 0);  (±1, 0) -> (0, ±1/√(2/3)) = (0, ±√1.5)
    r = math.sqrt(1.5)
    np.testing.assert_allclose(w.project(CROSS), [[0, r], [0, -r], [r, 0], [-r, 0]], atol=1e-8)
    np.testing.assert_allclose(w.transform(CROSS), [[0, 1], [0, -1], [1, 0], [-1, 0]], atol=1e-7)
    # a new point (1, 1) -> (√(3/8), √(3/2)); norm √(15/8), so L2 gives (1/√5, 2/√5)
    np.testing.assert_allclose(w.project([[1, 1]]), [[math.sqrt(3 / 8), math.sqrt(1.5)]], atol=1e-8)
    np.testing.assert_allclose(w.transform([[1, 1]]), [[1 / math.sqrt(5), 2 / math.sqrt(5)]],
                               atol=1e-7)


def test_cross_power_zero_is_a_rotation_and_partial_power_in_between():
    plain = PCAWhitening(power=0.0).fit(CROSS)
    np.testing.assert_allclose(plain.project([[1, 1], [0, 2]]), [[1, 1], [2, 0]], atol=1e-12)
    partial = PCAWhitening(power=0.25).fit(CROSS)
    # (0, 2) -> 2·(8/3)^-1/4 on the first axis; (1, 0) -> (2/3)^-1/4 on the second
    np.testing.assert_allclose(partial.project([[0, 2], [1, 0]]),
                               [[2 * (8 / 3) ** -0.25, 0], [0, (2 / 3) ** -0.25]], atol=1e-8)


def test_cross_shrinkage_moves_eigenvalues_to_their_mean():
    w = PCAWhitening(shrinkage=0.5).fit(CROSS)
    # mean λ = 5/3; λ' = (8/3 + 5/3)/2 = 13/6 and (2/3 + 5/3)/2 = 7/6
    np.testing.assert_allclose(w.project([[0, 2], [1, 0]]),
                               [[2 / math.sqrt(13 / 6), 0], [0, 1 / math.sqrt(7 / 6)]], atol=1e-8)
    np.testing.assert_allclose(w.eigenvalues_, [8 / 3, 2 / 3])  # stored before shrinkage


def test_cross_dim_one_keeps_the_main_axis():
    w = PCAWhitening(dim=1).fit(CROSS)
    assert w.output_dim == 1
    out = w.transform([[0, 2], [0, -2], [1, 0]])
    # (1, 0) projects to 0 on the kept axis: no direction, stays a zero row
    np.testing.assert_allclose(out, [[1], [-1], [0]], atol=1e-7)
    assert out.dtype == np.float32


# --- statistical properties ---------------------------------------------------------------------
def test_full_whitening_gives_identity_covariance():
    X = correlated(0, n=400, d=8)
    Y = PCAWhitening().fit(X).project(X)
    assert Y.shape == (400, 8)
    np.testing.assert_allclose(Y.mean(axis=0), np.zeros(8), atol=1e-9)
    np.testing.assert_allclose(np.cov(Y, rowvar=False), np.eye(8), atol=1e-6)


def test_fewer_vectors_than_dimensions_uses_the_data_rank():
    X = correlated(1, n=6, d=20)
    w = PCAWhitening().fit(X)
    assert w.output_dim == 5  # min(n - 1, d)
    np.testing.assert_allclose(np.cov(w.project(X), rowvar=False), np.eye(5), atol=1e-6)


def test_power_zero_with_all_components_preserves_distances():
    X = correlated(2, n=50, d=6)
    Y = PCAWhitening(power=0.0).fit(X).project(X)
    dist = lambda A: np.linalg.norm(A[:, None] - A[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(dist(Y), dist(X.astype(np.float64)), atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), power=st.floats(0.0, 0.5), n=st.integers(3, 40),
       d=st.integers(2, 12))
def test_projected_covariance_is_diag_lambda_power(seed, power, n, d):
    """cov(project(X)) = diag(λ^(1 - 2·power)); components orthonormal; outputs unit rows."""
    X = correlated(seed, n, d)
    w = PCAWhitening(power=power).fit(X)
    lam = w.eigenvalues_
    expected = lam * (lam + w.eps) ** (-2 * power)
    cov = np.atleast_2d(np.cov(w.project(X), rowvar=False))
    np.testing.assert_allclose(cov, np.diag(expected), atol=1e-6 * max(1.0, expected.max()))
    np.testing.assert_allclose(w.components_ @ w.components_.T, np.eye(w.output_dim), atol=1e-9)
    assert np.all(np.diff(lam) <= 1e-12)  # largest first
    out = w.transform(X)
    norms = np.linalg.norm(out, axis=1)
    assert out.dtype == np.float32 and np.all((np.abs(norms - 1) < 1e-5) | (norms == 0))


def test_chunked_processing_gives_the_same_result(monkeypatch):
    X = correlated(3, n=100, d=7)
    whole = PCAWhitening(dim=5).fit(X)
    monkeypatch.setattr(pca_module, "_CHUNK_ROWS", 7)
    chunked = PCAWhitening(dim=5).fit(X)
    np.testing.assert_allclose(chunked.projection_, whole.projection_, atol=1e-10)
    np.testing.assert_allclose(chunked.transform(X), whole.transform(X), atol=1e-6)


# --- persistence --------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(tmp_path):
    X = correlated(4, n=60, d=10)
    w = PCAWhitening(dim=6, power=0.4, shrinkage=0.1).fit(X)
    path = tmp_path / "whitening.bin"  # any name: nothing is appended to it
    w.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whitening.bin"]
    for loaded in (PCAWhitening.load(path), load_whitening(path)):
        assert isinstance(loaded, PCAWhitening)
        assert loaded.params() == w.params()
        assert np.array_equal(loaded.transform(X), w.transform(X))
    with np.load(path) as data:
        assert {"mean", "projection", "eigenvalues", "params"} <= set(data.files)
        assert json.loads(str(data["params"])) == {"dim": 6, "power": 0.4, "shrinkage": 0.1,
                                                    "eps": 1e-9}


def test_identity_round_trip(tmp_path):
    w = make_whitening("none").fit(np.ones((3, 4)))
    w.save(tmp_path / "w.npz")
    loaded = load_whitening(tmp_path / "w.npz")
    assert isinstance(loaded, IdentityWhitening) and loaded.output_dim == 4


def test_loading_a_foreign_or_missing_file_is_a_weights_error(tmp_path):
    make_whitening("none").save(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(WeightsError):
        PCAWhitening.load(tmp_path / "none.npz")
    for name in ("other.npz", "junk.npz", "missing.npz"):
        with pytest.raises(WeightsError):
            load_whitening(tmp_path / name)


# --- the identity ("none") ----------------------------------------------------------------------
def test_identity_only_normalises():
    w = IdentityWhitening().fit(np.zeros((2, 2)))
    np.testing.assert_allclose(w.transform([[3, 4], [0, 0]]), [[0.6, 0.8], [0, 0]])
    assert w.output_dim == 2 and w.params() == {}
    with pytest.raises(ConfigError):
        w.transform(np.ones((1, 3)))
    assert IdentityWhitening().transform([[0, 2, 0]]).tolist() == [[0, 1, 0]]  # unfitted: any width
    with pytest.raises(ConfigError):
        _ = IdentityWhitening().output_dim  # reading the property raises: unfitted, no width


# --- registry and errors ------------------------------------------------------------------------
def test_registry_names_match_the_pipeline_spec():
    assert whitening_names() == ["lw", "none", "pcaw"] == sorted(WHITENING_NAMES)
    assert isinstance(make_whitening("PCAW", dim=4), PCAWhitening)
    assert WHITENINGS.get("none") is IdentityWhitening
    assert make_whitening("pcaw", dim=4).output_dim == 4  # known before fitting when dim is set


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_fit_errors():
    assert "at least 2" in _error(PCAWhitening().fit, CROSS[:1])
    # 5 vectors in 10-d have rank 4: dim 6 needs 7 vectors
    assert "at least 7 training vectors" in _error(PCAWhitening(dim=6).fit, correlated(5, 5, 10))
    assert "width 2" in _error(PCAWhitening(dim=3).fit, correlated(5, 50, 2))
    assert "NaN" in _error(PCAWhitening().fit, np.array([[0, 1], [np.nan, 0], [1, 1]]))
    assert "2-D" in _error(PCAWhitening().fit, np.ones(5))


def test_use_before_fit_errors(tmp_path):
    w = PCAWhitening()
    for call in (w.transform, w.project):
        assert "not fitted" in _error(call, CROSS)
    assert "not fitted" in _error(w.save, tmp_path / "w.npz")
    _error(lambda: w.output_dim)


def test_transform_width_error():
    w = PCAWhitening().fit(CROSS)
    assert "width 3" in _error(w.transform, np.ones((2, 3)))


@pytest.mark.parametrize("params", [
    {"dim": 0}, {"dim": 2.5}, {"dim": True}, {"power": -0.1}, {"power": 0.6}, {"power": "0.5"},
    {"shrinkage": 1.5}, {"eps": 0.0}, {"eps": -1.0}, {"eps": float("inf")},
])
def test_invalid_parameters(params):
    key = next(iter(params))
    assert key in _error(make_whitening, "pcaw", **params)


def test_unknown_names_and_parameters():
    message = _error(make_whitening, "zca")
    assert "none, pcaw" in message
    message = _error(make_whitening, "pcaw", components=3)
    assert "components" in message and "dim, power, shrinkage, eps" in message
    _error(make_whitening, "none", dim=3)
