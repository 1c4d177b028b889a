"""A search with per-step timings (decode, extract, search, rerank), as the HTTP API reports them.

It runs the steps of :meth:`Index.rank` one by one with the same public pieces (the extractor's
decoder, :meth:`Index.encode_query`, :meth:`Index.search_vectors`, the re-ranking chain), so the
ranking is the one ``index.search`` gives, and times each step.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from PIL import Image

from matchlens.index.index import Index, IndexContext
from matchlens.rerank import QueryInput, Shortlist, chain_depth, describe_chain, parse_chain, run_chain
from matchlens.io.images import load_image
from matchlens.service.uploads import Probe, decode_query, scale_box


@dataclass
class Hit:
    """One ranked result of a timed search."""

    rank: int
    score: float
    id: int
    path: str


@dataclass
class TimedSearch:
    """Ranked hits, the decoded query and how long each step took (milliseconds)."""

    hits: list[Hit]
    query_size: tuple[int, int]              # (width, height) of the decoded, uncropped query
    rerank: str | None                       # the chain as parsed (defaults filled in)
    timings_ms: dict[str, float] = field(default_factory=dict)


@contextmanager
def _timer(timings: dict[str, float], step: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = round(1000 * (time.perf_counter() - start), 3)


def timed_search(index: Index, data: bytes, probe: Probe, box: Sequence[float] | None, k: int,
                 rerank: str | None) -> TimedSearch:
    """Rank ``index`` against the uploaded image ``data`` (already probed), optionally in ``box``.

    Raises the usual one-line errors: ConfigError for a bad chain (checked before any work),
    BoxError for a box off the image, ImageLoadError for undecodable data.
    """
    timings: dict[str, float] = {}
    total_start = time.perf_counter()
    chain = parse_chain(rerank) if rerank else []
    with _timer(timings, "decode"):
        full, image, _ = decode_query(index.extractor, data, probe, box)
    with _timer(timings, "extract"):
        _, vector = index.encode_query(image)  # a decoded image: load_image passes it through
    with _timer(timings, "search"):
        scores, rows = index.search_vectors(vector[None, :], max(k, chain_depth(chain)))
        shortlist = Shortlist(rows[0], scores[0]).valid()
    with _timer(timings, "rerank"):
        if chain:
            # Same cache key as Index.rank gives a query read from bytes: the hash of the bytes.
            query = QueryInput(vector=vector, image=image, sha256=hashlib.sha256(data).hexdigest())
            shortlist = run_chain(chain, query, shortlist, IndexContext(index))
    timings["total"] = round(1000 * (time.perf_counter() - total_start), 3)
    return TimedSearch(_hits(index, shortlist.head(k)), full.size, describe_chain(chain) if chain else None, timings)


def _hits(index: Index, shortlist: Shortlist) -> list[Hit]:
    hits = []
    for score, row in zip(shortlist.scores.tolist(), shortlist.rows.tolist()):
        if row >= 0:
            entry = index.entry_for_row(int(row))
            hits.append(Hit(len(hits) + 1, float(score), entry.id, entry.path))
    return hits


def evidence_query(data: bytes, probe: Probe, box: Sequence[float] | None, max_side: int, max_pixels: int
                   ) -> tuple[Image.Image, Sequence[float] | None]:
    """The query decoded for the evidence view (longest side about ``max_side``, the resolution
    local features are detected at) and the box in its pixel frame."""
    image = load_image(data, max_side=max_side, max_pixels=max_pixels)
    return image, (scale_box(box, probe, image.size) if box is not None else None)
