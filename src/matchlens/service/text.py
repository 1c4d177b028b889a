"""``POST /search/text``: rank the served index by a sentence (``serve --text-model MODEL``).

The text model (``matchlens train-text``) is loaded and checked against the served index when the
app is created, so a model of another pipeline stops the server at start with one line. Each
request searches the generation that is current through the same search pipeline as
``matchlens search IDX --text``; ``rerank`` may name ``camp:k=100`` / ``caan:k=100`` when the model
holds them. An empty text or one of unknown words only is a 400 with one line; a server without a
text model answers 404.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form
from pydantic import BaseModel, Field

from matchlens.errors import MatchlensError
from matchlens.service.live import LiveIndex

__all__ = ["NoTextModel", "TextSearchResponse", "install_text_routes", "load_text_model"]

MAX_TEXT_K = 1000
MAX_TEXT_CHARS = 1000


class NoTextModel(MatchlensError):
    """``/search/text`` on a server started without ``--text-model`` (HTTP 404)."""

    http_status = 404


class TextSearchResponse(BaseModel):
    text: str
    results: list[dict[str, Any]] = Field(description="rank, score, id, name, path, image_url, thumbnail_url.")
    timings_ms: dict[str, float]
    k: int
    rerank: str | None
    generation: str
    index_size: int


def load_text_model(path: str | Path | None, live: LiveIndex) -> Any:
    """The text model (None without one), refused now if it belongs to another pipeline."""
    if path is None:
        return None
    from matchlens.queries.text_model import TextModel  # deferred: imports torch

    model = TextModel.load(path)
    model.check(live.snapshot().index)
    return model


def install_text_routes(app: FastAPI, live: LiveIndex, model: Any) -> None:
    """Add ``POST /search/text`` to ``app`` (answers 404 when ``model`` is None)."""

    @app.post("/search/text", response_model=TextSearchResponse, tags=["search"])
    def search_text(
        text: Annotated[str, Form(max_length=MAX_TEXT_CHARS, description="The sentence, e.g. 'a large red cube at top-left'.")],
        k: Annotated[int, Form(ge=1, le=MAX_TEXT_K, description="Number of results.")] = 20,
        rerank: Annotated[str | None, Form(description="Re-ranking chain, e.g. camp:k=100 or caan:k=100.")] = None,
    ) -> TextSearchResponse:
        """Rank the indexed images by a sentence: the joint embedding's vector searched in the
        index's own descriptor space, optionally re-ranked by CAMP / CAAN."""
        if model is None:
            raise NoTextModel("this server has no text model: start it with 'matchlens serve IDX --text-model MODEL'")
        from matchlens.queries.text_search import TextSearch  # deferred: imports torch

        snap = live.snapshot()
        answer = TextSearch(snap.index, model).run(text, k, rerank.strip() if rerank and rerank.strip() else None)
        results = [{"rank": r.rank, "score": r.score, "id": r.id, "name": Path(r.path).name, "path": r.path,
                    "image_url": f"/images/{r.id}", "thumbnail_url": f"/thumbnails/{r.id}"} for r in answer.results]
        return TextSearchResponse(text=text.strip(), results=results, timings_ms=answer.timings_ms, k=k,
                                  rerank=answer.rerank, generation=snap.index.generation, index_size=snap.index.size)
