"""Ensembles of two (or more) pipelines (P4): each network's descriptor L2-normalised and weighted,
the parts concatenated, then PCA(-whitened) to one compact vector.

:mod:`matchlens.fusion` fuses the *scores* of an index's descriptor kinds at search time; an
ensemble instead learns one *vector* space, so an index, DBA, diffusion and every vector
re-ranker run on it unchanged. The concatenation with weights ``w_i`` (``√w_i`` per part) makes
the raw inner product the weighted sum of the parts' cosine similarities; the PCA is
:class:`matchlens.whitening.PCAWhitening`, fitted on the collection's ensemble vectors (no labels).

This is the maths shared by the ``ensemble`` descriptor kind (:mod:`matchlens.ensemble.kind`),
:mod:`matchlens.train.ensemble` and ``benchmarks/p4grid.py``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from matchlens.errors import ConfigError
from matchlens.linalg import l2_normalize
from matchlens.whitening import PCAWhitening

__all__ = ["Ensemble", "concatenate"]


def concatenate(parts: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Rows of ``parts`` (each (n, d_i), one per pipeline, same images in the same order),
    each L2-normalised and scaled by √w_i, concatenated and L2-normalised: (n, Σ d_i) float32."""
    if len(parts) < 2:
        raise ConfigError("an ensemble needs the descriptors of at least two pipelines")
    weights = [1.0] * len(parts) if weights is None else list(weights)
    if len(weights) != len(parts) or any(not np.isfinite(w) or w <= 0 for w in weights):
        raise ConfigError(f"ensemble weights must be one positive number per pipeline, got {weights}")
    rows = {len(p) for p in parts}
    if len(rows) != 1:
        raise ConfigError(f"the pipelines described different numbers of images: {sorted(rows)}")
    scaled = [np.sqrt(w) * l2_normalize(np.asarray(p, np.float32)) for p, w in zip(parts, weights)]
    return l2_normalize(np.concatenate(scaled, axis=1)).astype(np.float32)


class Ensemble:
    """Concatenate then PCA: ``fit`` on the collection's descriptors of every pipeline,
    ``transform`` any images' (database or queries) into the ensemble's ``dim``-d space."""

    def __init__(self, dim: int | None = None, power: float = 0.5, weights: Sequence[float] | None = None) -> None:
        self.weights = None if weights is None else list(weights)
        self.pca = PCAWhitening(dim=dim, power=power)

    def fit(self, parts: Sequence[np.ndarray]) -> "Ensemble":
        """Learn the PCA on the concatenated descriptors."""
        self.pca.fit(concatenate(parts, self.weights))
        return self

    def transform(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """(n, dim) L2-normalised ensemble vectors."""
        return self.pca.transform(concatenate(parts, self.weights))

    def state(self) -> dict[str, np.ndarray]:
        """The fitted PCA as plain arrays (float64: reloading reproduces :meth:`transform` exactly)."""
        mean, projection = self.pca.mean_, self.pca.projection_
        if mean is None or projection is None:
            raise ConfigError("the ensemble is not fitted: call fit() first")
        return {"mean": np.asarray(mean, np.float64), "projection": np.asarray(projection, np.float64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], power: float = 0.5,
                   weights: Sequence[float] | None = None) -> "Ensemble":
        """An ensemble whose PCA is ``state`` (what :meth:`state` returned)."""
        projection = np.asarray(state["projection"], np.float64)
        ensemble = cls(int(projection.shape[0]), power, weights)
        ensemble.pca.mean_ = np.asarray(state["mean"], np.float64)
        ensemble.pca.projection_ = projection
        return ensemble
