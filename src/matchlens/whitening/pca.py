"""PCA whitening (and the identity "none"), with a scikit-learn-like fit / transform interface.

Descriptors arrive as ``(n, d)`` float arrays, rows L2-normalised; outputs are ``(n, dim)``
float32 rows, L2-normalised, so scores stay inner products. Fitting and projecting run in
float64, in row chunks so that a large collection is never copied whole to float64.
Fitted parameters are saved as ``.npz`` (no pickles) and written atomically.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from numbers import Integral, Real
from typing import Any, Callable, ClassVar, Iterator

import numpy as np

from matchlens.errors import ConfigError, WeightsError
from matchlens.fileio import atomic_write
from matchlens.linalg import l2_normalize

__all__ = ["IdentityWhitening", "PCAWhitening"]

FORMAT_VERSION = 1
_CHUNK_ROWS = 16384  # bounds the float64 temporaries: 16k × 2048 × 8 B = 256 MiB


def _as_matrix(X: Any, what: str, width: int | None = None) -> np.ndarray:
    """``X`` as a 2-D numeric array (not copied), or a one-line ConfigError."""
    X = np.asarray(X)
    numeric = np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)
    if X.ndim != 2 or not numeric:
        raise ConfigError(f"{what} must be a 2-D numeric array (n, d), got shape {X.shape} "
                          f"{X.dtype}")
    if width is not None and X.shape[1] != width:
        raise ConfigError(f"{what} have width {X.shape[1]} but the whitening was fitted on "
                          f"width {width}")
    return X


def _chunks(X: np.ndarray, what: str) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, block)`` for consecutive row blocks of ``X`` as float64 copies, each
    checked for NaN/inf."""
    for start in range(0, X.shape[0], _CHUNK_ROWS):
        block = X[start:start + _CHUNK_ROWS].astype(np.float64)
        if not np.isfinite(block).all():
            raise ConfigError(f"{what} contain NaN or infinite values")
        yield start, block


def _map_rows(X: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], width: int,
              dtype: type = np.float64, normalise: bool = False) -> np.ndarray:
    """``fn`` applied block by block to the rows of ``X`` (float64), optionally L2-normalised,
    gathered into one ``(n, width)`` array of ``dtype``."""
    out: np.ndarray = np.empty((X.shape[0], width), dtype=dtype)
    for start, block in _chunks(X, "vectors"):
        rows = fn(block)
        out[start:start + len(rows)] = l2_normalize(rows) if normalise else rows
    return out


def _write_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> None:
    """Write ``arrays`` to exactly ``path`` via a temporary sibling, so a crash never leaves a
    half-written file where a good one was."""
    with atomic_write(path, "wb") as handle:  # a handle, so numpy does not append ".npz" to the name
        np.savez(handle, **arrays)


def read_npz(path: str | os.PathLike, kind: str | None) -> dict[str, np.ndarray]:
    """All arrays of a whitening file (checked to be of ``kind`` unless None), or a one-line
    WeightsError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"cannot read whitening file {path}: {exc}") from None
    found = str(arrays.get("kind", ""))
    if kind is not None and found != kind:
        raise WeightsError(f"whitening file {path} holds {found or 'no'} whitening, "
                           f"expected {kind!r}")
    return arrays


def _fix_signs(components: np.ndarray) -> np.ndarray:
    """Flip each row so its largest-magnitude entry is positive: eigenvectors are defined up to
    sign, and a fixed convention makes fits reproducible across LAPACK builds."""
    pivots = components[np.arange(len(components)), np.abs(components).argmax(axis=1)]
    # "+ 0.0" turns the -0.0 entries that a flip makes into 0.0
    return components * np.where(pivots < 0, -1.0, 1.0)[:, None] + 0.0


class ProjectionWhitening:
    """What every fitted linear whitening shares: ``mean_`` (d,), ``projection_`` (d_out, d) and
    the widths and fitted state derived from them. ``label`` names the method in errors."""

    label: ClassVar[str] = "whitening"
    dim: int | None
    mean_: np.ndarray | None
    projection_: np.ndarray | None

    @property
    def output_dim(self) -> int:
        """Width of :meth:`transform`'s output (known before fitting only when ``dim`` is set)."""
        if self.projection_ is not None:
            return int(self.projection_.shape[0])
        if self.dim is not None:
            return self.dim
        raise ConfigError(f"{self.label} with dim=None has no output width until it is fitted")

    @property
    def input_dim(self) -> int:
        """Width of the vectors it was fitted on."""
        return int(self._fitted()[0].shape[0])

    @property
    def is_fitted(self) -> bool:
        return self.projection_ is not None

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean_ is None or self.projection_ is None:
            raise ConfigError(f"{self.label} is not fitted: call fit() or load() first")
        return self.mean_, self.projection_


