"""What re-rankers may use of an index (:class:`matchlens.rerank.RerankContext`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from matchlens.fusion.expression import parse_fusion
from matchlens.index.vectors import VectorIndex
from matchlens.pipeline.sources import FusedRanking, stored_kinds
from matchlens.rerank import QueryInput, Shortlist

__all__ = ["IndexContext"]


class IndexContext:
    """The re-ranking view of one generation: vectors, exact search, image paths, caches, and the
    fused rankings of its stored kinds (``auto``'s ``fuse=auto``: :class:`matchlens.rerank.auto.FusingContext`)."""

    def __init__(self, index: VectorIndex) -> None:
        self.index = index
        self._fused: dict[str, FusedRanking] = {}  # one per fusion expression: its kinds are opened once
        self._vector: np.ndarray | None = None

    def stored_kinds(self) -> dict[str, str]:
        """Name → type of the classic kinds stored with the index."""
        return stored_kinds(self.index)

    def _current_vector(self, source: object, box: object) -> np.ndarray:
        """The cnn part of a fused ranking: the vector of the query being re-ranked."""
        assert self._vector is not None  # set by fused_shortlist before ranking
        return self._vector

    def fused_shortlist(self, query: QueryInput, fusion: str, depth: int) -> Shortlist:
        """The query ranked by ``fusion``; its cnn part is ``query.vector`` (e.g. an expanded
        query), the kinds describe ``query.image``."""
        if fusion not in self._fused:
            self._fused[fusion] = FusedRanking(self.index, parse_fusion(fusion), self._current_vector)
        self._vector = query.vector
        return self._fused[fusion].rank(query.image, None, depth)

    @property
    def vectors(self) -> np.ndarray:
        """(N, d) searchable vectors, row-aligned with shortlist rows."""
        return self.index.vectors()

    @property
    def generation(self) -> str:
        """Name of the index generation (caches derived from the vectors are keyed by it)."""
        return self.index.generation

    @property
    def approximate(self) -> bool:
        """True when :meth:`search` is approximate (a trained IVF/HNSW/Milvus backend)."""
        return self.index.approximate

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batched search of the index: (scores, rows)."""
        return self.index.search_vectors(vectors, k)

    def image_path(self, row: int) -> str:
        """Absolute path of the image at ``row``."""
        return self.index.entry_for_row(row).path

    def image_sha256(self, row: int) -> str:
        """Content hash of the image at ``row``."""
        return self.index.entry_for_row(row).sha256

    def cache_dir(self, kind: str) -> Path | None:
        """A writable folder for a re-ranker's caches, or None when the index is read-only."""
        return self.index.cache_dir(kind)
