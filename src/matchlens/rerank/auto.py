"""``auto``: spatially verified query expansion that adapts to each query (after Chum et al. ICCV'07).

Fixed chains help one collection and hurt another: ``alpha_qe:k=10`` adds ten neighbours to every
query, right or wrong, which pulls a query whose object has two other views towards unrelated
images. Chum et al.'s average query expansion expands only with *verified* images. So:

1. verify the top ``k`` of the shortlist by local-feature geometry (:mod:`matchlens.rerank.spatial`);
   an image with at least ``min_inliers`` inliers is verified;
2. if any verified image has at least ``expand_inliers`` inliers (default: ``min_inliers``), the
   query is expanded with all of them — q' = L2(q + Σ d_v), the average form; the number comes
   from the verification, never a constant — and the collection is searched again;
3. ``order=blend`` (default): every image is scored by its cosine to the expanded query plus
   ``bonus`` × min(inliers, ``cap``) / ``cap`` when verified, so verification lifts an image
   without letting a chance geometric match (a few dozen inliers on a repetitive texture) jump
   over images the descriptors are sure of; ``order=verified``: Chum's order, verified images
   first by inliers, then the expanded ranking;
4. with ``rounds`` > 1 the top ``k_next`` images of the expanded ranking that were not verified
   yet are verified in turn and the expansion is redone (a bounded transitive closure).

A query with no verified neighbour keeps its global ranking unchanged: ``auto`` falls back to
plain search, which is what protects collections where expansion hurts. The defaults were
chosen on oxford5k_subset, ukbench_subset and the demo collection (see the README's re-ranking
table): they are not tuned on held-out data.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from matchlens.components import non_negative_float, non_negative_int, one_of, positive_int
from matchlens.rerank.base import RERANKERS, QueryInput, Reranker, RerankContext, Shortlist
from matchlens.rerank.qe import expanded_query
from matchlens.rerank.spatial import SpatialVerification

__all__ = ["AutoRerank"]


@RERANKERS.register("auto")
class AutoRerank(Reranker):
    """Verified average query expansion; see the module docstring.

    Parameters: ``k`` (shortlist entries verified first), ``min_inliers`` (inliers that make an
    image verified), ``expand_inliers`` (inliers that make a verified image join the expanded
    query; 0: the same as ``min_inliers``), ``rounds`` (verification rounds), ``k_next`` (images
    verified in each later round), ``max_keypoints`` (RootSIFT features per image), ``order``
    (``blend`` or ``verified``), ``bonus`` and ``cap`` (the blend's lift for a verified image).
    After :meth:`rerank`, ``last_expansion`` holds the rows the query was expanded with.
    """

    needs_image = True
    defaults: ClassVar[dict[str, Any]] = {"k": 100, "min_inliers": 12, "expand_inliers": 0, "rounds": 1,
                                          "k_next": 20, "max_keypoints": 1000, "order": "blend", "bonus": 0.3,
                                          "cap": 100}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.verifier = SpatialVerification(k=self.config["k"], min_inliers=self.config["min_inliers"],
                                            max_keypoints=self.config["max_keypoints"])
        self.last_expansion: list[int] = []

    def validate(self) -> None:
        """One-line ConfigError for any parameter out of range."""
        for key in ("k", "min_inliers", "rounds", "k_next", "max_keypoints"):
            self.check(key, positive_int)
        self.check("expand_inliers", non_negative_int)
        self.check("order", one_of, ("verified", "blend"))
        self.check("bonus", non_negative_float)
        self.check("cap", positive_int)

    def rerank(self, query: QueryInput, shortlist: Shortlist, ctx: RerankContext) -> Shortlist:
        """The ranking of the query expanded with its verified images (see ``order``); the
        shortlist unchanged when nothing verifies or the query has no image."""
        self.last_expansion = []
        self.verifier.rerank(query, shortlist, ctx)  # only its inlier counts are used
        inliers = dict(self.verifier.last_inliers)
        if query.image is None:
            return shortlist
        result = self._expanded(query, shortlist, inliers, ctx)
        for _ in range(self.config["rounds"] - 1):
            fresh = [int(r) for r in result.rows if int(r) not in inliers][: self.config["k_next"]]
            if not fresh or not self._expansion_rows(inliers):
                break
            # Only the inlier counts of this verification are used, not its ordering.
            self.verifier.rerank(query, Shortlist(np.array(fresh), np.zeros(len(fresh))), ctx)
            inliers.update(self.verifier.last_inliers)
            result = self._expanded(query, shortlist, inliers, ctx)
        return result

    def _expansion_rows(self, inliers: dict[int, int]) -> list[int]:
        threshold = self.config["expand_inliers"] or self.config["min_inliers"]
        return [row for row, count in inliers.items() if count >= threshold]

    def _expanded(self, query: QueryInput, shortlist: Shortlist, inliers: dict[int, int],
                  ctx: RerankContext) -> Shortlist:
        """Verified rows (most inliers first) followed by the expanded query's ranking."""
        good = sorted((row for row, n in inliers.items() if n >= self.config["min_inliers"]),
                      key=lambda row: -inliers[row])
        expand = self._expansion_rows(inliers)
        if not good:
            return shortlist
        if expand:
            neighbours = np.asarray(ctx.vectors[np.array(sorted(expand))], dtype=np.float64)
            vector = expanded_query(query.vector, neighbours, np.ones(len(neighbours)))
            scores, rows = ctx.search(vector[None, :], max(len(shortlist), len(good)))
            rest = Shortlist(rows[0], scores[0]).valid()
            self.last_expansion = sorted(expand)
        else:
            rest = shortlist
        if self.config["order"] == "blend":
            return self._blend(rest, inliers)
        top = float(max(1.0, float(rest.scores.max()) if len(rest) else 1.0))
        head_scores = np.array([top + inliers[row] / 1000.0 for row in good], dtype=np.float32)
        taken = set(good)
        keep = np.array([int(r) not in taken for r in rest.rows], dtype=bool)
        return Shortlist(np.concatenate([np.array(good, dtype=np.int64), rest.rows[keep]]),
                         np.concatenate([head_scores, rest.scores[keep]]))

    def _blend(self, ranking: Shortlist, inliers: dict[int, int]) -> Shortlist:
        """Expanded-query cosine plus ``bonus`` × min(inliers, cap) / cap for verified images."""
        bonus = np.array([self.config["bonus"] * min(inliers.get(int(r), 0), self.config["cap"]) / self.config["cap"]
                          if inliers.get(int(r), 0) >= self.config["min_inliers"] else 0.0 for r in ranking.rows])
        scores = ranking.scores.astype(np.float64) + bonus
        order = np.argsort(-scores, kind="stable")
        return Shortlist(ranking.rows[order], scores[order].astype(np.float32))
