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
from matchlens.errors import SourceError
from matchlens.index import store
from matchlens.index.metadata import Entry
from matchlens.index.vectors import VectorIndex
from matchlens.index.writer import ProgressFactory
from matchlens.io.collection import scan_many
from matchlens.pipeline.build import KEEP, Builder, BuildReport, check_spec, open_if_exists
from matchlens.pipeline.results import SearchResult
from matchlens.pipeline.search import Chain, SearchPipeline
from matchlens.rerank import Shortlist

__all__ = ["Index", "open_index"]


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
    def build(cls, paths: Sequence[str], root: str | os.PathLike, spec: PipelineSpec, rebuild: bool = False,
              progress: ProgressFactory | None = None, dba: Any = KEEP, backend: Any = KEEP,
              dask: str | None = None) -> tuple["Index", BuildReport]:
        """Index exactly ``paths`` into ``root`` (reusing unchanged descriptors, resuming a crashed build).

        ``dba``: database-side augmentation parameters (``{"k": 3}``, optionally ``"alpha"``), None
        to turn it off, or leave out to keep the current setting. ``backend``: a
        :class:`~matchlens.index.backends.VectorBackend` (``make_backend("faiss", "IVF1024,PQ64")``),
        None for exact Flat, or leave out to keep the current one. ``dask``: the address of a Dask
        scheduler whose workers extract the descriptors (see :mod:`matchlens.extract.distributed`).
        """
        root = Path(root)
        with store.writer_lock(root):
            current = open_if_exists(root)
            builder = Builder(root, spec, current, rebuild, progress, dba=dba, backend=backend, dask=dask)
            return _opened(builder.run(paths, keep=[]))

    def set_dba(self, params: dict | None) -> tuple["Index", BuildReport]:
        """Turn database-side augmentation on (``{"k": 3}``) or off (None): a new generation whose
        searchable vectors are recomputed from the stored raw descriptors, so it is reversible."""
        with store.writer_lock(self.root):
            current = VectorIndex(self.root)
            builder = Builder(self.root, current.spec, current, False, None, refit=False, dba=params)
            return _opened(builder.run([], keep=list(current.entries)))

    def add(self, sources: Sequence[str], progress: ProgressFactory | None = None,
            dask: str | None = None) -> tuple["Index", BuildReport]:
        """Add (or refresh) files, folders or list files; existing images stay; returns the new generation.

        A trained backend index (IVF, HNSW, Milvus) is extended with the new vectors, not retrained."""
        paths = scan_many(list(sources))
        with store.writer_lock(self.root):
            current = VectorIndex(self.root)
            builder = Builder(self.root, current.spec, current, False, progress, refit=False, dask=dask)
            new = set(paths)
            return _opened(builder.run(paths, keep=[e for e in current.entries if e.path not in new]))

    def remove(self, paths: Iterable[str]) -> tuple["Index", BuildReport]:
        """Remove images by path (a folder removes everything under it); error if nothing matches."""
        targets = [str(Path(p).expanduser().resolve()) for p in paths]
        with store.writer_lock(self.root):
            current = VectorIndex(self.root)
            keep = [e for e in current.entries if not any(_under(e.path, t) for t in targets)]
            removed = len(current.entries) - len(keep)
            if removed == 0:
                raise SourceError(f"no image of index '{self.root}' matches: {', '.join(targets)}")
            builder = Builder(self.root, current.spec, current, False, None, refit=False)
            index, report = _opened(builder.run([], keep=keep))
            report.removed = removed
            return index, report


def open_index(root: str | os.PathLike) -> Index:
    """Open an existing index directory (one-line IndexError_ if missing, foreign or corrupt)."""
    return Index(root)


def _opened(written: tuple[VectorIndex, BuildReport]) -> tuple[Index, BuildReport]:
    return Index(written[0]), written[1]


def _under(path: str, target: str) -> bool:
    return path == target or path.startswith(target.rstrip(os.sep) + os.sep)
