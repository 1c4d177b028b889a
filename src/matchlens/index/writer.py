"""Publish a new generation of an index: data files, the backend's index, manifest, atomic commit.

The caller (:mod:`matchlens.pipeline.build`) decides what the vectors are; this module only
stores them, extending the previous backend index in place where that is possible.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np

from matchlens.errors import IndexError_
from matchlens.index import metadata, store
from matchlens.index.backends import Delta, VectorBackend, WriteJob, backend_from_dict
from matchlens.index.backends.base import Searcher
from matchlens.index.backends.faiss_backend import FaissBackend
from matchlens.index.metadata import Entry
from matchlens.index.vectors import DESCRIPTORS, META, VECTORS, VectorIndex
from matchlens.version import __version__

__all__ = ["ProgressFactory", "GenerationWriter", "complete_search", "write_generation"]

ProgressFactory = Callable[[int, str], Callable[[int], None]]
SCRATCH_EXACT_MAX = 100_000  # beyond, neighbour searches at build time go through the approximate backend


class GenerationWriter:
    """One write of ``root``: a temporary generation folder (:attr:`tmp`, where the caller may
    put extra files such as the whitening), published by :meth:`publish`; on any failure the
    folder is removed and the previous generation stays live."""

    def __init__(self, root: Path, backend: VectorBackend, previous: VectorIndex | None, rebuild: bool,
                 progress: ProgressFactory | None) -> None:
        self.root, self.backend, self.previous = root, backend, previous
        self.rebuild, self.progress = rebuild, progress
        self.tmp = store.new_generation_dir(root)
        self.backend_description = ""

    def __enter__(self) -> "GenerationWriter":
        return self

    def __exit__(self, kind, exc, tb) -> Literal[False]:
        if exc is None:
            return False
        shutil.rmtree(self.tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise IndexError_(f"could not write index '{self.root}': {reason}; the previous index is intact") from None
        return False

    def publish(self, raw: np.ndarray, vectors: np.ndarray, entries: list[Entry], fields: dict[str, Any],
                incremental: bool = True) -> VectorIndex:
        """Write ``raw``/``vectors`` (row-aligned with the indexed ``entries``), the backend's index
        (only the changes when ``incremental`` and the backend allows), and the manifest with
        ``fields``; commit atomically and return the new generation."""
        write_generation(self.tmp, raw, vectors, entries)
        indexed = [e for e in entries if e.row is not None]
        backend_entry = self._write_backend(vectors, indexed, incremental)
        manifest = {
            **fields,
            "counts": {"indexed": len(raw), "skipped": len(entries) - len(indexed)},
            "dim": int(vectors.shape[1]),
            "raw_dim": int(raw.shape[1]),
            "backend": backend_entry,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "matchlens_version": __version__,
        }
        generation = store.commit_generation(self.root, self.tmp, manifest)
        if self.previous is not None:
            self.previous.close()  # the writer's own read of it; other readers keep it alive
        store.remove_old_generations(self.root, keep=generation.path.name)
        with contextlib.suppress(Exception):  # cleanup of old Milvus collections is best-effort; the next write retries
            self.backend.after_commit(self.root, backend_entry["state"])
        return VectorIndex(self.root)

    def _write_backend(self, vectors: np.ndarray, indexed: list[Entry], incremental: bool) -> dict[str, Any]:
        ids = np.array([e.id for e in indexed], dtype=np.int64)
        job = WriteJob(root=self.root, tmp=self.tmp, vectors=vectors, ids=ids, progress=self.progress)
        before = self.previous
        previous = before.manifest.get("backend") if before is not None else None
        if before is not None and previous and not self.rebuild and \
                backend_from_dict(previous).build_key() == self.backend.build_key():
            job.previous_dir, job.previous_state = before.path, previous.get("state")
            job.delta = self._delta(indexed, vectors) if incremental else None
        state = self.backend.write(job)
        mode = state.get("mode", state.get("state", ""))
        if mode == "incremental":
            mode += f" (+{state.get('added', 0)} -{state.get('removed', 0)})"
        self.backend_description = f"{self.backend.describe()}: {mode}"
        return {**self.backend.to_dict(), "state": state}

    def _delta(self, indexed: list[Entry], vectors: np.ndarray) -> Delta | None:
        """What changed since the previous generation, or None when every vector must be rewritten
        (a refitted whitening moves every vector: checked on a sample of the unchanged images)."""
        assert self.previous is not None  # only called when there is a previous generation
        # Read afresh: the caller renumbers the rows of kept Entry objects in place.
        before = {e.id: e for e in metadata.read_entries(self.previous.path / META) if e.row is not None}
        same = [(e.row, before[e.id].row) for e in indexed
                if e.id in before and e.sha256 and before[e.id].sha256 == e.sha256]
        if same:
            picks = np.unique(np.linspace(0, len(same) - 1, min(64, len(same))).astype(int))
            new_rows = [same[i][0] for i in picks]
            old_rows = [same[i][1] for i in picks]
            if not np.array_equal(np.asarray(vectors[new_rows]), np.asarray(self.previous.vectors()[old_rows])):
                return None
        kept = {e.id for e in indexed if e.id in before and e.sha256 and before[e.id].sha256 == e.sha256}
        add_rows = np.array([e.row for e in indexed if e.id not in kept], dtype=np.int64)
        remove_ids = np.array(sorted(i for i in before if i not in kept), dtype=np.int64)
        return Delta(add_rows=add_rows, remove_ids=remove_ids)

    @contextlib.contextmanager
    def scratch_search(self, vectors: np.ndarray) -> Iterator[Callable | None]:
        """A kNN search over ``vectors`` for build-time neighbour lists (database-side
        augmentation): None (exact, the caller's own) up to SCRATCH_EXACT_MAX vectors or with an
        exact backend; beyond, a temporary index of the FAISS backend's own factory (exact kNN of
        a million vectors would take hours), completed exactly where it found too few."""
        if self.backend.exact or len(vectors) <= SCRATCH_EXACT_MAX or not isinstance(self.backend, FaissBackend):
            yield None
            return
        folder = self.tmp / ".dba-neighbours"
        folder.mkdir()
        try:
            rows = np.arange(len(vectors))
            state = self.backend.write(WriteJob(root=self.root, tmp=folder, vectors=vectors, ids=rows,
                                                progress=self.progress))
            searcher = Searcher(self.backend, self.backend.open(self.root, folder, state), rows, vectors)
            yield complete_search(searcher.search, vectors)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def complete_search(search: Callable, vectors: np.ndarray) -> Callable:
    """``search`` with rows it could not fill (-1, rare) completed by exact search of those queries."""
    def complete(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = search(queries, k)
        for i in np.nonzero((rows < 0).any(axis=1))[0]:
            sims = np.asarray(vectors @ queries[i], dtype=np.float32)  # one brute-force pass, streamed
            top = np.argsort(-sims, kind="stable")[:k]
            scores[i], rows[i] = sims[top], top
        return scores, rows

    return complete


def write_generation(tmp: Path, raw: np.ndarray, vectors: np.ndarray, entries: list[Entry]) -> None:
    """Write the data files of a generation into ``tmp`` (the manifest is written on commit)."""
    np.save(tmp / DESCRIPTORS, raw)
    np.save(tmp / VECTORS, np.ascontiguousarray(vectors, dtype=np.float32))
    metadata.write_entries(tmp / META, entries)
