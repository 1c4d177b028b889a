"""``matchlens.Index``: an index folder as a user holds it — its stored vectors
(:class:`~matchlens.index.vectors.VectorIndex`), the writers that publish new generations
(:mod:`matchlens.pipeline.build`) and its search pipeline (:class:`SearchPipeline`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from matchlens.config import PipelineSpec
from matchlens.errors import IndexError_, SourceError
from matchlens.index import store
from matchlens.index.metadata import Entry
from matchlens.index.vectors import VectorIndex
from matchlens.index.writer import ProgressFactory
from matchlens.io.collection import display_path, listed_path, scan_many
from matchlens.pipeline.build import KEEP, Builder, BuildReport, check_spec, is_own_file, is_under, open_if_exists
from matchlens.pipeline.results import SearchResult
from matchlens.pipeline.search import Chain, SearchPipeline
from matchlens.rerank import Shortlist

__all__ = ["Index", "as_paths", "open_index", "removal_targets"]


class Index:
    """An opened, read-only view of one generation of an index directory, with its search.

    Writers (:meth:`build`, :meth:`add`, :meth:`remove`, :meth:`set_dba`) publish a new
    generation and return a new ``Index``; an open ``Index`` keeps reading the generation it opened.
    """

    def __init__(self, root: str | os.PathLike | VectorIndex) -> None:
        self.store = root if isinstance(root, VectorIndex) else VectorIndex(root)
        self.pipeline = SearchPipeline(self.store)

    # --- what is stored ----------------------------------------------------------------------
    root = property(lambda self: self.store.root, doc="The index folder (absolute).")
    spec = property(lambda self: self.store.spec, doc="The pipeline spec the index was built with.")
    entries = property(lambda self: self.store.entries, doc="Metadata of every file (indexed and skipped).")
    manifest = property(lambda self: self.store.manifest, doc="The generation's manifest.")
    generation = property(lambda self: self.store.generation, doc="Name of the generation this object reads.")
    size = property(lambda self: self.store.size, doc="Number of searchable images.")
    dim = property(lambda self: self.store.dim, doc="Width of the searchable vectors.")
    backend = property(lambda self: self.store.backend, doc="The vector backend (configure search parameters on it).")
    approximate = property(lambda self: self.store.approximate, doc="True when search goes through a trained ANN index.")

    def skipped(self) -> list[Entry]:
        """Files that could not be indexed, with their reasons."""
        return self.store.skipped()

    def vectors(self) -> np.ndarray:
        """The searchable vectors (n, d), memory-mapped."""
        return self.store.vectors()

    def entry_for_row(self, row: int) -> Entry:
        """Metadata of the image stored at vector row ``row``."""
        return self.store.entry_for_row(row)

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batched search of searchable vectors: (scores, rows), best first."""
        return self.store.search_vectors(vectors, k)

    # --- search ------------------------------------------------------------------------------
    @property
    def extractor(self) -> Any:
        """The query extractor of this index's spec (loaded on first use)."""
        return self.pipeline.encoder.extractor

    def check_spec(self, spec: PipelineSpec | None) -> None:
        """Refuse a query spec that differs from the index's (one-line error naming both)."""
        check_spec(self.store, spec)

    def encode_query(self, query: Any, box: Sequence[float] | None = None,
                     keep_image: bool = False) -> tuple[Image.Image | None, np.ndarray]:
        """(decoded query if wanted, searchable vector); vectors of files are memoised."""
        return self.pipeline.encoder.encode(query, box, keep_image)

    def query_vector(self, query: Any, box: Sequence[float] | None = None) -> np.ndarray:
        """The searchable (whitened) vector of a query image, optionally cropped to ``box``."""
        return self.encode_query(query, box)[1]

    def search(self, query: Any, box: Sequence[float] | None = None, k: int = 20, spec: PipelineSpec | None = None,
               rerank: Chain = None) -> list[SearchResult]:
        """Rank the collection against a query given as path, bytes, PIL image or array.

        ``rerank`` is a chain such as ``"sv:k=100,aqe:k=2,diffusion"`` (or reranker objects)."""
        self.check_spec(spec)
        return self.pipeline.search(query, box, k, rerank)

    def rank(self, query: Any, box: Sequence[float] | None = None, depth: int = 20, rerank: Chain = None) -> Shortlist:
        """The query's shortlist (rows and scores, best first) of at least ``depth`` entries, re-ranked."""
        return self.pipeline.rank(query, box, depth, rerank)

    def search_vector(self, vector: np.ndarray, k: int = 20) -> list[SearchResult]:
        """Rank the collection against one searchable vector."""
        scores, rows = self.store.search_vectors(np.asarray(vector, dtype=np.float32)[None, :], k)
        return self.pipeline.results(Shortlist(rows[0], scores[0]))

    def searcher(self, fuse: str | None = None, progress: ProgressFactory | None = None) -> SearchPipeline:
        """A search pipeline over this generation ranked by ``fuse`` (a kind or a fusion such as
        ``"cnn+asmk:ghm"``; None: the global descriptor), sharing this index's query encoder."""
        if not fuse:
            return self.pipeline
        return SearchPipeline(self.store, self.pipeline.encoder, fuse, progress=progress)

    # --- writers -----------------------------------------------------------------------------
    @classmethod
    def build(cls, paths: str | os.PathLike | Sequence[str | os.PathLike], root: str | os.PathLike, spec: PipelineSpec,
              rebuild: bool = False, progress: ProgressFactory | None = None, dba: Any = KEEP, backend: Any = KEEP,
              dask: str | None = None, replace: bool = False, create: bool = False) -> tuple["Index", BuildReport]:
        """Index exactly ``paths`` into ``root`` (reusing unchanged descriptors, resuming a crashed build).

        An existing index keeps the images ``paths`` does not name unless ``replace`` is given
        (refused with a one-line error naming the flag otherwise; images whose files are gone
        from disk are dropped either way, as a sync would). ``create``: refuse an existing index.
        ``dba``: database-side augmentation parameters (``{"k": 3}``, optionally ``"alpha"``), None
        to turn it off, or leave out to keep the current setting. ``backend``: a
        :class:`~matchlens.index.backends.VectorBackend` (``make_backend("faiss", "IVF1024,PQ64")``),
        None for exact Flat, or leave out to keep the current one. ``dask``: the address of a Dask
        scheduler whose workers extract the descriptors (see :mod:`matchlens.extract.distributed`).
        """
        root = Path(root)
        files = _outside(root, [display_path(p) for p in as_paths(paths)])  # as the scanner lists them
        with store.writer_lock(root):
            current = open_if_exists(root)
            if current is not None and create:
                raise IndexError_(f"an index already exists at '{root}'; open it with open_index() and add images "
                                  "with Index.add(), or choose a new folder")
            gone = _dropped(current, files, replace)
            builder = Builder(root, spec, current, rebuild, progress, dba=dba, backend=backend, dask=dask)
            index, report = _opened(builder.run(files, keep=[]))
            report.removed = gone
            return index, report

    def set_dba(self, params: dict | None) -> tuple["Index", BuildReport]:
        """Turn database-side augmentation on (``{"k": 3}``) or off (None): a new generation whose
        searchable vectors are recomputed from the stored raw descriptors, so it is reversible."""
        with store.writer_lock(self.root):
            current = VectorIndex(self.root)
            builder = Builder(self.root, current.spec, current, False, None, refit=False, dba=params)
            return _opened(builder.run([], keep=list(current.entries)))

    def add(self, sources: str | os.PathLike | Sequence[str | os.PathLike], progress: ProgressFactory | None = None,
            dask: str | None = None) -> tuple["Index", BuildReport]:
        """Add (or refresh) a file, folder or list file, or a list of them; existing images stay;
        returns the new generation. A str is one path, never a list of characters.

        A trained backend index (IVF, HNSW, Milvus) is extended with the new vectors, not retrained."""
        paths = _outside(self.root, scan_many(as_paths(sources)))
        with store.writer_lock(self.root):
            current = VectorIndex(self.root)
            builder = Builder(self.root, current.spec, current, False, progress, refit=False, dask=dask)
            new = set(paths)
            return _opened(builder.run(paths, keep=[e for e in current.entries if e.path not in new]))

    def matching(self, paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Entry]:
        """The entries :meth:`remove` would remove: each path is an indexed file or a folder
        (everything under it). A str is one path."""
        targets = removal_targets(paths)
        return [e for e in self.store.entries if any(is_under(e.path, t) for t in targets)]

    def remove(self, paths: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple["Index", BuildReport]:
        """Remove images by path (a folder removes everything under it); error if nothing matches.
        A str is one path, never a list of characters."""
        targets = removal_targets(paths)
        with store.writer_lock(self.root):
            current = VectorIndex(self.root)
            keep = [e for e in current.entries if not any(is_under(e.path, t) for t in targets)]
            removed = len(current.entries) - len(keep)
            if removed == 0:
                current.close()
                raise SourceError(f"no image of index '{self.root}' matches: {', '.join(targets)}")
            builder = Builder(self.root, current.spec, current, False, None, refit=False)
            index, report = _opened(builder.run([], keep=keep))
            report.removed = removed
            return index, report


def open_index(root: str | os.PathLike) -> Index:
    """Open an existing index directory (one-line IndexError_ if missing, foreign or corrupt)."""
    return Index(root)


def as_paths(value: Any) -> list[str]:
    """``value`` as a list of paths: a str or path-like is ONE path (never its characters), an
    iterable gives several. Empty paths are refused (``""`` would mean the working directory)."""
    if isinstance(value, (str, os.PathLike)):
        items = [value]
    elif isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        items = list(value)
    else:
        raise TypeError(f"expected a path or a list of paths, not {type(value).__name__}")
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"expected a path or a list of paths, not a list holding {type(item).__name__}")
    paths = [os.fspath(item) for item in items]
    if any(not str(p).strip() for p in paths):
        raise SourceError("an empty path was given; name a file or folder ('.' for the working directory)")
    return [str(p) for p in paths]


