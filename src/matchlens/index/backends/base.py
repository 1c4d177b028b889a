"""The vector-backend interface: how a generation's searchable vectors are indexed and searched.

Every generation keeps its searchable vectors in ``vectors.npy`` (memory-mapped, row ``i`` ↔
image row ``i``); a backend adds an index over them: nothing for exact FAISS ``Flat`` (today's
in-memory ``IndexFlatIP``), a trained FAISS index file written into the generation (IVF-PQ,
HNSW, ...), or a Milvus collection. Backends key vectors by the images' stable ids (not rows,
which are renumbered when images are removed), so an ``add`` only inserts the new vectors.

A backend returns *candidates* (ids and approximate scores); :func:`refine_exact` re-ranks a
shortlist of them exactly from the memory-mapped raw vectors, so compressed codes only have to
get the true neighbours into the shortlist, not order it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from matchlens.components import Component
from matchlens.errors import ConfigError
from matchlens.registry import Registry

ProgressFactory = Callable[[int, str], Callable[[int], None]]
REFINE_ROWS = 16384  # candidate rows gathered at once by the NumPy re-ranking fallback (~80 MB at 1280-d)


@dataclass
class Delta:
    """What changed since the previous generation, when only that needs writing.

    ``add_rows``: rows of the new vectors to insert (new or changed images); ``remove_ids``: ids
    to delete from the previous index (removed or changed images).
    """

    add_rows: np.ndarray
    remove_ids: np.ndarray


@dataclass
class WriteJob:
    """Everything a backend needs to write the index of one new generation."""

    root: Path                 # the index folder (Milvus Lite databases live here by default)
    tmp: Path                  # the generation being written (files go here; renamed on commit)
    vectors: np.ndarray        # (N, d) float32 searchable vectors, row-aligned
    ids: np.ndarray            # (N,) int64 stable image ids of the rows
    previous_dir: Path | None = None      # the previous generation (None for a first build)
    previous_state: dict | None = None    # its backend entry of the manifest
    delta: Delta | None = None            # None: write everything (train again where needed)
    progress: ProgressFactory | None = None


Candidates = Callable[[np.ndarray, int], "tuple[np.ndarray, np.ndarray]"]


class VectorBackend(Component, ABC):
    """A configured backend: validated parameters, a writer and a searcher.

    ``factory`` is the index description (a FAISS factory string, or a Milvus index type with
    parameters); ``params`` are the backend's options over :attr:`defaults`. ``build_params``
    name the options that change what is written (a change forces a full rebuild); the others
    (``nprobe``, ``refine``, ...) only change how it is searched.

    A new backend is one module in ``matchlens/index/backends/``: the package imports all of its
    modules, so ``@BACKENDS.register("name")`` there is all it takes (see docs/extending.md).
    """

    kind: ClassVar[str] = "backend"
    default_factory: ClassVar[str] = ""
    build_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, factory: str | None = None, uri: str | None = None, **params: Any) -> None:
        self.resolve(params)  # unknown parameters first: the most useful message
        self.factory = (factory or self.default_factory).strip()
        if not self.factory:
            raise ConfigError(f"{self.label()}: the factory string is empty")
        self.uri = uri
        super().__init__(**params)

    def validate(self) -> None:
        """Check the configuration; raise a one-line ConfigError (override)."""

    # --- description -------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        """True when search is exact brute force over ``vectors.npy`` and nothing is written."""
        return False

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``backend`` entry (without the written state)."""
        return {"name": self.name, "factory": self.factory, "uri": self.uri, "params": dict(self.params)}

    def build_key(self) -> str:
        """What must be equal for the previous generation's index to be extended in place."""
        keep = {k: self.params[k] for k in self.build_params}
        return json.dumps([self.name, self.factory, self.uri, keep], sort_keys=True)

    def describe(self) -> str:
        """One line for ``matchlens info``."""
        where = f" at {self.uri}" if self.uri else ""
        return f"{self.name} {self.factory}{where}"

    def configure(self, **params: Any) -> None:
        """Change search-time parameters (``nprobe``, ``efSearch``, ``ef``, ``refine``)."""
        unknown = set(params) - (set(self.defaults) - set(self.build_params))
        if unknown:
            raise ConfigError(f"{self.label()}: {', '.join(sorted(unknown))} cannot be changed at search time")
        self.params.update(params)
        self.validate()

    # --- writer ------------------------------------------------------------------------------
    def check_dim(self, dim: int) -> None:
        """Raise a one-line ConfigError now if vectors of width ``dim`` cannot be indexed (so a
        bad factory string fails before an hour of extraction, not after)."""

    @abstractmethod
    def write(self, job: WriteJob) -> dict[str, Any]:
        """Write the index of ``job.tmp`` (extending the previous one when ``job.delta`` is set);
        return its state for the manifest (``{"state": "trained", ...}`` or ``"pending: ..."``)."""

    def after_commit(self, root: Path, state: dict[str, Any]) -> None:
        """Clean up what the published generation no longer uses (old Milvus collections)."""

    # --- searcher ----------------------------------------------------------------------------
    @abstractmethod
    def open(self, root: Path, gen_dir: Path, state: dict[str, Any]) -> Candidates:
        """A function ``(queries (n, d) float32, k) -> (scores, ids)`` over the generation's index.

        Missing results are id -1. Called lazily, on the first search."""

    def refine_factor(self) -> int:
        """Shortlist length / k for the exact re-ranking (1: none)."""
        return int(self.params.get("refine") or 1)

    def shortlist(self) -> int:
        """Fewest candidates re-ranked exactly when re-ranking (small k still gets a deep shortlist)."""
        return int(self.params.get("shortlist") or 0)


