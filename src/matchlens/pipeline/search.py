"""The one search pipeline: encode → shortlist → re-rank → results, each step timed.

The Python API (:meth:`matchlens.Index.search`), the CLI (single and batch queries), the
evaluator, the HTTP service and every later capability call :class:`SearchPipeline`; nothing else
writes this sequence.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np
from PIL import Image

from matchlens.components import positive_int
from matchlens.fusion.expression import CNN, FusionSpec, parse_fusion
from matchlens.index.vectors import VectorIndex
from matchlens.io.images import checked_box, parse_box
from matchlens.pipeline.context import IndexContext
from matchlens.pipeline.encoder import QueryEncoder, content_sha, timer
from matchlens.pipeline.results import SearchResponse, SearchResult
from matchlens.pipeline.sources import FusedRanking, GlobalRanker
from matchlens.rerank import QueryInput, Reranker, Shortlist, chain_depth, describe_chain, parse_chain, run_chain

__all__ = ["Query", "SearchPipeline", "STEPS"]

STEPS = ("load_model", "decode", "extract", "search", "rerank")  # timed steps ("load_model" only when it happens; "total" is added)
Chain = Union[str, Sequence[Reranker], None]  # a chain as text or as reranker objects


@dataclass
class Query:
    """One query: a file path, bytes, PIL image or array; optionally a box, a display name and
    the content hash of its bytes (the cache key of its local features; computed when needed)."""

    source: Any
    box: Sequence[float] | None = None
    name: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.box, str):  # the CLI syntax "x0,y0,x1,y1", not four characters
            self.box = parse_box(self.box)
        elif self.box is not None:
            self.box = checked_box(self.box)


class SearchPipeline:
    """Search one index generation: by its global descriptor, or by a stored kind / a fusion
    (``fuse``, e.g. ``"cnn+asmk:ghm"``), re-ranked by a chain (``"sv:k=100,aqe:k=2"``)."""

    def __init__(self, index: VectorIndex, encoder: QueryEncoder | None = None, fuse: str | FusionSpec | None = None,
                 progress: Any = None) -> None:
        self.index = index
        self.encoder = encoder or QueryEncoder(index)
        fusion = parse_fusion(fuse) if isinstance(fuse, str) else fuse
        self.ranking = (FusedRanking(index, fusion, self._vector, progress=progress)
                        if fusion is not None and fusion.kinds != [CNN] else None)
        self.context = IndexContext(index)
        self.global_ranker = GlobalRanker(index, self._vector)

    def describe(self) -> str:
        """The pipeline label: descriptor, and kinds with their fusion when fused."""
        cnn = self.index.spec.describe()
        return self.ranking.describe(cnn) if self.ranking is not None else cnn

    # --- one query ---------------------------------------------------------------------------
    def search(self, query: Any, box: Sequence[float] | None = None, k: int = 20,
               rerank: Chain = None) -> list[SearchResult]:
        """The top ``k`` results for ``query`` (path, bytes, PIL image or array)."""
        return self.run(Query(query, box), k, rerank).results

    def run(self, query: Query, k: int = 20, rerank: Chain = None) -> SearchResponse:
        """Answer one query: results with per-step timings (ms)."""
        k = positive_int(k, "k")  # k=0 is a mistake, not an empty answer
        chain = as_chain(rerank)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        shortlist = self._rank(query, k, chain, timings)
        results = self.results(shortlist.head(k))
        timings["total"] = round(1000 * (time.perf_counter() - start), 3)
        name = query.name or (str(query.source) if isinstance(query.source, (str, os.PathLike)) else None)
        return SearchResponse(results, name,
                              tuple(query.box) if query.box is not None else None,
                              rerank=describe_chain(chain) if chain else None, timings_ms=timings)

    def rank(self, query: Any, box: Sequence[float] | None = None, depth: int = 20, rerank: Chain = None) -> Shortlist:
        """The query's ranking (rows and scores, best first) of at least ``depth`` entries (all
        images at most), re-ranked; its head does not depend on ``depth``."""
        return self._rank(Query(query, box), positive_int(depth, "depth"), as_chain(rerank), {})

    def run_many(self, queries: Iterable[Query], k: int = 20, rerank: Chain = None) -> Iterator[SearchResponse]:
        """Answer many queries with one model load, in order (the chain is parsed once)."""
        k = positive_int(k, "k")  # k=0 is a mistake, not an empty answer
        chain = as_chain(rerank)
        for query in queries:
            yield self.run(query, k, chain)

    # --- steps -------------------------------------------------------------------------------
    def _rank(self, query: Query, depth: int, chain: list[Reranker], timings: dict[str, float]) -> Shortlist:
        depth = max(1, depth, chain_depth(chain))
        keep_image = any(r.needs_image for r in chain)
        image: Image.Image | None = None
        vector = np.zeros(0, np.float32)  # only read when encoded below
        if self.ranking is None or chain:
            image, vector = self.encoder.encode(query.source, query.box, keep_image, timings)
        with timer(timings, "search"):
            if self.ranking is None:
                shortlist = Shortlist(*self.global_ranker.shortlist(vector, depth))
            else:
                shortlist = self.ranking.rank(query.source, query.box, depth)
        with timer(timings, "rerank"):
            if chain:
                sha = (query.sha256 or content_sha(query.source)) if image is not None else None
                shortlist = run_chain(chain, QueryInput(vector=vector, image=image, sha256=sha), shortlist,
                                      self.context)
        return shortlist

    def _vector(self, query: Any, box: Sequence[float] | None) -> np.ndarray:
        return self.encoder.encode(query, box)[1]

    def results(self, shortlist: Shortlist) -> list[SearchResult]:
        """Ranked :class:`SearchResult` of a shortlist (rows < 0, backend padding, dropped)."""
        out: list[SearchResult] = []
        for score, row in zip(shortlist.scores.tolist(), shortlist.rows.tolist()):
            if row >= 0:
                entry = self.index.entry_for_row(int(row))
                out.append(SearchResult(rank=len(out) + 1, score=float(score), id=entry.id, path=entry.path))
        return out


def as_chain(rerank: Chain) -> list[Reranker]:
    """A re-ranking chain from its text (validated before any work) or reranker objects."""
    if isinstance(rerank, str):
        return parse_chain(rerank)
    return list(rerank or [])
