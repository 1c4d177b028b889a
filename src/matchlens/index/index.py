"""The Index: build, add, remove and search, on top of the atomic on-disk store."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from matchlens import __version__
from matchlens.config import PipelineSpec
from matchlens.errors import IndexError_, MatchlensError, SourceError
from matchlens.index import metadata, store
from matchlens.index.journal import Journal
from matchlens.index.metadata import Entry

if TYPE_CHECKING:
    from matchlens.rerank import Reranker, Shortlist

DESCRIPTORS = "descriptors.npy"
VECTORS = "vectors.npy"
WHITENING = "whitening.npz"
META = "meta.sqlite"
KEEP = object()  # a writer argument meaning "leave this setting as the current generation has it"
DBA_EXACT_MAX = 100_000  # beyond, an approximate backend also finds the neighbours of augmentation


class Interrupted(MatchlensError):
    """A build stopped by the user; finished work is kept in the journal."""

    exit_code = 130


@dataclass(frozen=True)
class SearchResult:
    """One ranked result of a search."""

    rank: int
    score: float
    id: int
    path: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the CLI's ``--json`` objects)."""
        return {"rank": self.rank, "score": self.score, "id": self.id, "path": self.path}


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


ProgressFactory = Callable[[int, str], Callable[[int], None]]


