"""Where a ranking comes from: the index's global vectors, a stored classic kind, or a late
fusion of several (see :mod:`matchlens.fusion.expression` for how a fusion is written and made).

Each kind offers: prepare the query once, a shortlist of the best rows, exact scores of any rows.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np

from matchlens.fusion.expression import CNN, FusionSpec
from matchlens.fusion.normalise import normalise
from matchlens.index.vectors import VectorIndex
from matchlens.rerank import Shortlist

__all__ = ["FusedRanking", "KindRanker", "stored_kinds"]

VectorOf = Callable[[Any, Sequence[float] | None], np.ndarray]


class KindRanker(Protocol):
    """One descriptor kind's view of a query."""

    def prepare(self, query: Any, box: Sequence[float] | None) -> Any:
        """Everything about the query this kind needs (computed once)."""

    def shortlist(self, state: Any, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the best ``depth`` images, best first."""

    def score_rows(self, state: Any, rows: np.ndarray) -> np.ndarray:
        """Exact scores of ``rows``."""


class GlobalRanker:
    """The index's own global descriptor (``cnn``)."""

    def __init__(self, index: VectorIndex, vector_of: VectorOf) -> None:
        self.index, self.vector_of = index, vector_of

    def prepare(self, query: Any, box: Sequence[float] | None) -> np.ndarray:
        return self.vector_of(query, box)

    def shortlist(self, vector: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search_vectors(vector[None, :], depth)
        found = Shortlist(rows[0], scores[0]).valid()
        return found.rows, found.scores

    def score_rows(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.vectors()[rows], np.float32) @ vector if len(rows) else np.zeros(0, np.float32)


class ClassicRanker:
    """A stored classic kind: scores of every image come out of its inverted file at once."""

    def __init__(self, kind: Any) -> None:
        self.kind = kind

    def prepare(self, query: Any, box: Sequence[float] | None) -> np.ndarray:
        return self.kind.scores(self.kind.query_code(query, box))

    def shortlist(self, scores: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        depth = min(depth, len(scores))
        top = np.argpartition(-scores, depth - 1)[:depth] if depth < len(scores) else np.arange(len(scores))
        order = top[np.lexsort((top, -scores[top]))]  # best first, ties by row
        return order.astype(np.int64), scores[order]

    def score_rows(self, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return scores[rows]


class FusedRanking:
    """Rank by one kind or a fusion of kinds.

    For one query: every kind keeps its top ``depth`` (its shortlist); the candidates are the
    union, scored exactly by every kind, normalised (``norm``) and fused (``operator``), ranked by
    fused score; the images outside the union follow in the first kind's order, below every
    candidate. The head of the ranking does not depend on how many results are asked for."""

    def __init__(self, index: VectorIndex, fusion: FusionSpec, vector_of: VectorOf, refresh: bool = True,
                 progress: Any = None) -> None:
        from matchlens.classic import open_kind  # deferred: SciPy and OpenCV load only for --kind/--fuse
        import matchlens.regional  # noqa: F401  (registers the regional kind with the classic kinds)
        import matchlens.ensemble  # noqa: F401  (registers the ensemble kind with the classic kinds)

        self.index, self.fusion = index, fusion
        self.rankers: list[KindRanker] = [
            GlobalRanker(index, vector_of) if name == CNN else ClassicRanker(open_kind(index, name, refresh, progress))
            for name in fusion.kinds]

    def describe(self, cnn: str) -> str:
        """Which kinds and how they are fused (``cnn`` describes the global descriptor)."""
        if self.fusion.kinds == [CNN]:
            return cnn
        return self.fusion.describe() + (f"; cnn = {cnn}" if CNN in self.fusion.kinds else "")

    def rank(self, query: Any, box: Sequence[float] | None, depth: int) -> Shortlist:
        """At least ``depth`` entries (all images at most), best first."""
        depth = max(1, depth)
        if self.fusion.operator is None:
            ranker = self.rankers[0]
            rows, scores = ranker.shortlist(ranker.prepare(query, box), min(depth, self.index.size))
            return Shortlist(rows, scores)
        return self._fused(query, box, depth)

    def _fused(self, query: Any, box: Sequence[float] | None, depth: int) -> Shortlist:
        size = self.index.size
        states = [r.prepare(query, box) for r in self.rankers]
        lists = [r.shortlist(s, min(self.fusion.depth, size)) for r, s in zip(self.rankers, states)]
        candidates = np.unique(np.concatenate([rows for rows, _ in lists]))
        matrix = np.stack([normalise(r.score_rows(s, candidates), self.fusion.norm)
                           for r, s in zip(self.rankers, states)])
        operator = self.fusion.operator
        assert operator is not None  # a single kind is ranked by rank() without fusing
        fused = operator.fuse(matrix, self.fusion.weights)
        order = np.lexsort((candidates, -fused))
        rows, scores = candidates[order], fused[order]
        if depth <= len(rows):
            return Shortlist(rows, scores)
        # The rest follows in the first kind's order, below every candidate, strictly decreasing.
        primary, _ = self.rankers[0].shortlist(states[0], min(size, depth + len(rows)))
        tail = primary[~np.isin(primary, candidates)][: depth - len(rows)]
        floor = (scores.min() if len(scores) else 0.0) - 1.0
        tail_scores = floor + 0.5 / (1.0 + np.arange(len(tail)))
        return Shortlist(np.concatenate([rows, tail]), np.concatenate([scores, tail_scores]))


def stored_kinds(index: VectorIndex) -> dict[str, str]:
    """Name → type of every classic kind stored with ``index``."""
    from matchlens.classic import list_kinds  # deferred: SciPy and OpenCV load only for --kind/--fuse

    return {info.name: info.type for info in list_kinds(index)}
