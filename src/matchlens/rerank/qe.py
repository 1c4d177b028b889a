"""Query expansion: average query expansion (AQE) and α-weighted query expansion (αQE).

Both build an expanded query from the query and its top ``k`` shortlist vectors, then search the
whole collection again with it (exact search), so images that resemble the confident top results
but not the raw query can enter the shortlist.

- ``aqe``: q' = L2(q + Σ_{i≤k} d_i) (Chum et al. ICCV'07, averaged form).
- ``alpha_qe``: q' = L2(q + Σ_{i≤k} w_i d_i) with w_i = max(qᵀd_i, 0)^α (Radenović et al. TPAMI'18).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from matchlens.components import positive_float, positive_int
from matchlens.rerank.base import RERANKERS, QueryInput, Reranker, RerankContext, Shortlist

__all__ = ["AQE", "AlphaQE", "expanded_query"]


def expanded_query(query: np.ndarray, neighbours: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """L2(q + Σ w_i d_i) as a float32 vector; ``neighbours`` is (k, d), ``weights`` (k,)."""
    q = np.asarray(query, dtype=np.float64)
    expanded = q + np.asarray(weights, dtype=np.float64) @ np.asarray(neighbours, dtype=np.float64)
    norm = np.linalg.norm(expanded)
    # A zero sum (q cancelled by its neighbours) has no direction; fall back to the query itself.
    return (expanded / norm if norm > 0 else q).astype(np.float32)


class _QueryExpansion(Reranker):
    """Shared flow: weight the top ``k`` shortlist vectors, expand the query, search again."""

    def validate(self) -> None:
        self.check("k", positive_int)

    def weights(self, query: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
        """Weight of each neighbour row in the expanded query (override)."""
        raise NotImplementedError

    def rerank(self, query: QueryInput, shortlist: Shortlist, ctx: RerankContext) -> Shortlist:
        """A new exact search with the expanded query, as long as the input shortlist."""
        top = shortlist.rows[: self.config["k"]]
        top = top[top >= 0]  # FAISS pads short result lists with -1
        if len(shortlist) == 0 or len(top) == 0:
            return shortlist
        neighbours = np.asarray(ctx.vectors[top], dtype=np.float64)
        expanded = expanded_query(query.vector, neighbours, self.weights(query.vector, neighbours))
        scores, rows = ctx.search(expanded[None, :], len(shortlist))
        return Shortlist(rows[0], scores[0])


@RERANKERS.register("aqe")
class AQE(_QueryExpansion):
    """Average query expansion: the query plus its top ``k`` database vectors, all with weight 1."""

    defaults: ClassVar[dict[str, Any]] = {"k": 2}

    def weights(self, query: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
        return np.ones(len(neighbours))


@RERANKERS.register("alpha_qe")
class AlphaQE(_QueryExpansion):
    """α-weighted query expansion: neighbour i weighs max(qᵀd_i, 0)^α, so weak matches fade out."""

    defaults: ClassVar[dict[str, Any]] = {"k": 10, "alpha": 3.0}

    def validate(self) -> None:
        super().validate()
        self.check("alpha", positive_float)

    def weights(self, query: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
        # Similarities are recomputed from the vectors: shortlist scores may come from another
        # reranker (e.g. inlier counts from spatial verification) and are not cosines.
        similarity = neighbours @ np.asarray(query, dtype=np.float64)
        return np.maximum(similarity, 0.0) ** float(self.config["alpha"])
