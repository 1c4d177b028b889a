"""One generation of an index directory, opened read-only: metadata, vectors and their search.

This is all the index layer knows: rows of vectors with their images' metadata, searched
through the generation's backend (exact FAISS ``Flat`` is a backend like IVF-PQ, HNSW or
Milvus). What the vectors mean — extraction, whitening, augmentation, re-ranking — lives in
:mod:`matchlens.pipeline`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from matchlens.config import PipelineSpec
from matchlens.errors import IndexError_, MatchlensError
from matchlens.index import metadata, store
from matchlens.index.backends import VectorBackend, backend_from_dict
from matchlens.index.backends.base import Searcher, open_searcher
from matchlens.index.metadata import Entry

__all__ = ["DESCRIPTORS", "META", "VECTORS", "WHITENING", "MODEL_DIR", "VectorIndex"]

DESCRIPTORS = "descriptors.npy"
VECTORS = "vectors.npy"
WHITENING = "whitening.npz"
META = "meta.sqlite"
MODEL_DIR = "model"  # the index's exported query network (outside the generations: it depends on the spec only)


class VectorIndex:
    """An opened, read-only view of one generation; writers publish a new generation and an
    open ``VectorIndex`` keeps reading the one it opened."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self._gen, self._reader = store.open_generation(self.root)
        try:
            self.spec = PipelineSpec.from_dict(self._gen.manifest["spec"])
        except (KeyError, TypeError, MatchlensError) as exc:
            raise IndexError_(f"index '{root}' has an invalid pipeline spec in its manifest: {exc}") from None
        self.entries = metadata.read_entries(self._gen.path / META)
        self._vectors = np.load(self._gen.path / VECTORS, mmap_mode="r")
        indexed = [e for e in self.entries if e.status == "indexed"]
        if len(indexed) != self._vectors.shape[0]:
            raise IndexError_(f"index '{root}' is corrupt: {len(indexed)} images but {self._vectors.shape[0]} vectors")
        self._row_entry = {e.row: e for e in indexed}
        self._backend: VectorBackend | None = None
        self._searcher: Searcher | None = None

    def close(self) -> None:
        """Release the generation (writers may then delete it once superseded); idempotent.
        Also done when the object is garbage-collected or the process ends."""
        if self._reader is not None:
            self._reader.release()

    def __enter__(self) -> "VectorIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def manifest(self) -> dict[str, Any]:
        """The generation's manifest (spec, counts, files, whitening state, backend)."""
        return self._gen.manifest

    @property
    def generation(self) -> str:
        """Name of the generation this object reads."""
        return self._gen.path.name

    @property
    def path(self) -> Path:
        """The generation's folder."""
        return self._gen.path

    @property
    def size(self) -> int:
        """Number of searchable images."""
        return int(self._vectors.shape[0])

    @property
    def dim(self) -> int:
        """Width of the searchable vectors."""
        return int(self._vectors.shape[1])

    def skipped(self) -> list[Entry]:
        """Files that could not be indexed, with their reasons."""
        return [e for e in self.entries if e.status == "skipped"]

    def vectors(self) -> np.ndarray:
        """The searchable vectors (n, d), row i ↔ :meth:`entry_for_row` (memory-mapped)."""
        return self._vectors

    def descriptors(self) -> np.ndarray:
        """The raw (pre-whitening, pre-augmentation) descriptors, row-aligned (memory-mapped)."""
        return np.load(self._gen.path / DESCRIPTORS, mmap_mode="r")

    def entry_for_row(self, row: int) -> Entry:
        """Metadata of the image stored at vector row ``row``."""
        return self._row_entry[row]

    def whitening_file(self) -> Path | None:
        """The fitted whitening of this generation, or None when vectors are not whitened."""
        return self._gen.path / WHITENING if self.manifest.get("whitening_state") == "fitted" else None

    def model_dir(self) -> Path:
        """Where the index keeps the exported query network (may not exist)."""
        return self.root / MODEL_DIR

    def verify(self) -> list[str]:
        """Names of the generation's files whose checksum differs from the manifest."""
        return store.verify_checksums(self._gen)

    @property
    def backend(self) -> VectorBackend:
        """The generation's vector backend; search-time parameters can be changed on it:
        ``index.backend.configure(nprobe=64)``."""
        if self._backend is None:
            self._backend = backend_from_dict(self.manifest.get("backend"))
        return self._backend

    @property
    def approximate(self) -> bool:
        """True when searches go through an approximate (trained) backend index."""
        state = (self.manifest.get("backend") or {}).get("state", {})
        return not self.backend.exact and state.get("state") == "trained"

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batched inner-product search: (scores, rows), each (n, min(k, size)), best first.

        An approximate backend may return fewer than k results, padded with row -1 (score -inf)."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise IndexError_(f"query vectors have width {vectors.shape[-1]} but index '{self.root}' has {self.dim}")
        if k < 1:
            raise MatchlensError(f"k must be at least 1, got {k}")
        k = min(k, self.size)
        if k == 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        return self._open_searcher().search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def _open_searcher(self) -> Searcher:
        if self._searcher is None:
            ids = np.array([self._row_entry[r].id for r in range(self.size)], dtype=np.int64)
            state = (self.manifest.get("backend") or {}).get("state", {})
            self._searcher = open_searcher(self.backend, self.root, self._gen.path, state, self._vectors, ids)
        return self._searcher

    def cache_dir(self, kind: str) -> Path | None:
        """``DIR/cache/KIND`` (outside the generations, so caches survive re-indexing); None if read-only."""
        folder = self.root / "cache" / kind
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return folder if os.access(folder, os.W_OK) else None
