"""Learned whitening (Lw) from matching pairs (P3 §3.3, LITERATURE.md "Whitening").

Unlike PCA whitening, Lw uses labels: the differences ``f_i - f_j`` of **matching** pairs define
the intra-class covariance ``C_S``; whitening with ``C_S^-1/2`` makes those differences have
identity covariance, so no direction of "same object, other photo" variation dominates. A
rotation ``R`` then orders the whitened space by what separates images, largest first; keeping
the ``dim`` first reduces the dimension. The projection is::

    x' = R · C_S^-1/2 · (x - μ),  then L2 normalisation.

The defaults are exactly cirtorch's ``whitenlearn`` (filipradenovic/cnnimageretrieval-pytorch,
cirtorch/utils/whiten.py; tests/test_reference_exact.py): ``C_S^-1/2`` is the inverse Cholesky
factor of ``C_S`` (a diagonal jitter is added only when ``C_S`` is not positive definite), ``μ``
is the mean of the matching pairs' first members (the queries), and ``R`` holds the principal
directions of **all** the training descriptors, centred on ``μ`` and whitened. Named options
give the paper's formula instead: ``rotation="pairs"`` takes ``R`` from the whitened differences
of **non-matching** pairs, ``centre="all"`` centres on the mean of all training descriptors, and
``shrinkage`` regularises ``C_S``; ``shrinkage=0.1, rotation="pairs", centre="all"`` was this
module's default before it followed cirtorch (docs/reference-exactness.md has both measured).

Lw needs pairs, so it is learned by ``matchlens train`` and stored in the checkpoint; an index
whose spec names whitening ``lw`` reads it from the checkpoint given as ``--weights``.
"""

from __future__ import annotations

import json
import math
import os
from numbers import Integral, Real
from typing import Any, ClassVar, Sequence

import numpy as np

from matchlens.errors import ConfigError, WeightsError
from matchlens.whitening.pca import (FORMAT_VERSION, ProjectionWhitening, _as_matrix, _fix_signs, _map_rows,
                                     _write_npz, read_npz)

__all__ = ["CENTRES", "ROTATIONS", "LearnedWhitening", "lw_from_checkpoint"]

Pairs = Sequence[tuple[int, int]] | np.ndarray


ROTATIONS = ("all", "pairs")  # all: cirtorch's (every training descriptor); pairs: non-matching differences
CENTRES = ("queries", "all")  # queries: cirtorch's (the matching pairs' first members); all: every descriptor
# What a whitening saved before rotation and centre existed was fitted with.
_LEGACY = {"rotation": "pairs", "centre": "all"}


