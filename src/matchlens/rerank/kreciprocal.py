"""k-reciprocal re-ranking (Zhong et al., CVPR'17), restricted to the head of the shortlist.

The original method works on all query and gallery images; here it runs on the query and its
top ``k`` shortlist vectors only — an (k+1)×(k+1) problem, never N×N. With the defaults this is
exactly the reference code (zhunzhong07/person-re-ranking, ``re_ranking`` of
python-version/re_ranking_ranklist.py) called with the query as the probe set and the top ``k``
as the gallery (tests/test_reference_exact.py; docs/reference-exactness.md):

1. original distance d(a, b) = ‖a - b‖², each row then divided by its maximum over the
   (k+1) vectors (``norm="row_max"``, the reference's; ``norm="none"`` keeps d unscaled);
2. R(p, k1): the k-reciprocal neighbours of p — members of p's k1 nearest (itself included)
   that also have p among their own k1 nearest;
3. expansion: for each c in R(p, k1), R(c, round(k1/2)) is added when more than 2/3 of it
   already lies in R(p, k1);
4. encoding V_p[g] = exp(-d(p, g)) / Σ over the expanded set, 0 outside it;
5. local query expansion: V_p ← mean of V over p's k2 nearest (itself included);
6. Jaccard distance d_J(q, g) = 1 - Σ min(V_q, V_g) / Σ max(V_q, V_g);
7. final distance = (1 - λ)·d_J + λ·d.

``round(k1/2)`` rounds half to even, as the reference's Python code does; its MATLAB code
(evaluation/utils/re_ranking.m) takes round((k1+1)/2) - 1 others instead, which differs for odd
k1 (not for the default 20).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from matchlens.components import in_range, one_of, positive_int
from matchlens.rerank.base import RERANKERS, QueryInput, Reranker, RerankContext, Shortlist

__all__ = ["NORMS", "KReciprocal", "k_reciprocal_distance"]

NORMS = ("row_max", "none")  # row_max: the reference code's scaling of the original distance


@RERANKERS.register("kr")
class KReciprocal(Reranker):
    """Re-sort the top ``k`` of the shortlist by the k-reciprocal final distance.

    Scores of the re-sorted head are ``1 - final distance`` (1 for a perfect match, as a cosine
    would be). The rest of the input shortlist follows in its original order; its scores are
    shifted down by one constant where needed so the whole list stays non-increasing.
    """

    defaults: ClassVar[dict[str, Any]] = {"k": 100, "k1": 20, "k2": 6, "lambda_": 0.3, "norm": "row_max"}

    def validate(self) -> None:
        for key in ("k", "k1", "k2"):
            self.check(key, positive_int)
        self.check("lambda_", in_range, 0.0, 1.0)
        self.check("norm", one_of, NORMS)

    def rerank(self, query: QueryInput, shortlist: Shortlist, ctx: RerankContext) -> Shortlist:
        """The head re-sorted by final distance, then the tail unchanged."""
        head = shortlist.rows[: self.config["k"]]
        head = head[: int(np.count_nonzero(head >= 0))]  # FAISS pads short result lists with -1 at the end
        if len(head) < 2:
            return shortlist
        vectors = np.vstack([np.asarray(query.vector, dtype=np.float64)[None, :],
                             np.asarray(ctx.vectors[head], dtype=np.float64)])
        c = self.config
        distance = k_reciprocal_distance(vectors, c["k1"], c["k2"], float(c["lambda_"]), row_max=c["norm"] == "row_max")
        order = np.argsort(distance, kind="stable")
        head_scores = (1.0 - distance[order]).astype(np.float32)
        tail_rows, tail_scores = shortlist.rows[len(head):], shortlist.scores[len(head):]
        if len(tail_scores):
            tail_scores = tail_scores - max(0.0, float(tail_scores[0] - head_scores[-1]))
        return Shortlist(np.concatenate([head[order], tail_rows]), np.concatenate([head_scores, tail_scores]))


def k_reciprocal_distance(vectors: np.ndarray, k1: int, k2: int, lambda_: float, row_max: bool = True) -> np.ndarray:
    """Final distances from row 0 (the query) to rows 1.. of ``vectors`` ((m+1, d)).

    ``row_max``: divide each row of the squared distances by its maximum, as the reference code
    does (it changes the encoding weights and the λ term, not the neighbour ranks).
    """
    original = _squared_distances(vectors)
    if row_max:
        top = original.max(axis=1, keepdims=True)
        original = original / np.where(top > 0, top, 1.0)  # all-identical vectors: nothing to scale
    rank = _initial_rank(original)
    encoding = _local_expansion(_encoding(original, rank, k1), rank, k2)
    query = encoding[0]
    overlap = np.minimum(query, encoding[1:]).sum(axis=1)
    union = np.maximum(query, encoding[1:]).sum(axis=1)  # > 0: every set holds its own row
    jaccard = 1.0 - overlap / union
    return (1.0 - lambda_) * jaccard + lambda_ * original[0, 1:]


def _squared_distances(vectors: np.ndarray) -> np.ndarray:
    """‖a - b‖² of every pair of rows, clipped at 0 (rounding can make a duplicate's slightly negative)."""
    norms = np.einsum("ij,ij->i", vectors, vectors)
    return np.maximum(norms[:, None] + norms[None, :] - 2.0 * (vectors @ vectors.T), 0.0)


def _initial_rank(original: np.ndarray) -> np.ndarray:
    """Each row's neighbours, nearest first, with the row itself always first (duplicates tie at 0)."""
    keyed = original.copy()
    np.fill_diagonal(keyed, -1.0)
    return np.argsort(keyed, axis=1, kind="stable")


def _reciprocal(rank: np.ndarray, p: int, k: int) -> np.ndarray:
    """R(p, k): members of p's k+1 nearest (itself included) whose own k+1 nearest include p."""
    forward = rank[p, : k + 1]
    return forward[(rank[forward, : k + 1] == p).any(axis=1)]


def _encoding(original: np.ndarray, rank: np.ndarray, k1: int) -> np.ndarray:
    """V: each row's Gaussian-kernel weights over its expanded k-reciprocal set, summing to 1."""
    size = len(original)
    half = max(1, round(k1 / 2))
    half_sets = [_reciprocal(rank, c, half) for c in range(size)]
    encoding = np.zeros_like(original)
    for p in range(size):
        core = _reciprocal(rank, p, k1)
        # A candidate's smaller set joins only when it mostly agrees with p's set: this adds
        # positives hard to reach directly without letting in a whole foreign cluster.
        extra = [half_sets[c] for c in core if np.isin(half_sets[c], core).sum() > 2 / 3 * len(half_sets[c])]
        members = np.unique(np.concatenate([core, *extra]))
        weights = np.exp(-original[p, members])
        encoding[p, members] = weights / weights.sum()
    return encoding


def _local_expansion(encoding: np.ndarray, rank: np.ndarray, k2: int) -> np.ndarray:
    """Each row of V replaced by the mean over its k2 nearest rows (itself included)."""
    if k2 == 1:
        return encoding
    return encoding[rank[:, :k2]].mean(axis=1)
