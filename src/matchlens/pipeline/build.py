"""Build, add, remove, augment: turn image files into a new generation of an index.

One write gathers descriptors (memory of the current generation → journal of an interrupted
build → extraction), fits or reuses the whitening, applies database-side augmentation, and hands
the vectors to :class:`matchlens.index.writer.GenerationWriter`, which stores and publishes them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from matchlens.config import PipelineSpec
from matchlens.errors import IndexError_, MatchlensError, SourceError
from matchlens.extract import Extractor, write_query_model
from matchlens.index import store
from matchlens.index.backends import VectorBackend, backend_from_dict
from matchlens.index.journal import Journal
from matchlens.index.metadata import Entry
from matchlens.index.vectors import WHITENING, VectorIndex
from matchlens.index.writer import GenerationWriter, ProgressFactory
from matchlens.io.collection import scan_source
from matchlens.rerank.dba import dba_vectors, validate_dba_params
from matchlens.whitening import PCAWhitening
from matchlens.whitening.learned import lw_from_checkpoint

__all__ = ["KEEP", "BuildReport", "Builder", "Interrupted", "is_own_file", "is_under", "open_if_exists"]

KEEP = object()  # a writer argument meaning "leave this setting as the current generation has it"
_OWN_FILES = {".lock", "journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm", "milvus.db", "milvus-pending",
              "model", "cache"}


class Interrupted(MatchlensError):
    """A build stopped by the user; finished work is kept in the journal."""

    exit_code = 130


@dataclass
class BuildReport:
    """What a build, add or remove did."""

    indexed: int = 0
    skipped: int = 0
    computed: int = 0
    reused: int = 0
    removed: int = 0
    seconds: float = 0.0
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    whitening: str = "none"
    backend: str = ""  # e.g. "faiss IVF1024,PQ64: incremental (+10 -0)"


class Builder:
    """One write of ``root``: call :meth:`run` under the index's writer lock."""

    def __init__(self, root: Path, spec: PipelineSpec, current: VectorIndex | None, rebuild: bool = False,
                 progress: ProgressFactory | None = None, refit: bool = True, dba: Any = KEEP, backend: Any = KEEP,
                 dask: str | None = None) -> None:
        self.root, self.current, self.progress, self.refit = root, current, progress, refit
        self.rebuild, self.dask = rebuild, dask
        self.backend = chosen_backend(backend, current)
        # Database-side augmentation: kept from the current generation unless given (None = off).
        self.dba = (current.manifest.get("dba") if current else None) if dba is KEEP else checked_dba(dba)
        self._extractor = None
        self.spec = spec
        if current is not None and not rebuild:
            check_weights(current, spec)
            check_spec(current, spec)
            self.spec = current.spec if not spec.weights_id else spec
        if not self.spec.weights_id:
            _ = self.extractor  # loading it resolves the weights id, needed by every fingerprint below
        self._cache = self._current_descriptors() if current is not None else {}
        self.backend.check_dim(self._searchable_dim())

    @property
    def extractor(self):
        """The extractor of the spec (loaded on first use; it resolves the weights id)."""
        if self._extractor is None:
            self._extractor = Extractor(self.spec)
            self.spec = self._extractor.spec
        return self._extractor

    def _current_descriptors(self) -> dict[str, tuple[Entry, np.ndarray | None]]:
        cur = self.current
        assert cur is not None  # called only when updating an existing index
        if cur.spec.raw_fingerprint() != self.spec.raw_fingerprint():
            return {}
        raw = cur.descriptors()
        return {e.path: (e, None if e.row is None else np.array(raw[e.row])) for e in cur.entries}

    def run(self, paths: Sequence[str], keep: list[Entry]) -> tuple[VectorIndex, BuildReport]:
        """Index ``paths`` (extracted or reused) plus the ``keep`` entries of the current
        generation, publish the new generation and say what was done."""
        start = time.monotonic()
        report = BuildReport()
        journal = Journal(self.root, self.spec.raw_fingerprint())
        try:
            items = self._gather(list(paths), journal, report)
        finally:
            journal.close()
        keep_raw = [(e, self._cache.get(e.path, (e, None))[1]) for e in keep]
        if any(e.status == "indexed" and v is None for e, v in keep_raw):
            keep_raw = self._reload_kept(keep)
        if paths and all(v is None for _, v in items):
            names = "; ".join(e.error or e.path for e, _ in items[:3])
            raise SourceError(f"no image could be indexed ({len(items)} files skipped: {names})")
        index = self._publish(self._assign_ids(keep_raw + items), report)
        Journal(self.root, self.spec.raw_fingerprint()).clear()
        if self._extractor is not None:  # the network is loaded: keep its export for fast queries
            write_query_model(self.spec, index.model_dir(), backbone=self._extractor.backbone)
        report.indexed = index.size
        report.skipped = len(index.skipped())
        report.skipped_files = [(e.path, e.error or "") for e in index.skipped()]
        report.seconds = time.monotonic() - start
        return index, report

    def _reload_kept(self, keep: list[Entry]) -> list[tuple[Entry, np.ndarray | None]]:
        assert self.current is not None  # kept entries come from the current generation
        raw = self.current.descriptors()
        return [(e, None if e.row is None else np.array(raw[e.row])) for e in keep]

    def _gather(self, paths: list[str], journal: Journal, report: BuildReport) -> list[tuple[Entry, np.ndarray | None]]:
        done: dict[str, tuple[Entry, np.ndarray | None]] = {}
        todo: list[str] = []
        for path in paths:
            hit = self._lookup(path, journal)
            if hit is not None:
                done[path] = hit
                report.reused += 1
            else:
                todo.append(path)
        if todo:
            self._extract(todo, journal, done, report)
        return [done[p] for p in paths]

    def _lookup(self, path: str, journal: Journal) -> tuple[Entry, np.ndarray | None] | None:
        try:
            stat = os.stat(path)
        except OSError:
            return None  # the extractor reports the reason
        cached = self._cache.get(path)
        if cached and cached[0].size == stat.st_size and cached[0].mtime == stat.st_mtime:
            return cached
        hit = journal.lookup(path, stat.st_size, stat.st_mtime)
        if hit is None:
            return None
        sha, vector, error = hit
        return _entry(path, sha, stat.st_size, stat.st_mtime, error), vector

    def _extract(self, todo: list[str], journal: Journal, done: dict, report: BuildReport) -> None:
        advance = self.progress(len(todo), "extracting") if self.progress else None
        try:
            for item in self._describe(todo):
                journal.record(item.path, item.sha256, item.size, item.mtime, item.vector, item.error)
                done[item.path] = (_entry(item.path, item.sha256, item.size, item.mtime, item.error), item.vector)
                report.computed += 1
                if advance:
                    advance(1)
        except KeyboardInterrupt:
            journal.flush()
            raise Interrupted(
                f"interrupted after {report.computed} of {len(todo)} new images; they are saved — "
                "run the same command again to resume (the previous index is intact)"
            ) from None

    def _describe(self, todo: list[str]):
        """Descriptors of ``todo``: here, or on the workers of a Dask cluster (any order)."""
        if self.dask:
            from matchlens.extract.distributed import describe_files_dask  # deferred: dask (start-up time)

            return describe_files_dask(todo, self.spec, self.dask)
        return self.extractor.describe_files(todo)

    def _assign_ids(self, items: list[tuple[Entry, np.ndarray | None]]) -> list[tuple[Entry, np.ndarray | None]]:
        old_ids = {e.path: e.id for e in self.current.entries} if self.current else {}
        next_id = max(old_ids.values(), default=-1) + 1
        row = 0
        for entry, vector in items:
            if entry.path in old_ids:
                entry.id = old_ids[entry.path]
            else:
                entry.id, next_id = next_id, next_id + 1
            entry.row = row if vector is not None else None
            entry.status = "indexed" if vector is not None else "skipped"
            row += vector is not None
        return items

    def _publish(self, entries: list[tuple[Entry, np.ndarray | None]], report: BuildReport) -> VectorIndex:
        vectors = [v for _, v in entries if v is not None]
        raw = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, self._raw_dim()), np.float32)
        with GenerationWriter(self.root, self.backend, self.current, self.rebuild, self.progress) as writer:
            state, searchable = self._whiten(raw, writer.tmp)
            report.whitening = state
            if self.dba and len(searchable) > 1:
                with writer.scratch_search(searchable) as search:
                    searchable = dba_vectors(searchable, **self.dba, search=search)
            fields = {"spec": self.spec.to_dict(), "spec_fingerprint": self.spec.fingerprint(),
                      "whitening_state": state, "dba": self.dba or None}
            # Augmentation moves every vector: the backend index is then rewritten, not extended.
            incremental = not (self.dba or (self.current and self.current.manifest.get("dba")))
            index = writer.publish(raw, searchable, [e for e, _ in entries], fields, incremental)
            report.backend = writer.backend_description
        return index

    def _searchable_dim(self) -> int:
        """Width the backend will index: the whitening's output dim when it sets one, else raw."""
        dim = (self.spec.whitening_params or {}).get("dim") if self.spec.whitening != "none" else None
        if dim:
            return int(dim)
        if self.current is not None:
            return self.current.dim
        return self.extractor.dim

    def _raw_dim(self) -> int:
        return int(self.current.manifest["raw_dim"]) if self.current else self.extractor.dim

    def _whiten(self, raw: np.ndarray, tmp: Path) -> tuple[str, np.ndarray]:
        """Fit (or reuse) the whitening and return (state, searchable vectors)."""
        if self.spec.whitening == "none":
            return "none", raw
        if self.spec.whitening == "lw":  # learned from pairs by `matchlens train`, stored in the checkpoint
            learned = lw_from_checkpoint(self.spec.weights, self.spec.whitening_params.get("dim"))
            learned.save(tmp / WHITENING)
            return "fitted", learned.transform(raw)
        fitted = self.current.whitening_file() if self.current is not None else None
        model: PCAWhitening
        if not self.refit and fitted is not None:
            model = PCAWhitening.load(fitted)
        else:
            train = raw if self.spec.whitening_source == "collection" else self._whitening_set()
            params = dict(self.spec.whitening_params)
            min_images = int(params.pop("min_images", 64))
            needed = max(min_images, (params.get("dim") or 0) + 1)
            if len(train) < needed:
                return f"pending: needs {needed} images, has {len(train)}", raw
            model = PCAWhitening(**params).fit(train)
        model.save(tmp / WHITENING)
        return "fitted", model.transform(raw)

    def _whitening_set(self) -> np.ndarray:
        paths = scan_source(self.spec.whitening_source)
        advance = self.progress(len(paths), "whitening set") if self.progress else None
        vectors = []
        for item in self.extractor.describe_files(paths):
            if item.vector is not None:
                vectors.append(item.vector)
            if advance:
                advance(1)
        if not vectors:
            raise SourceError(f"no readable image in whitening folder '{self.spec.whitening_source}'")
        return np.stack(vectors)


