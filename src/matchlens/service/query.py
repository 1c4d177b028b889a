"""A search of an uploaded image through the index's search pipeline, as the HTTP API runs it:
the upload is probed and decoded here (size limits, box in the upright frame), then
:meth:`SearchPipeline.run` ranks it and reports its own per-step timings."""

from __future__ import annotations

import hashlib
import time
from typing import Sequence

from PIL import Image

from matchlens.io.images import load_image
from matchlens.pipeline import Index, Query, SearchResponse
from matchlens.pipeline.search import SearchPipeline, as_chain
from matchlens.regional import open_regional, read_weights
from matchlens.regional.search import RegionalMatch, RegionalPlan, compare_results, rows_of, weigh
from matchlens.service.uploads import Probe, decode_query, scale_box

__all__ = ["evidence_query", "regional_search", "timed_search"]


def timed_search(index: Index, data: bytes, probe: Probe, box: Sequence[float] | None, k: int,
                 rerank: str | None, pipeline: SearchPipeline | None = None) -> SearchResponse:
    """Rank ``index`` against the uploaded image ``data`` (already probed), optionally in ``box``,
    through ``pipeline`` (default: the index's own; a composed one for ``modify``).

    Raises the usual one-line errors: ConfigError for a bad chain (checked before any work),
    BoxError for a box off the image, ImageLoadError for undecodable data.
    """
    chain = as_chain(rerank)
    start = time.perf_counter()
    full, image, _ = decode_query(index.extractor, data, probe, box)
    decoded = 1000 * (time.perf_counter() - start)
    # The hash of the bytes: the same local-feature cache key as a search of the file gives.
    answer = (pipeline or index.pipeline).run(Query(image, sha256=hashlib.sha256(data).hexdigest()), k, chain)
    answer.timings_ms["decode"] = round(decoded + answer.timings_ms.get("decode", 0.0), 3)
    answer.timings_ms["total"] = round(1000 * (time.perf_counter() - start), 3)
    answer.query_size = full.size
    answer.box = tuple(box) if box is not None else None
    return answer


def regional_search(index: Index, data: bytes, probe: Probe, box: Sequence[float] | None, k: int,
                    rerank: str | None, name: str = "regional") -> tuple[SearchResponse, RegionalPlan, list[RegionalMatch]]:
    """Like :func:`timed_search`, ranked by the index's regional kind (uniform λ: Σ_r cos / R)
    through the same pipeline, with each result's per-region cosines, verdict and region boxes.
    One-line IndexError_ when the index has no regional kind."""
    chain = as_chain(rerank)
    open_regional(index, name)  # a missing kind fails before any work
    start = time.perf_counter()
    full, image, _ = decode_query(index.extractor, data, probe, box)
    decoded = 1000 * (time.perf_counter() - start)
    searcher = index.searcher(name)  # brings the stored kind up to date with this generation
    kind = open_regional(index, name)
    plan = weigh(searcher, kind, read_weights(None, kind.names, kind.layout))
    answer = searcher.run(Query(image, sha256=hashlib.sha256(data).hexdigest()), k, chain)
    matches = compare_results(plan, kind.query_code(image), rows_of(index.store, [r.id for r in answer.results]))
    answer.timings_ms["decode"] = round(decoded + answer.timings_ms.get("decode", 0.0), 3)
    answer.timings_ms["total"] = round(1000 * (time.perf_counter() - start), 3)
    answer.query_size = full.size
    answer.box = tuple(box) if box is not None else None
    return answer, plan, matches


def evidence_query(data: bytes, probe: Probe, box: Sequence[float] | None, max_side: int, max_pixels: int
                   ) -> tuple[Image.Image, Sequence[float] | None]:
    """The query decoded for the evidence view (longest side about ``max_side``, the resolution
    local features are detected at) and the box in its pixel frame."""
    image = load_image(data, max_side=max_side, max_pixels=max_pixels)
    return image, (scale_box(box, probe, image.size) if box is not None else None)