def removal_targets(paths: Any) -> list[str]:
    """The paths :meth:`Index.remove` matches entries against: each as the scanner lists it."""
    return [listed_path(os.path.expanduser(p)) for p in as_paths(paths)]


def _outside(root: Path, paths: list[str]) -> list[str]:
    """``paths`` without the index's own files (an index kept inside the folder it indexes)."""
    inside = listed_path(root)
    return [p for p in paths if not is_own_file(inside, p)]


def _dropped(current: VectorIndex | None, paths: list[str], replace: bool) -> int:
    """How many indexed images a build of exactly ``paths`` drops; refuses (one line naming
    --replace) when any of them still exists on disk and ``replace`` was not given."""
    if current is None:
        return 0
    wanted = set(paths)
    dropped = [e for e in current.entries if e.status == "indexed" and e.path not in wanted]
    present = [e for e in dropped if os.path.lexists(e.path)]
    if present and not replace:
        current.close()
        raise IndexError_(
            f"index '{current.root}' holds {len(present)} images that are not in this source (e.g. '{present[0].path}'); "
            "add images with 'matchlens add' (Index.add), or give --replace (replace=True) to make the index "
            "exactly this source")
    return len(dropped)


def _opened(written: tuple[VectorIndex, BuildReport]) -> tuple[Index, BuildReport]:
    return Index(written[0]), written[1]