class LearnedWhitening(ProjectionWhitening):
    """Lw: whiten by matching-pair differences, rotate by the descriptors' spread, keep ``dim``.

    ``shrinkage`` ``s`` in [0, 1] replaces ``C_S`` by ``(1-s)·C_S + s·mean(eig(C_S))·I``: with
    fewer matching pairs than dimensions ``C_S`` is singular and shrinkage keeps its inverse
    square root moderate (``s = 0``, the default, is cirtorch's). ``eps``: the first diagonal
    jitter tried when ``C_S`` is not positive definite, multiplied by 10 until the Cholesky
    factorisation succeeds (cirtorch's rule and first value). ``rotation`` and ``centre``: see
    the module docstring.
    """

    name: ClassVar[str] = "lw"
    label: ClassVar[str] = "learned whitening"

    def __init__(self, dim: int | None = None, shrinkage: float = 0.0, eps: float = 1e-10,
                 rotation: str = "all", centre: str = "queries") -> None:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, Integral) or dim < 1):
            raise ConfigError(f"whitening 'lw': dim must be an integer >= 1 or null, got {dim!r}")
        if not _real(shrinkage) or not 0.0 <= shrinkage <= 1.0:
            raise ConfigError(f"whitening 'lw': shrinkage must be a number in [0, 1], got {shrinkage!r}")
        if not _real(eps) or not 0 < eps < math.inf:
            raise ConfigError(f"whitening 'lw': eps must be a finite number > 0, got {eps!r}")
        if rotation not in ROTATIONS:
            raise ConfigError(f"whitening 'lw': rotation must be one of {', '.join(ROTATIONS)}, got {rotation!r}")
        if centre not in CENTRES:
            raise ConfigError(f"whitening 'lw': centre must be one of {', '.join(CENTRES)}, got {centre!r}")
        self.dim = None if dim is None else int(dim)
        self.shrinkage = float(shrinkage)
        self.eps = float(eps)
        self.rotation = rotation
        self.centre = centre
        self.mean_: np.ndarray | None = None         # (d,)
        self.projection_: np.ndarray | None = None   # (d_out, d) = R · C_S^-1/2
        self.eigenvalues_: np.ndarray | None = None  # (d_out,) variances along R's rows, descending

    # --- fitting ---------------------------------------------------------------------------
    def fit(self, X: np.ndarray) -> "LearnedWhitening":
        """Lw cannot be fitted from vectors alone; use :meth:`fit_pairs` (``matchlens train`` does)."""
        raise ConfigError("whitening 'lw' is learned from matching pairs: train with 'matchlens train' "
                          "and index with --weights CHECKPOINT --whitening lw")

    def fit_pairs(self, X: np.ndarray, matching: Pairs, non_matching: Pairs | None = None) -> "LearnedWhitening":
        """Learn ``μ`` and the projection from descriptors ``X`` (n, d) and index pairs into ``X``.

        ``non_matching`` is needed (and used) only with ``rotation="pairs"``.
        """
        X = _as_matrix(X, "training vectors").astype(np.float64)
        if not np.isfinite(X).all():
            raise ConfigError("training vectors contain NaN or infinite values")
        same = _pair_array(matching, len(X), "matching")
        other = _pair_array(non_matching, len(X), "non-matching") if self.rotation == "pairs" else None
        d = X.shape[1]
        keep = d if self.dim is None else self.dim
        if keep > d:
            raise ConfigError(f"whitening dim={keep} exceeds the descriptor width {d}")
        cov_s = _pair_covariance(X, same)
        cov_s = (1.0 - self.shrinkage) * cov_s + self.shrinkage * (np.trace(cov_s) / d) * np.eye(d)
        whiten = _inverse_cholesky(cov_s, self.eps)  # W with W C_S Wᵀ = I
        mean = X[same[:, 0]].mean(axis=0) if self.centre == "queries" else X.mean(axis=0)
        if other is None:
            centred = (X - mean) @ whiten.T
            spread = centred.T @ centred / len(centred)
        else:
            spread = whiten @ _pair_covariance(X, other) @ whiten.T
        values, vectors = _eigh(spread)
        order = np.argsort(values)[::-1][:keep]
        rotation = _fix_signs(vectors[:, order].T)
        self.mean_ = mean
        self.projection_ = rotation @ whiten
        self.eigenvalues_ = np.clip(values[order], 0.0, None)
        return self

    # --- applying --------------------------------------------------------------------------
    def project(self, X: np.ndarray) -> np.ndarray:
        """``P (x - μ)`` (n, dim) float64, before L2."""
        mean, projection = self._fitted()
        X = _as_matrix(X, "vectors", width=mean.shape[0])
        return _map_rows(X, lambda block: (block - mean) @ projection.T, projection.shape[0])

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Whitened, L2-normalised descriptors (n, dim) float32."""
        mean, projection = self._fitted()
        X = _as_matrix(X, "vectors", width=mean.shape[0])
        return _map_rows(X, lambda block: (block - mean) @ projection.T, projection.shape[0],
                         dtype=np.float32, normalise=True)

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    def truncated(self, dim: int | None) -> "LearnedWhitening":
        """A copy keeping the first ``dim`` output components (the spec's ``dim`` applied to a stored Lw)."""
        mean, projection = self._fitted()
        if dim is None:
            return self
        if not 1 <= dim <= projection.shape[0]:
            raise ConfigError(f"whitening 'lw': dim={dim} but the learned whitening has {projection.shape[0]} "
                              "components")
        copy = LearnedWhitening(dim, self.shrinkage, self.eps, self.rotation, self.centre)
        copy.mean_, copy.projection_ = mean, projection[:dim]
        copy.eigenvalues_ = None if self.eigenvalues_ is None else self.eigenvalues_[:dim]
        return copy

    def params(self) -> dict[str, Any]:
        return {"dim": self.dim, "shrinkage": self.shrinkage, "eps": self.eps, "rotation": self.rotation,
                "centre": self.centre}

    # --- persistence -----------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays (what a training checkpoint stores)."""
        mean, projection = self._fitted()
        eig = self.eigenvalues_ if self.eigenvalues_ is not None else np.zeros(projection.shape[0])
        return {"mean": mean, "projection": projection, "eigenvalues": eig}

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any], params: dict[str, Any] | None = None) -> "LearnedWhitening":
        """Rebuild from :meth:`arrays` output (numpy arrays or tensors).

        The arrays alone define the transform, so a whitening saved before ``rotation`` and
        ``centre`` existed applies unchanged; its params are completed with what it was fitted with.
        """
        if params is not None and "rotation" not in params:
            params = {**params, **_LEGACY}
        model = cls(**(params or {}))
        try:
            model.mean_ = np.asarray(arrays["mean"], dtype=np.float64)
            model.projection_ = np.asarray(arrays["projection"], dtype=np.float64)
            model.eigenvalues_ = np.asarray(arrays.get("eigenvalues", np.zeros(len(model.projection_))),
                                            dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"learned whitening is incomplete: {exc}") from None
        if model.projection_.ndim != 2 or model.projection_.shape[1] != model.mean_.shape[0]:
            raise WeightsError("learned whitening has inconsistent array shapes")
        return model

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted whitening to ``path`` (.npz, atomically)."""
        _write_npz(path, {"kind": np.array(self.name), "format_version": np.array(FORMAT_VERSION),
                          "params": np.array(json.dumps(self.params())), **self.arrays()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LearnedWhitening":
        arrays = read_npz(path, cls.name)
        try:
            params = json.loads(str(arrays["params"]))
        except (KeyError, ValueError) as exc:
            raise WeightsError(f"whitening file {path} is incomplete or corrupt: {exc}") from None
        return cls.from_arrays(arrays, params)

    def __repr__(self) -> str:
        state = f", fitted {self.input_dim}->{self.output_dim}" if self.is_fitted else ""
        return (f"LearnedWhitening(dim={self.dim!r}, shrinkage={self.shrinkage!r}, rotation={self.rotation!r}, "
                f"centre={self.centre!r}{state})")


def _real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)


def _eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric matrix (symmetrised first: products of symmetric
    matrices drift in the last bits) by LAPACK's divide-and-conquer ``syevd``; the default
    ``syevr`` driver was seen to fail with "Internal Error" on rank-deficient 1280x1280 inputs."""
    import scipy.linalg  # deferred: scipy.linalg costs 0.2 s to import and only fitting needs it

    return scipy.linalg.eigh((matrix + matrix.T) / 2.0, driver="evd")