BACKENDS: Registry[type[VectorBackend]] = Registry("vector backend")


def backend_from_dict(entry: dict[str, Any] | None) -> VectorBackend:
    """The backend of a manifest entry (missing entry: the exact FAISS Flat default)."""
    if not entry:
        return BACKENDS.get("faiss")()
    return BACKENDS.get(entry["name"])(entry.get("factory"), entry.get("uri"), **entry.get("params", {}))


def refine_exact(queries: np.ndarray, rows: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate ``rows`` (n, m) of each query exactly by inner product with ``vectors``.

    ``vectors`` may be memory-mapped: only the candidates' rows are read, in place (FAISS
    ``fvec_inner_products_by_idx``, no copy). Returns (scores, rows), each (n, k), best first;
    -1 rows (missing candidates) stay last with score -inf.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    n, m = rows.shape
    scores = _candidate_scores(queries, rows, vectors)
    take = min(k, m)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :take]
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    out_rows = np.full((n, k), -1, dtype=np.int64)
    out_scores[:, :take] = np.take_along_axis(scores, order, axis=1)
    out_rows[:, :take] = np.where(np.isfinite(out_scores[:, :take]), np.take_along_axis(rows, order, axis=1), -1)
    return out_scores, out_rows


def _candidate_scores(queries: np.ndarray, rows: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(n, m) inner products of each query with its candidate rows; -inf where the row is -1."""
    n, m = rows.shape
    scores = np.empty((n, m), dtype=np.float32)
    if vectors.dtype == np.float32 and vectors.flags.c_contiguous and len(vectors):
        import faiss

        faiss.fvec_inner_products_by_idx(  # type: ignore[attr-defined]  # missing from faiss's __init__.pyi
            faiss.swig_ptr(scores), faiss.swig_ptr(queries), faiss.swig_ptr(vectors),
            faiss.swig_ptr(rows), vectors.shape[1], n, m)
        return scores
    step = max(1, REFINE_ROWS // max(m, 1))  # NumPy fallback: bound the gathered block
    for part in in_batches(n, step):
        block = np.asarray(vectors[np.maximum(rows[part], 0)], dtype=np.float32)  # (b, m, d)
        scores[part] = np.einsum("bmd,bd->bm", block, queries[part])
    scores[rows < 0] = -np.inf
    return scores


class Searcher:
    """Search one generation through its backend: candidates, ids → rows, exact re-ranking."""

    def __init__(self, backend: VectorBackend, candidates: Candidates, id_to_row: np.ndarray,
                 vectors: np.ndarray) -> None:
        self.backend = backend
        self._candidates = candidates
        self._id_to_row = id_to_row
        self._vectors = vectors

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n, k), best first; -1 rows (score -inf) when fewer were found.

        With ``refine`` r > 1 the backend is asked for r·k candidates, re-scored exactly."""
        size = len(self._vectors)
        factor = self.backend.refine_factor()
        depth = max(k, min(max(k * factor, self.backend.shortlist() if factor > 1 else 0), size))
        scores, ids = self._candidates(queries, depth)
        rows = rows_of(ids, self._id_to_row)
        if factor > 1:
            return refine_exact(queries, rows, self._vectors, k)
        return _compact(scores, rows, k)


def _compact(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` valid results of each row (order kept), padded with -1 / -inf."""
    order = np.argsort(rows < 0, axis=1, kind="stable")[:, :k]
    rows = np.take_along_axis(rows, order, axis=1)
    scores = np.where(rows >= 0, np.take_along_axis(scores, order, axis=1), -np.inf).astype(np.float32)
    if rows.shape[1] < k:
        pad = k - rows.shape[1]
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return scores, rows


def rows_of(ids: np.ndarray, id_to_row: np.ndarray) -> np.ndarray:
    """Map backend ids to vector rows (-1 for ids this generation does not have)."""
    ids = np.asarray(ids, dtype=np.int64)
    inside = (ids >= 0) & (ids < len(id_to_row))
    out = np.full(ids.shape, -1, dtype=np.int64)
    out[inside] = id_to_row[ids[inside]]
    return out


def sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``min(n, size)`` distinct rows, ascending (memory-mapped reads stay sequential)."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def in_batches(n: int, batch: int):
    """``slice`` objects covering ``range(n)`` in steps of ``batch``."""
    for start in range(0, n, batch):
        yield slice(start, min(start + batch, n))


def flat_candidates(vectors: np.ndarray) -> Candidates:
    """Exact FAISS ``IndexFlatIP`` over ``vectors`` (ids = rows): the search of ``Flat`` and of a
    backend that is not trained yet."""
    import faiss  # deferred: start-up time (see pyproject [tool.matchlens.deferred])

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def candidates(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    return candidates


def open_searcher(backend: VectorBackend, root: Path, gen_dir: Path, state: dict[str, Any], vectors: np.ndarray,
                  ids: np.ndarray) -> Searcher:
    """The searcher of one generation: exact brute force for ``Flat`` and for a backend still
    pending training, else the backend's own (trained) index."""
    if backend.exact or state.get("state") != "trained":
        return Searcher(backend, flat_candidates(vectors), np.arange(len(vectors), dtype=np.int64), vectors)
    id_to_row = np.full(int(ids.max(initial=-1)) + 1, -1, dtype=np.int64)
    id_to_row[ids] = np.arange(len(ids), dtype=np.int64)
    return Searcher(backend, backend.open(root, gen_dir, state), id_to_row, vectors)