def check_spec(index: VectorIndex, spec: PipelineSpec | None) -> None:
    """Refuse a spec that differs from the index's (one-line error naming both)."""
    if spec is None:
        return
    mine = index.spec
    theirs = spec if spec.weights_id else spec.replace(weights_id=mine.weights_id)
    if theirs.fingerprint() != mine.fingerprint():
        raise IndexError_(
            f"index '{index.root}' was built with [{mine.describe()}] but the query uses [{spec.describe()}]; "
            "query with the index's own pipeline or rebuild the index"
        )


def check_weights(index: VectorIndex, spec: PipelineSpec) -> None:
    """Refuse a weights file whose contents differ from the weights the index was built with
    (it would otherwise be ignored: an update keeps the index's own pipeline)."""
    if not spec.weights or spec.weights_id:
        return
    from matchlens.models.weights import check_weights_path, weights_id  # deferred: imports torch

    given = weights_id(check_weights_path(spec.weights))
    if given != index.spec.weights_id:
        built = index.spec.weights or f"the built-in weights of {index.spec.backbone}"
        raise IndexError_(
            f"index '{index.root}' was built with {built} (id {index.spec.weights_id}) but the weights given are "
            f"'{spec.weights}' (id {given}); add --rebuild to re-describe every image with them, or leave "
            "--weights out to keep the index's"
        )