def _inverse_cholesky(cov: np.ndarray, first_jitter: float) -> np.ndarray:
    """``L^-1`` for the Cholesky factor ``L Lᵀ = cov + j·I``: j = 0, else ``first_jitter``, 10×
    that, ... until the factorisation succeeds (cirtorch's rule for a singular ``cov``)."""
    import scipy.linalg  # deferred: scipy.linalg costs 0.2 s to import and only fitting needs it

    eye = np.eye(len(cov))
    jitter = 0.0
    ceiling = 1e6 * max(1.0, float(np.abs(cov).max()))  # far past any scale: something else is wrong
    while jitter <= ceiling:
        try:
            lower = np.linalg.cholesky(cov + jitter * eye)
        except np.linalg.LinAlgError:
            jitter = first_jitter if jitter == 0.0 else 10.0 * jitter
            continue
        return scipy.linalg.solve_triangular(lower, eye, lower=True)
    raise ConfigError("learned whitening: the matching-pair covariance is not positive definite even "
                      "with a large jitter")


def _pair_array(pairs: Pairs | None, n: int, what: str) -> np.ndarray:
    array = np.zeros((0, 2), np.int64) if pairs is None else np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(array) == 0:
        raise ConfigError(f"learned whitening needs at least one {what} pair")
    if array.min() < 0 or array.max() >= n:
        raise ConfigError(f"{what} pairs index outside the {n} training vectors")
    return array


def _pair_covariance(X: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """``Σ (f_i - f_j)(f_i - f_j)ᵀ / #pairs`` (the difference of a pair has mean zero by symmetry)."""
    diff = X[pairs[:, 0]] - X[pairs[:, 1]]
    return diff.T @ diff / len(diff)


def lw_from_checkpoint(weights: str | os.PathLike | None, dim: int | None = None) -> LearnedWhitening:
    """The Lw stored in a ``matchlens train`` checkpoint, cut to ``dim`` components if given."""
    from matchlens.models.weights import read_matchlens_meta

    if not weights:
        raise ConfigError("whitening 'lw' needs --weights CHECKPOINT from 'matchlens train' (Lw is stored there)")
    meta = read_matchlens_meta(weights)
    lw = (meta or {}).get("lw")
    if not lw:
        raise ConfigError(f"weights file {weights} carries no learned whitening; train with --lw, "
                          "or choose --whitening pcaw")
    return LearnedWhitening.from_arrays(lw, lw.get("params") if isinstance(lw.get("params"), dict) else None
                                        ).truncated(dim)
