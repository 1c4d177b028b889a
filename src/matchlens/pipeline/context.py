"""What re-rankers may use of an index (:class:`matchlens.rerank.RerankContext`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from matchlens.index.vectors import VectorIndex

__all__ = ["IndexContext"]


class IndexContext:
    """The re-ranking view of one generation: vectors, exact search, image paths, caches."""

    def __init__(self, index: VectorIndex) -> None:
        self.index = index

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