def chosen_backend(choice: Any, current: VectorIndex | None) -> VectorBackend:
    """The backend a write uses: the given one, the current generation's (KEEP), or exact Flat (None)."""
    if choice is KEEP:
        return backend_from_dict(current.manifest.get("backend") if current is not None else None)
    if choice is None:
        return backend_from_dict(None)
    if not isinstance(choice, VectorBackend):
        raise TypeError(f"backend must be a VectorBackend, None or KEEP, not {type(choice).__name__}")
    return choice


def checked_dba(params: dict | None) -> dict | None:
    """Validated database-side augmentation parameters (None: off)."""
    return validate_dba_params(params) if params else None


def is_under(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both as the scanner lists paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def is_own_file(root: str, path: str) -> bool:
    """Whether ``path`` (as the scanner lists it) is one of the index's own files under ``root``
    (generations, CURRENT, journal, model, caches) rather than an image stored there, such as the
    server's ``uploads/``."""
    if not is_under(path, root):
        return False
    first = os.path.relpath(path, root).split(os.sep)[0]
    return first in _OWN_FILES or first == store.CURRENT or first.startswith((store.GEN_PREFIX, "."))


def open_if_exists(root: Path) -> VectorIndex | None:
    """The current generation of ``root``; None for a new folder or a first build that never committed."""
    if not root.exists() or store.is_index_dir(root):
        return VectorIndex(root) if root.exists() else None
    foreign = [p.name for p in root.iterdir() if p.name not in _OWN_FILES and not p.name.startswith(store.TMP_PREFIX)]
    if foreign:
        raise IndexError_(f"'{root}' exists and is not a matchlens index; choose an empty or new folder")
    return None


def _entry(path: str, sha: str, size: int, mtime: float, error: str | None) -> Entry:
    return Entry(id=-1, path=path, sha256=sha, size=size, mtime=mtime,
                 status="skipped" if error else "indexed", error=error)
