"""FAISS backends chosen by a factory string: ``Flat`` (exact), ``IVF…,PQ…`` / ``OPQ…`` (compressed,
re-ranked exactly), ``HNSW…`` (graph).

``Flat`` writes nothing: the index keeps today's exact in-memory ``IndexFlatIP`` over
``vectors.npy``. Any other factory string is built with the L2 metric (the vectors are
L2-normalised, so L2 ranks exactly as the inner product, ``q·x = 1 - |q - x|²/2``, and FAISS's
L2 code paths are its best tuned: precomputed IVF-PQ tables, k-means), trained on a random
sample of ``train_size`` rows, filled with every vector under its image id, and written as
``ann.faiss`` into the generation. An ``add`` reads the previous generation's trained index and
adds only the new vectors (IVF: changed or removed images are deleted with ``remove_ids``; HNSW
cannot delete, so a removal rebuilds its graph from all vectors, without any training).

Compressed codes (PQ, SQ) only find candidates: ``refine`` × k of them are re-scored exactly
from the memory-mapped vectors (:func:`~matchlens.index.backends.base.refine_exact`).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from matchlens.components import non_negative_int, optional, positive_int
from matchlens.errors import ConfigError, IndexError_
from matchlens.index.backends.base import (BACKENDS, Candidates, VectorBackend, WriteJob, in_batches,
                                           sample_rows)

INDEX_FILE = "ann.faiss"
ADD_BATCH = 65536


@BACKENDS.register("faiss")
class FaissBackend(VectorBackend):
    """A FAISS index described by a factory string (see the module docstring).

    Parameters: ``train_size`` (rows sampled for training), ``seed`` (of that sample),
    ``nprobe`` (IVF lists visited per query), ``efSearch`` (HNSW beam width), ``refine``
    (shortlist factor of the exact re-ranking; default 8 for compressed codes, 1 otherwise).
    """

    default_factory = "Flat"
    defaults = {"train_size": 100_000, "seed": 0, "nprobe": 32, "efSearch": 128, "refine": None}
    build_params = ("train_size", "seed")

    def validate(self) -> None:
        """Integers where needed; the factory string parses (checked again against the real width)."""
        for key in ("train_size", "nprobe", "efSearch"):
            self.check(key, positive_int)
        self.check("seed", non_negative_int)
        self.check("refine", optional, positive_int)
        if self.uri:
            raise ConfigError("the faiss backend stores its index in the index folder; --uri is for --backend milvus")
        _check_sizes(self.factory)

    @property
    def exact(self) -> bool:
        return self.factory.replace(" ", "").lower() in ("flat", "flatip", "idmap,flat")

    def refine_factor(self) -> int:
        if self.params["refine"] is not None:
            return int(self.params["refine"])
        return 8 if _compressed(self.factory) else 1

    def describe(self) -> str:
        extra = []
        if not self.exact:
            if "IVF" in self.factory.upper():
                extra.append(f"nprobe={self.params['nprobe']}")
            if "HNSW" in self.factory.upper():
                extra.append(f"efSearch={self.params['efSearch']}")
            extra.append(f"refine={self.refine_factor()}")
        return f"faiss {self.factory}" + (f" ({', '.join(extra)})" if extra else " (exact)")

    # --- writer ------------------------------------------------------------------------------
    def check_dim(self, dim: int) -> None:
        """Build (empty, untrained) the index for ``dim``-d vectors: a one-line error if impossible."""
        if not self.exact:
            self._new_index(int(dim))

    def write(self, job: WriteJob) -> dict[str, Any]:
        """Write ``ann.faiss`` (nothing for Flat); extend the previous one when possible."""
        n, d = job.vectors.shape
        if self.exact:
            return {"state": "exact"}
        index, state = None, None
        if job.delta is not None and (job.previous_state or {}).get("state") == "trained":
            index, state = self._extend(job)
        if index is None:
            index, state = self._train(job)
            if index is None:
                return state
            self._add(index, job.vectors, job.ids, np.arange(n), job)
        assert state is not None  # _extend and _train return a state with every index
        faiss = _faiss()
        faiss.write_index(index, str(job.tmp / INDEX_FILE))
        state.update(ntotal=int(index.ntotal), code_bytes=_code_bytes(index), dim=int(d))
        return state

    def _train(self, job: WriteJob) -> tuple[Any, dict[str, Any]]:
        """(empty trained index, state) or (None, pending state) when there are too few vectors."""
        faiss = _faiss()
        n, d = job.vectors.shape
        index = self._new_index(d)
        needed = _min_training(index)
        if n < needed:
            return None, {"state": f"pending: needs {needed} vectors to train, has {n}; searching exactly meanwhile"}
        start = time.monotonic()
        if not index.is_trained:
            rows = sample_rows(n, self.params["train_size"], self.params["seed"])
            sample = np.ascontiguousarray(job.vectors[rows], dtype=np.float32)
            tick = job.progress(1, f"training {self.factory} on {len(rows)} vectors") if job.progress else None
            # FAISS prints a warning per k-means run on small samples (OPQ runs hundreds): hide them.
            with _quiet_stderr(len(rows) < 39 * needed):
                index.train(sample)
            if tick:
                tick(1)
            del sample
        trained_on = 0 if index.is_trained and needed <= 1 else min(n, self.params["train_size"])
        if not _supports_ids(index):
            index = faiss.IndexIDMap(index)
        return index, {"state": "trained", "trained_on": trained_on, "mode": "built",
                       "train_seconds": round(time.monotonic() - start, 3)}

    def _extend(self, job: WriteJob) -> tuple[Any, dict[str, Any] | None]:
        """(previous index with the delta applied, state) or (None, None) when it must be rebuilt."""
        # write() calls this only for a delta on a trained previous generation
        assert job.delta is not None and job.previous_dir is not None and job.previous_state is not None
        faiss = _faiss()
        path = job.previous_dir / INDEX_FILE
        if not path.is_file():
            return None, None
        index = faiss.read_index(str(path))
        if index.d != job.vectors.shape[1]:
            return None, None
        remove = np.ascontiguousarray(job.delta.remove_ids, dtype=np.int64)
        if len(remove):
            try:
                index.remove_ids(remove)
            except RuntimeError:  # HNSW: no deletion; rebuild the graph (training is kept only for IVF)
                return None, None
        self._add(index, job.vectors, job.ids, job.delta.add_rows, job)
        previous = job.previous_state
        return index, {"state": "trained", "trained_on": previous.get("trained_on", 0), "mode": "incremental",
                       "added": int(len(job.delta.add_rows)), "removed": int(len(remove))}

    def _new_index(self, d: int):
        faiss = _faiss()
        try:
            index = faiss.index_factory(d, self.factory, faiss.METRIC_L2)
        except RuntimeError as exc:
            raise ConfigError(f"faiss factory {self.factory!r} cannot index {d}-d vectors: {_reason(exc)}") from None
        inner = _unwrap(index)
        for part in (inner, getattr(inner, "storage", None)):
            part = faiss.downcast_index(part) if part is not None else None
            if part is not None and hasattr(part, "do_polysemous_training"):
                # Polysemous codes only speed up Hamming filtering, which is not used; their training
                # (annealing the code order) costs ~30 CPU-seconds per PQ even on tiny samples.
                part.do_polysemous_training = False
        return index

    @staticmethod
    def _add(index, vectors: np.ndarray, ids: np.ndarray, rows: np.ndarray, job: WriteJob) -> None:
        """Add ``vectors[rows]`` under ``ids[rows]`` in batches (memory-mapped reads, progress)."""
        rows = np.asarray(rows, dtype=np.int64)
        advance = job.progress(len(rows), "adding vectors") if job.progress and len(rows) else None
        for part in in_batches(len(rows), ADD_BATCH):
            chunk = rows[part]
            block = np.ascontiguousarray(vectors[chunk] if len(chunk) != len(vectors) else vectors, dtype=np.float32)
            index.add_with_ids(block, np.ascontiguousarray(ids[chunk], dtype=np.int64))
            if advance:
                advance(len(chunk))

    # --- searcher ----------------------------------------------------------------------------
    def open(self, root: Path, gen_dir: Path, state: dict[str, Any]) -> Candidates:
        """Read ``ann.faiss``; the returned function converts L2 distances back to inner products."""
        faiss = _faiss()
        path = gen_dir / INDEX_FILE
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            raise IndexError_(f"index generation '{gen_dir}' is corrupt: {INDEX_FILE} cannot be read") from None

        def candidates(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            self._set_search_params(index)
            dist, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
            return (1.0 - dist / 2.0).astype(np.float32), ids

        return candidates

    def _set_search_params(self, index) -> None:
        faiss = _faiss()
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = min(self.params["nprobe"], ivf.nlist)
        hnsw = _find_hnsw(index)
        if hnsw is not None:
            hnsw.hnsw.efSearch = self.params["efSearch"]


def _faiss():
    import faiss  # deferred: importing FAISS costs ~0.3 s that `matchlens info` does not need

    return faiss


def _reason(exc: RuntimeError) -> str:
    """The readable part of a FAISS C++ error ("Error in <signature> at <file:line>: <reason>")."""
    text = " ".join(str(exc).split())
    if " at " in text and ": " in text:
        text = text.split(": ", 1)[1]  # drop the C++ location
    if "failed: " in text:
        text = text.split("failed: ", 1)[1]
    return text.removeprefix("Error: ")[:200] or "invalid"


# FAISS asserts (aborting the process) rather than raising on some degenerate sizes.
_MIN_SIZES = {"HNSW": 2, "IVF": 1, "PQ": 1, "NSG": 2}


def _check_sizes(factory: str) -> None:
    """One-line ConfigError for a size FAISS would abort on (``HNSW0``, ``HNSW1``, ``IVF0``)."""
    for name, number in re.findall(r"(HNSW|IVF|PQ|NSG)(\d+)", factory.upper()):
        if int(number) < _MIN_SIZES[name]:
            raise ConfigError(f"faiss factory {factory!r}: {name}{number} is too small "
                              f"({name} needs at least {_MIN_SIZES[name]})")


def _compressed(factory: str) -> bool:
    """True when the factory's codes are lossy (PQ, SQ, LSH, RaBitQ): their order needs re-ranking."""
    text = factory.upper()
    return any(tag in text for tag in ("PQ", "SQ", "LSH", "RABITQ", "RQ", "LSQ"))