class Index:
    """An opened, read-only view of one generation of an index directory.

    Writers (:meth:`build`, :meth:`add`, :meth:`remove`) publish a new generation and return a
    new ``Index``; an open ``Index`` keeps reading the generation it opened.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self._gen = store.current_generation(self.root)
        manifest = self._gen.manifest
        try:
            self.spec = PipelineSpec.from_dict(manifest["spec"])
        except (KeyError, TypeError, MatchlensError) as exc:
            raise IndexError_(f"index '{root}' has an invalid pipeline spec in its manifest: {exc}") from None
        self.entries = metadata.read_entries(self._gen.path / META)
        self._vectors = np.load(self._gen.path / VECTORS, mmap_mode="r")
        indexed = [e for e in self.entries if e.status == "indexed"]
        if len(indexed) != self._vectors.shape[0]:
            raise IndexError_(f"index '{root}' is corrupt: {len(indexed)} images but {self._vectors.shape[0]} vectors")
        self._row_entry = {e.row: e for e in indexed}
        self._faiss = None
        self._backend = None  # the vector backend of the manifest (backends/), loaded on first use
        self._searcher = None
        self._extractor = None
        self._whitening = None
        self._query_vectors: dict[tuple, np.ndarray] = {}

    # --- properties ------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        """The generation's manifest (spec, counts, files, whitening state)."""
        return self._gen.manifest

    @property
    def generation(self) -> str:
        """Name of the generation this object reads."""
        return self._gen.path.name

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

    def entry_for_row(self, row: int) -> Entry:
        """Metadata of the image stored at vector row ``row``."""
        return self._row_entry[row]

    @property
    def backend(self):
        """The generation's vector backend (:mod:`matchlens.index.backends`); exact FAISS Flat by default.

        Search-time parameters can be changed on it: ``index.backend.configure(nprobe=64)``."""
        if self._backend is None:
            from matchlens.index.backends import backend_from_dict

            self._backend = backend_from_dict(self.manifest.get("backend"))
        return self._backend

    @property
    def approximate(self) -> bool:
        """True when searches go through an approximate (trained) backend index."""
        state = (self.manifest.get("backend") or {}).get("state", {})
        return not self.backend.exact and state.get("state") == "trained"

    # --- query side --------------------------------------------------------------------------
    @property
    def extractor(self):
        """The extractor of this index's spec (loaded on first use)."""
        if self._extractor is None:
            from matchlens.extract import Extractor

            self._extractor = Extractor(self.spec)
        return self._extractor

    def check_spec(self, spec: PipelineSpec | None) -> None:
        """Refuse a query spec that differs from the index's (one-line error naming both)."""
        if spec is None:
            return
        mine = self.spec
        theirs = spec if spec.weights_id else spec.replace(weights_id=mine.weights_id)
        if theirs.fingerprint() != mine.fingerprint():
            raise IndexError_(
                f"index '{self.root}' was built with [{mine.describe()}] but the query uses [{spec.describe()}]; "
                "query with the index's own pipeline or rebuild the index"
            )

    def query_vector(self, query, box: Sequence[float] | None = None) -> np.ndarray:
        """The searchable (whitened) vector of a query image, optionally cropped to ``box``."""
        return self.encode_query(query, box)[1]

    def _whiten(self, raw: np.ndarray) -> np.ndarray:
        if self.manifest.get("whitening_state") != "fitted":
            return raw.astype(np.float32)
        if self._whitening is None:
            from matchlens.whitening import load_whitening

            self._whitening = load_whitening(self._gen.path / WHITENING)  # pcaw or lw, by the kind stored
        return self._whitening.transform(raw)

    def search(self, query, box: Sequence[float] | None = None, k: int = 20, spec: PipelineSpec | None = None,
               rerank: "str | Sequence[Reranker] | None" = None) -> list[SearchResult]:
        """Rank the collection against a query given as path, bytes, PIL image or array.

        ``rerank`` is a chain such as ``"sv:k=100,aqe:k=2,diffusion"`` (or reranker objects).
        """
        self.check_spec(spec)
        return self._results(self.rank(query, box, k, rerank).head(k))

    def rank(self, query, box: Sequence[float] | None = None, depth: int = 20,
             rerank: "str | Sequence[Reranker] | None" = None) -> "Shortlist":
        """The query's shortlist (rows and scores, best first) of at least ``depth`` entries, re-ranked."""
        from matchlens.rerank import QueryInput, Shortlist, chain_depth, parse_chain, run_chain

        chain = parse_chain(rerank) if isinstance(rerank, str) else list(rerank or [])
        image, vector = self.encode_query(query, box, keep_image=any(r.needs_image for r in chain))
        scores, rows = self.search_vectors(vector[None, :], max(depth, chain_depth(chain)))
        shortlist = Shortlist(rows[0], scores[0]).valid()  # an approximate backend may find fewer than asked
        if chain:
            # Only local-feature rerankers use the hash (as a cache key): do not re-read the file otherwise.
            sha = content_sha(query) if image is not None else None
            query_input = QueryInput(vector=vector, image=image, sha256=sha)
            shortlist = run_chain(chain, query_input, shortlist, IndexContext(self))
        return shortlist

    def encode_query(self, query, box=None, keep_image: bool = False) -> tuple[Image.Image | None, np.ndarray]:
        """(decoded query image if wanted, searchable vector); vectors of files are memoised
        (by path, size, mtime and box) so repeated queries — evaluations, re-ranking sweeps — skip
        the network."""
        key = _file_key(query, box)
        if key is not None and key in self._query_vectors and not keep_image:
            return None, self._query_vectors[key]
        image = self.extractor.load(query, box)
        vector = self._whiten(self.extractor.describe_image(image)[None, :])[0]
        if key is not None:
            if len(self._query_vectors) >= 4096:
                self._query_vectors.clear()
            self._query_vectors[key] = vector
        return (image if keep_image else None), vector

    def search_vector(self, vector: np.ndarray, k: int = 20) -> list[SearchResult]:
        """Rank the collection against one searchable vector."""
        scores, rows = self.search_vectors(np.asarray(vector, dtype=np.float32)[None, :], k)
        return self._results(_shortlist(rows[0], scores[0]))

    def _results(self, shortlist) -> list[SearchResult]:
        return [
            SearchResult(rank=i + 1, score=float(s), id=self._row_entry[int(r)].id, path=self._row_entry[int(r)].path)
            for i, (s, r) in enumerate(zip(shortlist.scores, shortlist.rows))
            if r >= 0
        ]

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batched inner-product search: (scores, rows), each (n, min(k, size)), best first.

        Exact (FAISS ``IndexFlatIP``) unless the index has a trained approximate backend; that one
        may return fewer than k results, padded with row -1 (score -inf)."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise IndexError_(f"query vectors have width {vectors.shape[-1]} but index '{self.root}' has {self.dim}")
        if k < 1:
            raise MatchlensError(f"k must be at least 1, got {k}")
        k = min(k, self.size)
        if k == 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.approximate:
            return self._backend_searcher().search(queries, k)
        return self._faiss_index().search(queries, k)

    def _backend_searcher(self):
        if self._searcher is None:
            from matchlens.index.backends import Searcher

            indexed = [e for e in self.entries if e.row is not None]
            id_to_row = np.full(max((e.id for e in indexed), default=-1) + 1, -1, dtype=np.int64)
            id_to_row[[e.id for e in indexed]] = [e.row for e in indexed]
            candidates = self.backend.open(self.root, self._gen.path, self.manifest["backend"]["state"])
            self._searcher = Searcher(self.backend, candidates, id_to_row, self._vectors)
        return self._searcher

    def _faiss_index(self):
        if self._faiss is None:
            import faiss

            index = faiss.IndexFlatIP(self.dim)
            index.add(np.ascontiguousarray(self._vectors, dtype=np.float32))
            self._faiss = index
        return self._faiss

    # --- writers -------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        paths: Sequence[str],
        root: str | os.PathLike,
        spec: PipelineSpec,
        rebuild: bool = False,
        progress: ProgressFactory | None = None,
        dba: Any = KEEP,
        backend: Any = KEEP,
        dask: str | None = None,
    ) -> tuple["Index", BuildReport]:
        """Index exactly ``paths`` into ``root`` (reusing unchanged descriptors, resuming a crashed build).

        ``dba``: database-side augmentation parameters (``{"k": 3}``, optionally ``"alpha"``), None
        to turn it off, or leave out to keep the current setting. ``backend``: a
        :class:`~matchlens.index.backends.VectorBackend` (``make_backend("faiss", "IVF1024,PQ64")``),
        None for exact Flat, or leave out to keep the current one. ``dask``: the address of a Dask
        scheduler whose workers extract the descriptors (see :mod:`matchlens.extract.distributed`).
        """
        root = Path(root)
        with store.writer_lock(root):
            current = _open_if_exists(root)
            builder = _Builder(root, spec, current, rebuild, progress, dba=dba, backend=backend, dask=dask)
            return builder.run(paths, keep=[])

    def set_dba(self, params: dict | None) -> tuple["Index", BuildReport]:
        """Turn database-side augmentation on (``{"k": 3}``) or off (None): a new generation whose
        searchable vectors are recomputed from the stored raw descriptors, so it is reversible."""
        with store.writer_lock(self.root):
            current = Index(self.root)
            builder = _Builder(self.root, current.spec, current, False, None, refit=False, dba=params)
            return builder.run([], keep=list(current.entries))

    def add(self, sources: Sequence[str], progress: ProgressFactory | None = None,
            dask: str | None = None) -> tuple["Index", BuildReport]:
        """Add (or refresh) files, folders or list files; existing images stay; returns the new generation.

        A trained backend index (IVF, HNSW, Milvus) is extended with the new vectors, not retrained."""
        from matchlens.io.collection import scan_many

        paths = scan_many(list(sources))
        with store.writer_lock(self.root):
            current = Index(self.root)
            builder = _Builder(self.root, current.spec, current, False, progress, refit=False, dask=dask)
            new = set(paths)
            return builder.run(paths, keep=[e for e in current.entries if e.path not in new])

    def remove(self, paths: Iterable[str]) -> tuple["Index", BuildReport]:
        """Remove images by path (a folder removes everything under it); error if nothing matches."""
        targets = [str(Path(p).expanduser().resolve()) for p in paths]
        with store.writer_lock(self.root):
            current = Index(self.root)
            keep = [e for e in current.entries if not any(_under(e.path, t) for t in targets)]
            removed = len(current.entries) - len(keep)
            if removed == 0:
                raise SourceError(f"no image of index '{self.root}' matches: {', '.join(targets)}")
            builder = _Builder(self.root, current.spec, current, False, None, refit=False)
            index, report = builder.run([], keep=keep)
            report.removed = removed
            return index, report


