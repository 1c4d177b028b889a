"""The query side of a pipeline: decode a query, describe it, whiten it like the index.

Vectors of query files are memoised (by path, size, mtime and box), so repeated queries —
evaluations, re-ranking sweeps, batch search — skip the network.
"""

from __future__ import annotations

import hashlib
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from matchlens.extract import open_query_encoder
from matchlens.index.vectors import VectorIndex
from matchlens.errors import MatchlensError
from matchlens.io.collection import file_memo_key
from matchlens.io.images import open_regular_file
from matchlens.whitening import load_whitening

__all__ = ["QueryEncoder", "content_sha", "timer"]

MEMO_SIZE = 4096


class QueryEncoder:
    """Turn a query (path, bytes, PIL image or array; optional box) into the index's searchable vector."""

    def __init__(self, index: VectorIndex) -> None:
        self.index = index
        self._extractor: Any = None
        self._whitening: Any = None
        self._memo: dict[tuple, np.ndarray] = {}

    @property
    def extractor(self) -> Any:
        """The extractor of the index's spec (loaded on first use): the index's exported network
        when it has one (no PyTorch import), else the PyTorch extractor."""
        if self._extractor is None:
            self._extractor = open_query_encoder(self.index.spec, self.index.model_dir())
        return self._extractor

    @property
    def loaded(self) -> bool:
        """True once the extractor (network and runtime) is loaded."""
        return self._extractor is not None

    def load(self, query: Any, box: Sequence[float] | None = None) -> Image.Image:
        """The decoded query, upright, cropped to ``box``."""
        return self.extractor.load(query, box)

    def vector_of_image(self, image: Image.Image) -> np.ndarray:
        """The searchable vector of a decoded image."""
        return self.whiten(self.extractor.describe_image(image)[None, :])[0]

    def whiten(self, raw: np.ndarray) -> np.ndarray:
        """Raw descriptors (n, D) → searchable vectors, with the index's fitted whitening."""
        path = self.index.whitening_file()
        if path is None:
            return raw.astype(np.float32)
        if self._whitening is None:
            self._whitening = load_whitening(path)  # pcaw or lw, by the kind stored
        return self._whitening.transform(raw)

    def encode(self, query: Any, box: Sequence[float] | None = None, keep_image: bool = False,
               timings: dict[str, float] | None = None) -> tuple[Image.Image | None, np.ndarray]:
        """(decoded query if ``keep_image``, searchable vector); with ``timings``, the milliseconds
        of ``load_model`` (when it happens), ``decode`` and ``extract`` are recorded there."""
        steps: dict[str, float] = {} if timings is None else timings
        cached = None if keep_image else self.cached(query, box)
        if cached is not None:
            steps["decode"] = steps["extract"] = 0.0
            return None, cached
        if not self.loaded:
            with timer(steps, "load_model"):  # once per encoder: the first query pays it
                _ = self.extractor  # loads the network and its runtime
        with timer(steps, "decode"):
            image = self.load(query, box)
        with timer(steps, "extract"):
            vector = self.vector_of_image(image)
        self.remember(query, box, vector)
        return (image if keep_image else None), vector

    def cached(self, query: Any, box: Sequence[float] | None = None) -> np.ndarray | None:
        """The memoised vector of a query file (None for in-memory queries or a miss)."""
        key = file_memo_key(query, box)
        return self._memo.get(key) if key is not None else None

    def remember(self, query: Any, box: Sequence[float] | None, vector: np.ndarray) -> None:
        """Memoise the vector of a query file (in-memory queries are not memoised)."""
        key = file_memo_key(query, box)
        if key is None:
            return
        if len(self._memo) >= MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = vector


def content_sha(query: Any) -> str | None:
    """sha256 of a query given as a file or bytes (a cache key for its local features)."""
    try:
        if isinstance(query, (bytes, bytearray)):
            return hashlib.sha256(query).hexdigest()
        if isinstance(query, (str, os.PathLike)):
            digest = hashlib.sha256()
            with open_regular_file(query) as handle:  # never blocks on a FIFO
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            return digest.hexdigest()
    except (OSError, MatchlensError):
        return None
    return None


@contextmanager
def timer(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record the milliseconds the block takes as ``timings[step]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = round(1000 * (time.perf_counter() - start), 3)