class PCAWhitening(ProjectionWhitening):
    """PCA whitening ``x' = diag((λ+eps)^-power) Uᵀ(x-μ)``, keep ``dim`` components, then L2.

    ``μ`` is the training mean, ``U`` the principal directions of the sample covariance
    ``C = Σ (x-μ)(x-μ)ᵀ / (n-1)`` and ``λ`` its eigenvalues, largest first (LITERATURE.md,
    "Whitening"). ``power = 0.5`` is full whitening (the projected training set has identity
    covariance); ``power = 0`` is a plain PCA rotation/projection; values between whiten
    partially. ``shrinkage`` ``s`` in [0, 1] replaces ``λ`` by ``(1-s)·λ + s·mean(λ)`` (mean
    over all ``d`` eigenvalues), which damps the noisy small components of a small training
    set. ``dim = None`` keeps every component up to the rank ``min(n-1, d)``.
    """

    name: ClassVar[str] = "pcaw"
    label: ClassVar[str] = "PCA whitening"

    def __init__(self, dim: int | None = None, power: float = 0.5, shrinkage: float = 0.0,
                 eps: float = 1e-9) -> None:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, Integral) or dim < 1):
            raise ConfigError(f"whitening 'pcaw': dim must be an integer >= 1 or null, got {dim!r}")
        self.dim = None if dim is None else int(dim)
        self.power = _bounded(power, "power", 0.0, 0.5)
        self.shrinkage = _bounded(shrinkage, "shrinkage", 0.0, 1.0)
        if not _is_number(eps) or not 0 < eps < math.inf:
            raise ConfigError(f"whitening 'pcaw': eps must be a finite number > 0, got {eps!r}")
        self.eps = float(eps)
        self.mean_: np.ndarray | None = None         # (d,)
        self.components_: np.ndarray | None = None   # (dim, d), rows = principal directions
        self.eigenvalues_: np.ndarray | None = None  # (dim,), before shrinkage
        self.projection_: np.ndarray | None = None   # (dim, d) = diag(scale) · components_

    # --- fitting ---------------------------------------------------------------------------
    def fit(self, X: np.ndarray) -> PCAWhitening:
        """Learn ``μ``, ``U`` and ``λ`` from training vectors ``X`` (n, d); returns ``self``."""
        X = _as_matrix(X, "training vectors")
        n, d = X.shape
        if n < 2:
            raise ConfigError(f"PCA whitening needs at least 2 training vectors, got {n}")
        rank = min(n - 1, d)
        dim = rank if self.dim is None else self.dim
        if dim > d:
            raise ConfigError(f"whitening dim={dim} exceeds the descriptor width {d}")
        if dim > rank:
            raise ConfigError(f"whitening dim={dim} needs at least {dim + 1} training vectors, "
                              f"got {n}")
        mean, eigenvalues, components, trace = _principal_axes(X)
        shrunk = (1.0 - self.shrinkage) * eigenvalues + self.shrinkage * (trace / d)
        scale = (shrunk[:dim] + self.eps) ** -self.power
        self.mean_ = mean
        self.components_ = _fix_signs(components[:dim])
        self.eigenvalues_ = eigenvalues[:dim]
        self.projection_ = scale[:, None] * self.components_
        return self

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X).transform(X)

    # --- applying --------------------------------------------------------------------------
    def project(self, X: np.ndarray) -> np.ndarray:
        """Whitened coordinates ``diag((λ+eps)^-power) Uᵀ(x-μ)``, (n, dim) float64, before L2."""
        return self._apply(X, normalise=False)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Whitened, L2-normalised descriptors (n, dim) float32. A vector equal to the training
        mean has no direction and comes out as zeros."""
        return self._apply(X, normalise=True)

    def _apply(self, X: np.ndarray, normalise: bool) -> np.ndarray:
        mean, projection = self._fitted()
        X = _as_matrix(X, "vectors", width=mean.shape[0])
        return _map_rows(X, lambda block: (block - mean) @ projection.T, projection.shape[0],
                         dtype=np.float32 if normalise else np.float64, normalise=normalise)

    def params(self) -> dict[str, Any]:
        """The JSON-serialisable constructor arguments (what a pipeline spec stores)."""
        return {"dim": self.dim, "power": self.power, "shrinkage": self.shrinkage, "eps": self.eps}

    # --- persistence -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write ``mean``, ``projection``, ``components``, ``eigenvalues`` and ``params`` to
        ``path`` (.npz, float64 so a reload reproduces the output exactly)."""
        mean, projection = self._fitted()
        # fit() and load() set components_ and eigenvalues_ together with projection_
        assert self.components_ is not None and self.eigenvalues_ is not None
        _write_npz(path, {
            "kind": np.array(self.name), "format_version": np.array(FORMAT_VERSION),
            "params": np.array(json.dumps(self.params())), "mean": mean,
            "projection": projection, "components": self.components_,
            "eigenvalues": self.eigenvalues_,
        })

    @classmethod
    def load(cls, path: str | os.PathLike) -> PCAWhitening:
        """A fitted whitening read back from a file written by :meth:`save`."""
        arrays = read_npz(path, cls.name)
        try:
            model = cls(**json.loads(str(arrays["params"])))
            model.mean_, model.projection_ = arrays["mean"], arrays["projection"]
            model.components_, model.eigenvalues_ = arrays["components"], arrays["eigenvalues"]
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise WeightsError(f"whitening file {path} is incomplete or corrupt: {exc}") from None
        if model.projection_.ndim != 2 or model.projection_.shape[1] != model.mean_.shape[0]:
            raise WeightsError(f"whitening file {path} has inconsistent array shapes")
        return model

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        state = f", fitted {self.input_dim}->{self.output_dim}" if self.is_fitted else ""
        return f"PCAWhitening({args}{state})"