class IndexContext:
    """What rerankers may use of an index (see :class:`matchlens.rerank.RerankContext`)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    @property
    def vectors(self) -> np.ndarray:
        return self.index.vectors()

    @property
    def generation(self) -> str:
        return self.index.generation

    @property
    def approximate(self) -> bool:
        """True when :meth:`search` is approximate (a trained IVF/HNSW/Milvus backend)."""
        return self.index.approximate

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search_vectors(vectors, k)

    def image_path(self, row: int) -> str:
        return self.index.entry_for_row(row).path

    def image_sha256(self, row: int) -> str:
        return self.index.entry_for_row(row).sha256

    def cache_dir(self, kind: str) -> Path | None:
        """``DIR/cache/KIND`` (outside the generations, so caches survive re-indexing); None if read-only."""
        folder = self.index.root / "cache" / kind
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return folder if os.access(folder, os.W_OK) else None


def _shortlist(rows: np.ndarray, scores: np.ndarray):
    from matchlens.rerank import Shortlist

    return Shortlist(rows, scores)


def _file_key(query, box) -> tuple | None:
    """A memo key for a query file (None for in-memory queries)."""
    if not isinstance(query, (str, os.PathLike)):
        return None
    try:
        stat = os.stat(query)
    except OSError:
        return None
    return (str(Path(query).resolve()), stat.st_size, stat.st_mtime_ns, tuple(box) if box is not None else None)


def content_sha(query) -> str | None:
    """sha256 of a query given as a file or bytes (a cache key for its local features)."""
    import hashlib

    try:
        if isinstance(query, (bytes, bytearray)):
            return hashlib.sha256(query).hexdigest()
        if isinstance(query, (str, os.PathLike)):
            return hashlib.sha256(Path(query).read_bytes()).hexdigest()
    except OSError:
        return None
    return None


def _under(path: str, target: str) -> bool:
    return path == target or path.startswith(target.rstrip(os.sep) + os.sep)


def _open_if_exists(root: Path) -> Index | None:
    """The current index of ``root``; None for a new folder or a first build that never committed."""
    if not root.exists() or store.is_index_dir(root):
        return Index(root) if root.exists() else None
    own = {".lock", "journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm", "milvus.db", "milvus-pending"}
    foreign = [p.name for p in root.iterdir() if p.name not in own and not p.name.startswith(store.TMP_PREFIX)]
    if foreign:
        raise IndexError_(f"'{root}' exists and is not a matchlens index; choose an empty or new folder")
    return None


def _checked_dba(params: dict | None) -> dict | None:
    if not params:
        return None
    from matchlens.rerank.dba import validate_dba_params

    return validate_dba_params(params)


class _Builder:
    """One write: gather descriptors (cache → journal → extraction), fit whitening, publish."""

    def __init__(self, root: Path, spec: PipelineSpec, current: Index | None, rebuild: bool,
                 progress: ProgressFactory | None, refit: bool = True, dba: Any = KEEP, backend: Any = KEEP,
                 dask: str | None = None) -> None:
        self.root, self.current, self.progress, self.refit = root, current, progress, refit
        self.rebuild, self.dask = rebuild, dask
        self.backend = _chosen_backend(backend, current)
        # Database-side augmentation: kept from the current generation unless given (None = off).
        self.dba = (current.manifest.get("dba") if current else None) if dba is KEEP else _checked_dba(dba)
        self._extractor = None
        self.spec = spec
        if current is not None and not rebuild:
            current.check_spec(spec)
            self.spec = current.spec if not spec.weights_id else spec
        if not self.spec.weights_id:
            self.extractor  # resolves the weights id, needed by every fingerprint below
        self._cache = self._current_descriptors() if current is not None else {}
        self.backend.check_dim(self._searchable_dim())

    @property
    def extractor(self):
        if self._extractor is None:
            from matchlens.extract import Extractor

            self._extractor = Extractor(self.spec)
            self.spec = self._extractor.spec  # now carries the weights id
        return self._extractor

    def _current_descriptors(self) -> dict[str, tuple[Entry, np.ndarray | None]]:
        cur = self.current
        if cur.spec.raw_fingerprint() != self.spec.raw_fingerprint():
            return {}
        raw = np.load(cur._gen.path / DESCRIPTORS, mmap_mode="r")
        return {e.path: (e, None if e.row is None else np.array(raw[e.row])) for e in cur.entries}

    def run(self, paths: Sequence[str], keep: list[Entry]) -> tuple[Index, BuildReport]:
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
        entries = self._assign_ids(keep_raw + items)
        index = self._publish(entries, report)
        Journal(self.root, self.spec.raw_fingerprint()).clear()
        report.indexed = index.size
        report.skipped = len(index.skipped())
        report.skipped_files = [(e.path, e.error or "") for e in index.skipped()]
        report.seconds = time.monotonic() - start
        return index, report

    def _reload_kept(self, keep: list[Entry]) -> list[tuple[Entry, np.ndarray | None]]:
        raw = np.load(self.current._gen.path / DESCRIPTORS, mmap_mode="r")
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
            from matchlens.extract.distributed import describe_files_dask

            return describe_files_dask(todo, self.spec, self.dask)
        return self.extractor.describe_files(todo)

    def _assign_ids(self, items: list[tuple[Entry, np.ndarray | None]]) -> list[tuple[Entry, np.ndarray | None]]:
        old_ids = {e.path: e.id for e in self.current.entries} if self.current else {}
        next_id = max(old_ids.values(), default=-1) + 1
        out = []
        row = 0
        for entry, vector in items:
            if entry.path in old_ids:
                entry.id = old_ids[entry.path]
            else:
                entry.id, next_id = next_id, next_id + 1
            entry.row = row if vector is not None else None
            entry.status = "indexed" if vector is not None else "skipped"
            row += vector is not None
            out.append((entry, vector))
        return out

    def _publish(self, entries: list[tuple[Entry, np.ndarray | None]], report: BuildReport) -> Index:
        vectors = [v for _, v in entries if v is not None]
        raw = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, self._raw_dim()), np.float32)
        tmp = store.new_generation_dir(self.root)
        try:
            state, vectors = self._whiten(raw, tmp)
            report.whitening = state
            if self.dba and len(vectors) > 1:
                from matchlens.rerank.dba import dba_vectors

                with self._dba_search(vectors, tmp) as search:
                    vectors = dba_vectors(vectors, **self.dba, search=search)
            write_generation(tmp, raw, vectors, [e for e, _ in entries])
            backend_entry = self._write_backend(tmp, vectors, entries, report)
            manifest = {
                "spec": self.spec.to_dict(),
                "spec_fingerprint": self.spec.fingerprint(),
                "counts": {"indexed": len(raw), "skipped": sum(v is None for _, v in entries)},
                "dim": int(vectors.shape[1]),
                "raw_dim": int(raw.shape[1]),
                "whitening_state": state,
                "dba": self.dba or None,
                "backend": backend_entry,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "matchlens_version": __version__,
            }
            store.commit_generation(self.root, tmp, manifest)
            self._after_commit(backend_entry["state"])
        except OSError as exc:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise IndexError_(f"could not write index '{self.root}': {reason}; the previous index is intact") from None
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Index(self.root)

    @contextlib.contextmanager
    def _dba_search(self, vectors: np.ndarray, tmp: Path):
        """Neighbours for database-side augmentation: exact (None) up to DBA_EXACT_MAX vectors or
        with an exact backend; beyond, a temporary index of the FAISS backend's own factory over
        the vectors before augmentation (exact kNN of a million vectors would take hours)."""
        from matchlens.index.backends import Searcher, WriteJob
        from matchlens.index.backends.faiss_backend import FaissBackend

        if self.backend.exact or len(vectors) <= DBA_EXACT_MAX or not isinstance(self.backend, FaissBackend):
            yield None
            return
        folder = tmp / ".dba-neighbours"
        folder.mkdir()
        try:
            rows = np.arange(len(vectors))
            state = self.backend.write(WriteJob(root=self.root, tmp=folder, vectors=vectors, ids=rows,
                                                progress=self.progress))
            searcher = Searcher(self.backend, self.backend.open(self.root, folder, state), rows, vectors)
            yield _complete_search(searcher.search, vectors)
        finally:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)

    def _write_backend(self, tmp: Path, vectors: np.ndarray, entries: list, report: BuildReport) -> dict:
        """Write the backend's index of the new generation (only the changes where possible)."""
        from matchlens.index.backends import WriteJob, backend_from_dict

        indexed = [e for e, v in entries if v is not None]
        ids = np.array([e.id for e in indexed], dtype=np.int64)
        job = WriteJob(root=self.root, tmp=tmp, vectors=vectors, ids=ids, progress=self.progress)
        previous = self.current.manifest.get("backend") if self.current is not None else None
        if previous and not self.rebuild and backend_from_dict(previous).build_key() == self.backend.build_key():
            job.previous_dir, job.previous_state = self.current._gen.path, previous.get("state")
            job.delta = self._delta(indexed, vectors)
        state = self.backend.write(job)
        mode = state.get("mode", state.get("state", ""))
        if mode == "incremental":
            mode += f" (+{state.get('added', 0)} -{state.get('removed', 0)})"
        report.backend = f"{self.backend.describe()}: {mode}"
        return {**self.backend.to_dict(), "state": state}

    def _delta(self, indexed: list[Entry], vectors: np.ndarray):
        """What changed since the current generation, or None when every vector must be rewritten
        (database-side augmentation moves every vector; a refitted whitening too — checked on a
        sample of the unchanged images)."""
        from matchlens.index.backends import Delta

        if self.dba or self.current.manifest.get("dba"):
            return None
        # Read afresh: _assign_ids renumbers the rows of the kept Entry objects in place.
        before = {e.id: e for e in metadata.read_entries(self.current._gen.path / META) if e.row is not None}
        same = [(e.row, before[e.id].row) for e in indexed
                if e.id in before and e.sha256 and before[e.id].sha256 == e.sha256]
        if same:
            picks = np.unique(np.linspace(0, len(same) - 1, min(64, len(same))).astype(int))
            new_rows = [same[i][0] for i in picks]
            old_rows = [same[i][1] for i in picks]
            if not np.array_equal(np.asarray(vectors[new_rows]), np.asarray(self.current.vectors()[old_rows])):
                return None
        kept = {e.id for e in indexed if e.id in before and e.sha256 and before[e.id].sha256 == e.sha256}
        add_rows = np.array([e.row for e in indexed if e.id not in kept], dtype=np.int64)
        remove_ids = np.array(sorted(i for i in before if i not in kept), dtype=np.int64)
        return Delta(add_rows=add_rows, remove_ids=remove_ids)

    def _after_commit(self, state: dict) -> None:
        try:
            self.backend.after_commit(self.root, state)
        except Exception:  # cleanup of old Milvus collections is best-effort; the next write retries
            pass

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
            from matchlens.whitening.learned import lw_from_checkpoint

            model = lw_from_checkpoint(self.spec.weights, self.spec.whitening_params.get("dim"))
            model.save(tmp / WHITENING)
            return "fitted", model.transform(raw)
        from matchlens.whitening import PCAWhitening

        cur = self.current
        if not self.refit and cur is not None and cur.manifest.get("whitening_state") == "fitted":
            model = PCAWhitening.load(cur._gen.path / WHITENING)
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
        from matchlens.io.collection import scan_source

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


