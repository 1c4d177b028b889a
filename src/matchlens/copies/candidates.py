"""Candidate pairs from the index's own kNN search, in batches: never an N×N matrix.

Each batch of ``batch`` stored vectors is searched for its ``k`` nearest neighbours (plus itself)
through ``search_vectors`` (the index backend: exact Flat, IVF, HNSW, ...), so memory is
``batch × (k + 1)`` results whatever the size of the collection, and time is what the backend
takes for N queries. A neighbour above the cosine floor gives the pair (min row, max row) once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from matchlens.components import positive_int
from matchlens.index.writer import ProgressFactory

__all__ = ["Candidates", "KnnSource", "candidate_pairs"]


class KnnSource(Protocol):
    """What the candidate search needs of an index (:class:`~matchlens.pipeline.Index` has it)."""

    @property
    def size(self) -> int: ...

    def vectors(self) -> np.ndarray: ...

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class Candidates:
    """Pairs ``a[i] < b[i]`` with their global cosine, and how the search went."""

    a: np.ndarray
    b: np.ndarray
    cosine: np.ndarray
    batches: list[int] = field(default_factory=list)  # rows searched per search_vectors call
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.a)


def candidate_pairs(index: KnnSource, k: int, floor: float, batch: int = 512,
                    progress: ProgressFactory | None = None) -> Candidates:
    """Every pair of rows where one is among the other's ``k`` nearest neighbours with cosine >= ``floor``."""
    k, batch = positive_int(k, "duplicates: k"), positive_int(batch, "duplicates: batch")
    start, n = time.perf_counter(), index.size
    vectors = index.vectors()
    advance = progress(n, "kNN pairs") if progress is not None and n else None
    found: dict[tuple[int, int], float] = {}
    sizes: list[int] = []
    for first in range(0, n, batch):
        rows = np.arange(first, min(first + batch, n))
        # +1: each row finds itself first (or ties with its exact copies)
        scores, hits = index.search_vectors(np.asarray(vectors[rows], dtype=np.float32), min(k + 1, n))
        sizes.append(len(rows))
        _collect(rows, scores, hits, floor, found)
        if advance is not None:
            advance(len(rows))
    return _as_candidates(found, sizes, time.perf_counter() - start)


def _collect(rows: np.ndarray, scores: np.ndarray, hits: np.ndarray, floor: float,
             found: dict[tuple[int, int], float]) -> None:
    """Add the batch's neighbours above ``floor`` (self and padding rows -1 left out)."""
    keep = (hits >= 0) & (scores >= floor) & (hits != rows[:, None])
    for i, j in zip(*np.nonzero(keep)):
        a, b = int(rows[i]), int(hits[i, j])
        key = (a, b) if a < b else (b, a)
        found[key] = max(found.get(key, -1.0), float(scores[i, j]))


def _as_candidates(found: dict[tuple[int, int], float], sizes: list[int], seconds: float) -> Candidates:
    pairs = sorted(found)
    a = np.array([p[0] for p in pairs], np.int64)
    b = np.array([p[1] for p in pairs], np.int64)
    cosine = np.array([found[p] for p in pairs], np.float32)
    return Candidates(a, b, cosine, sizes, seconds)
