"""``POST /search/relation``: rank the served index by a relation "cube left of sphere" over its
imported boxes (``matchlens import-boxes``), with the relation model stored with the index by
``matchlens train-relations`` (or the one given to :func:`~matchlens.service.app.create_app`).

The model is loaded when the app is created, so a bad model file stops the server at start with a
one-line WeightsError; without a model the route answers 404 and ``GET /index`` says so
(``relations`` is None), so the page hides the relation field. The images' scene-graph embeddings
are computed once per index generation (images added or removed through the API count). Bad
input (an unknown predicate or object) is a 400 with one line listing the known ones.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form
from pydantic import BaseModel, Field

from matchlens.errors import MatchlensError
from matchlens.service.live import LiveIndex

__all__ = ["NoRelationModel", "RelationInfo", "RelationService", "install_relation_routes"]

MAX_RELATION_K = 1000


class NoRelationModel(MatchlensError):
    """``/search/relation`` on a server without a relation model (HTTP 404)."""

    http_status = 404


class RelationInfo(BaseModel):
    model: str = Field(description="The relation model (its kind, categories and predicates).")
    categories: list[str] = Field(description="Subjects and objects a relation may name.")
    predicates: list[str] = Field(description="The geometric predicates.")
    parts: list[str] = Field(description="Query structures a request may choose (default s+o).")


class RelationResult(BaseModel):
    rank: int
    score: float
    id: int
    name: str
    path: str
    image_url: str
    thumbnail_url: str


class RelationResponse(BaseModel):
    relation: str
    parts: str
    results: list[RelationResult]
    timings_ms: dict[str, float]
    k: int
    generation: str
    index_size: int
    notes: list[str] = Field(default=[], description="Stale boxes, categories the model lacks.")


class RelationService:
    """The loaded model and one :class:`~matchlens.queries.rel_search.RelationSearch` per
    (generation, query structure)."""

    def __init__(self, model: Any, source: Path) -> None:
        self.model, self.source = model, source
        self._searchers: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, live: LiveIndex, path: str | os.PathLike | None) -> "RelationService | None":
        """The model at ``path``, else the one stored with the index, else None."""
        from matchlens.queries.rel_train import index_model_path, load_relation_model  # deferred: imports torch

        index = live.snapshot().index
        chosen = Path(path).expanduser() if path else index_model_path(index)
        if path is None and not chosen.is_file():
            return None
        return cls(load_relation_model(chosen), chosen)

    def info(self) -> RelationInfo:
        from matchlens.queries.relations import QUERY_PARTS

        return RelationInfo(model=f"{self.model.describe()} ({self.source.name})", categories=self.model.categories,
                            predicates=self.model.predicates, parts=QUERY_PARTS.names())

    def searcher(self, index: Any, parts: str) -> Any:
        from matchlens.queries.rel_search import RelationSearch

        key = (index.generation, parts)
        with self._lock:  # the images' embeddings are computed once per generation
            if key not in self._searchers:
                if len(self._searchers) >= 8:
                    self._searchers.pop(next(iter(self._searchers)))
                self._searchers[key] = RelationSearch(index, self.model, parts)
            return self._searchers[key]


def install_relation_routes(app: FastAPI, live: LiveIndex, service: RelationService | None) -> None:
    """``POST /search/relation`` (404 without a relation model)."""

    @app.post("/search/relation", response_model=RelationResponse, tags=["search"])
    def search_relation(
        relation: Annotated[str, Form(description="SUBJECT PREDICATE OBJECT, e.g. 'cube left of sphere' "
                                                  "(several: separated by ';').")],
        k: Annotated[int, Form(ge=1, le=MAX_RELATION_K, description="Number of results.")] = 20,
        parts: Annotated[str, Form(description="Triplet parts compared: s+o, s+p+o, s, o or p.")] = "s+o",
    ) -> RelationResponse:
        """Rank the indexed images by a relation between two of their annotated objects (scene-graph
        embeddings; no query image)."""
        if service is None:
            raise NoRelationModel("this server has no relation model: train one with 'matchlens train-relations "
                                  "INDEX' (stored with the index) and restart it")
        snap = live.snapshot()
        searcher = service.searcher(snap.index, parts.strip())
        answer = searcher.relation(relation, k)
        results = [RelationResult(rank=r.rank, score=r.score, id=r.id, name=Path(r.path).name, path=r.path,
                                  image_url=f"/images/{r.id}", thumbnail_url=f"/thumbnails/{r.id}")
                   for r in answer.results]
        return RelationResponse(relation=relation, parts=parts.strip(), results=results, timings_ms=answer.timings_ms,
                                k=k, generation=snap.index.generation, index_size=snap.index.size,
                                notes=searcher.notes())
