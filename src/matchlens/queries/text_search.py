"""Text queries through the search pipeline: ``matchlens search IDX --text "..." [--rerank camp:k=100]``.

:class:`TextQueryEncoder` stands in for the pipeline's image encoder: it turns the query's text
into the joint embedding's vector of the index's own descriptor space (searched by the index's
backend) and hands the text, with its model and region features, to re-rankers (CAMP, CAAN) in
``QueryInput.image``. Everything else — shortlist, re-ranking chain, results, timings — is the
one :class:`~matchlens.pipeline.search.SearchPipeline`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from matchlens.pipeline.encoder import timer
from matchlens.pipeline.results import SearchResponse
from matchlens.pipeline.search import Query, SearchPipeline
from matchlens.queries.text_data import RegionFeatures
from matchlens.queries.text_model import TextModel, check_text
from matchlens.queries.text_rerank import TextQuery

__all__ = ["TextQueryEncoder", "TextSearch", "open_text_search"]


class TextQueryEncoder:
    """The pipeline's query encoder for text queries (duck-types :class:`QueryEncoder`)."""

    def __init__(self, model: TextModel, regions: RegionFeatures) -> None:
        self.model, self.regions = model, regions

    def encode(self, query: Any, box: Sequence[float] | None = None, keep_image: bool = False,
               timings: dict[str, float] | None = None) -> tuple[TextQuery | None, np.ndarray]:
        """(the text query for re-rankers if ``keep_image``, its vector in the index's space)."""
        steps: dict[str, float] = {} if timings is None else timings
        with timer(steps, "decode"):
            text = check_text(query, self.model.encoder)
        with timer(steps, "extract"):
            vector = self.model.query_vectors([text])[0]
        return (TextQuery(text, self.model, self.regions) if keep_image else None), vector


class TextSearch:
    """Text search over one index with one text model (checked against the index's pipeline)."""

    def __init__(self, index: Any, model: TextModel) -> None:
        model.check(index)
        self.index, self.model = index, model
        regions = model.regions or {}
        self.regions = RegionFeatures(index, regions.get("source", "grid"), regions.get("coco"),
                                      int(regions.get("side", 256)), int(regions.get("levels", 3)),
                                      int(regions.get("max_regions", 16)))
        self.pipeline = SearchPipeline(index.store, TextQueryEncoder(model, self.regions))  # type: ignore[arg-type]

    def run(self, text: str, k: int = 20, rerank: Any = None) -> SearchResponse:
        """Answer one text query (results with per-step timings)."""
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()  # the query is not a file: never hashed as one
        return self.pipeline.run(Query(text, name=text, sha256=sha), k, rerank)


def open_text_search(index: Any, model_path: str | Path) -> TextSearch:
    """Load ``model_path`` (a ``matchlens train-text`` file) for ``index``."""
    return TextSearch(index, TextModel.load(model_path))