def _min_training(index) -> int:
    """Fewest vectors FAISS accepts to train ``index`` (k-means needs one point per centroid)."""
    faiss = _faiss()
    if index.is_trained:
        return 1
    needed = 1
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        needed = max(needed, int(ivf.nlist))
    inner = _unwrap(index)
    for obj in (inner, getattr(inner, "storage", None)):
        pq = getattr(faiss.downcast_index(obj), "pq", None) if obj is not None else None
        if pq is not None:
            needed = max(needed, int(pq.ksub))
    return max(needed, 2)


def _unwrap(index):
    """The innermost index under IDMap / PreTransform wrappers, downcast."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.index)
    return index


def _find_hnsw(index):
    inner = _unwrap(index)
    return inner if hasattr(inner, "hnsw") else None


def _supports_ids(index) -> bool:
    """IVF indexes store ids natively; the others are wrapped in an IndexIDMap."""
    return _faiss().try_extract_index_ivf(index) is not None


def _code_bytes(index) -> int:
    """Bytes per vector of the searchable codes (without ids, lists or graph links)."""
    faiss = _faiss()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return int(ivf.code_size)
    inner = _unwrap(index)
    storage = getattr(inner, "storage", None)
    if storage is not None:
        return int(faiss.downcast_index(storage).code_size)
    return int(getattr(inner, "code_size", 4 * index.d))


@contextlib.contextmanager
def _quiet_stderr(enabled: bool):
    """Silence C++ writes to stderr (FAISS k-means warnings) while ``enabled``."""
    if not enabled:
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