def _is_number(value: Any) -> bool:
    """A real number that is not a bool (True would otherwise pass as 1) and not NaN."""
    return isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)


def _bounded(value: Any, key: str, low: float, high: float) -> float:
    if not _is_number(value) or not low <= value <= high:
        raise ConfigError(f"whitening 'pcaw': {key} must be a number in [{low}, {high}], "
                          f"got {value!r}")
    return float(value)


def _principal_axes(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mean, eigenvalues (descending, ≥ 0), principal directions (rows) and trace of the sample
    covariance of ``X``. Uses the d×d covariance when n ≥ d; for n < d an SVD of the centred
    n×d data is cheaper and gives the same non-zero spectrum."""
    import scipy.linalg  # deferred: scipy.linalg costs 0.2 s to import and only fitting needs it

    n, d = X.shape
    mean = sum(block.sum(axis=0) for _, block in _chunks(X, "training vectors")) / n
    if n < d:
        centred = X.astype(np.float64) - mean
        _, singular, vt = scipy.linalg.svd(centred, full_matrices=False)
        eigenvalues, components = singular**2 / (n - 1), vt
    else:
        cov = np.zeros((d, d))
        for _, block in _chunks(X, "training vectors"):
            block -= mean
            cov += block.T @ block
        cov /= n - 1
        eigenvalues, vectors = scipy.linalg.eigh(cov)
        eigenvalues, components = eigenvalues[::-1], vectors[:, ::-1].T
    trace = float(eigenvalues.sum())  # = trace(C): the spectrum is complete in both branches
    return mean, np.clip(eigenvalues, 0.0, None), components, trace


class IdentityWhitening:
    """Whitening "none": no learned transform, rows are only L2-normalised.

    It has the same interface as :class:`PCAWhitening`. Fitting only records the input width
    (then :meth:`transform` checks it); an unfitted identity accepts any width, since there is
    nothing to learn.
    """

    name: ClassVar[str] = "none"

    def __init__(self) -> None:
        self.input_dim_: int | None = None

    def fit(self, X: np.ndarray) -> IdentityWhitening:
        """Record the width of ``X`` (n, d); returns ``self``."""
        self.input_dim_ = int(_as_matrix(X, "training vectors").shape[1])
        return self

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    def project(self, X: np.ndarray) -> np.ndarray:
        """``X`` as float64 (the identity's "whitened coordinates")."""
        X = _as_matrix(X, "vectors", width=self.input_dim_)
        return _map_rows(X, lambda block: block, X.shape[1])

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Rows of ``X`` L2-normalised, float32."""
        X = _as_matrix(X, "vectors", width=self.input_dim_)
        return _map_rows(X, lambda block: block, X.shape[1], dtype=np.float32, normalise=True)

    @property
    def output_dim(self) -> int:
        if self.input_dim_ is None:
            raise ConfigError("whitening 'none' has no output width until it is fitted")
        return self.input_dim_

    @property
    def is_fitted(self) -> bool:
        return self.input_dim_ is not None

    def params(self) -> dict[str, Any]:
        return {}

    def save(self, path: str | os.PathLike) -> None:
        """Write the kind and the recorded input width (-1 when unfitted) to ``path`` (.npz)."""
        width = -1 if self.input_dim_ is None else self.input_dim_
        _write_npz(path, {"kind": np.array(self.name), "format_version": np.array(FORMAT_VERSION),
                          "params": np.array("{}"), "input_dim": np.array(width)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> IdentityWhitening:
        arrays = read_npz(path, cls.name)
        model = cls()
        width = int(arrays.get("input_dim", -1))
        model.input_dim_ = None if width < 0 else width
        return model

    def __repr__(self) -> str:
        return f"IdentityWhitening(input_dim={self.input_dim_})"
