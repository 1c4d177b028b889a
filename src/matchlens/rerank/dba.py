"""Database-side augmentation (DBA): replace every database vector by a weighted mean of its neighbours.

DBA runs once at index time (it rewrites the stored vectors), not per query, so it is a plain
function rather than a :class:`~matchlens.rerank.base.Reranker`. For row j with neighbours
j(0) = j, j(1), ..., j(k) (by inner product, best first):

    d_j' = L2(Σ_{i=0..k} w_i d_{j(i)})

with either the linear weights w_i = (k - i) / k — so w_0 = 1 (the vector itself) and
w_k = 0: the k-th neighbour is searched for but contributes nothing, as in the published
formulation — or, when ``alpha`` is given, w_i = max(d_jᵀd_{j(i)}, 0)^alpha.

Neighbours come from an exact FAISS inner-product index queried ``batch`` rows at a time, so
memory stays O(N·d + batch·k·d) and no N×N matrix is ever built.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from matchlens.components import Component, optional, positive_float, positive_int
from matchlens.linalg import l2_normalize

__all__ = ["DBAParams", "DBA_DEFAULTS", "dba_vectors", "validate_dba_params"]


class DBAParams(Component):
    """DBA's parameters: ``k`` neighbours (an integer >= 1), ``alpha`` (None: linear weights, or a number > 0)."""

    kind: ClassVar[str] = "dba"
    defaults: ClassVar[dict[str, Any]] = {"k": 3, "alpha": None}

    def validate(self) -> None:
        self.check("k", positive_int)
        self.check("alpha", optional, positive_float)


DBA_DEFAULTS: dict[str, Any] = DBAParams.defaults


def validate_dba_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` over :data:`DBA_DEFAULTS`, checked: k an integer >= 1, alpha None or a number > 0."""
    return DBAParams(**params).params()


def dba_vectors(vectors: np.ndarray, k: int = 3, alpha: float | None = None, batch: int = 4096,
                search=None) -> np.ndarray:
    """The (N, d) float32 DBA-augmented, L2-normalised copy of ``vectors`` (see the module docstring).

    ``search``: ``(queries, k) -> (scores, rows)`` over ``vectors`` returning k valid rows per
    query (an approximate index at scale, where exact neighbours of every row cost O(N²·d));
    default: exact FAISS ``IndexFlatIP``."""
    validate_dba_params({"k": k, "alpha": alpha})
    positive_int(batch, "dba: batch")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"dba needs an (N, d) array, got shape {x.shape}")
    out = np.empty_like(x)
    if len(x) == 0:
        return out
    if search is None:
        import faiss  # deferred: importing the rerank package must not load FAISS

        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        search = index.search
    depth = min(k + 1, len(x))  # fewer rows than k + 1: every row is a neighbour
    for start in range(0, len(x), batch):
        own = np.arange(start, min(start + batch, len(x)))
        _, found = search(x[own], depth)
        neighbours = x[_self_first(found, own)]  # (b, depth, d)
        weights = _weights(x[own], neighbours, k, alpha)
        out[own] = l2_normalize(np.einsum("bi,bid->bd", weights, neighbours))
    return out


def _self_first(found: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Neighbour lists with each row itself at position 0.

    Exact duplicates tie with the row itself, so FAISS may list the row second or not at all;
    the row is moved (or inserted, dropping the last neighbour) to the front.
    """
    is_self = found == own[:, None]
    keep = ~is_self
    keep[~is_self.any(axis=1), -1] = False  # rows where self is missing: make room for it
    others = found[keep].reshape(len(found), found.shape[1] - 1)
    return np.concatenate([own[:, None], others], axis=1)


def _weights(rows: np.ndarray, neighbours: np.ndarray, k: int, alpha: float | None) -> np.ndarray:
    """(b, depth) weights: linear (k - i) / k, or max(similarity, 0)^alpha."""
    if alpha is None:
        linear = (k - np.arange(neighbours.shape[1], dtype=np.float32)) / k
        return np.broadcast_to(linear, neighbours.shape[:2])
    similarity = np.einsum("bd,bid->bi", rows, neighbours)
    return np.maximum(similarity, 0.0) ** np.float32(alpha)