def _complete_search(search, vectors: np.ndarray):
    """``search`` with rows it could not fill (-1, rare) completed by exact search of those queries."""
    def complete(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = search(queries, k)
        for i in np.nonzero((rows < 0).any(axis=1))[0]:
            sims = np.asarray(vectors @ queries[i], dtype=np.float32)  # one brute-force pass, streamed
            top = np.argsort(-sims, kind="stable")[:k]
            scores[i], rows[i] = sims[top], top
        return scores, rows

    return complete


def _chosen_backend(choice: Any, current: Index | None):
    """The backend a write uses: the given one, the current generation's (KEEP), or exact Flat (None)."""
    from matchlens.index.backends import VectorBackend, backend_from_dict

    if choice is KEEP:
        return backend_from_dict(current.manifest.get("backend") if current is not None else None)
    if choice is None:
        return backend_from_dict(None)
    if not isinstance(choice, VectorBackend):
        raise TypeError(f"backend must be a VectorBackend, None or KEEP, not {type(choice).__name__}")
    return choice


def write_generation(tmp: Path, raw: np.ndarray, vectors: np.ndarray, entries: list[Entry]) -> None:
    """Write the data files of a generation into ``tmp`` (the manifest is written on commit)."""
    np.save(tmp / DESCRIPTORS, raw)
    np.save(tmp / VECTORS, np.ascontiguousarray(vectors, dtype=np.float32))
    metadata.write_entries(tmp / META, entries)


def _entry(path: str, sha: str, size: int, mtime: float, error: str | None) -> Entry:
    return Entry(id=-1, path=path, sha256=sha, size=size, mtime=mtime,
                 status="skipped" if error else "indexed", error=error)


def open_index(root: str | os.PathLike) -> Index:
    """Open an existing index directory (one-line IndexError_ if missing, foreign or corrupt)."""
    return Index(root)


def disk_full_error() -> OSError:
    """An ENOSPC error (used by tests that simulate a write failing half way)."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
