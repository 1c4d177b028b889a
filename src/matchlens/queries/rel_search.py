"""Retrieval by relation queries: the query triplet(s) and every image's scene graph embedded by
the trained network, images ranked by the similarity S = 1 / d (d: L2 distance) of the query
triplet to the image's closest triplet (the paper's Eq. 1), summed over the query's triplets.

Which parts of a triplet embedding are compared is the paper's query structure
(:data:`QUERY_PARTS`): ``s+o`` (its best, with a Triplet model), ``s+p+o``, ``s`` or ``o`` alone
(Baseline-s/-o) and ``p`` alone (Baseline-p). A query triplet is embedded as a graph of its own
(two objects, one edge); an image's triplets within the graph of its boxes.

:class:`RelationSearch` runs these rankings through the one :class:`SearchPipeline` (its search
step), so a relation query answers with the same :class:`SearchResponse` and timings as a photo.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from matchlens.errors import ConfigError, IndexError_, WeightsError
from matchlens.pipeline import Index, Query, SearchPipeline, SearchResponse
from matchlens.pipeline.search import Chain
from matchlens.queries.coco import boxes_file, read_boxes
from matchlens.queries.rel_train import RelationModel, Scene, graphs_of, index_model_path, load_relation_model
from matchlens.queries.relations import PREDICATES, QUERY_PARTS, Relation, parse_relations
from matchlens.queries.scenegraph import Graphs
from matchlens.rerank import Shortlist

__all__ = ["RelationRanking", "RelationSearch", "SceneEmbeddings", "embed_relations",
           "embed_scenes", "relation_scores", "relation_searcher"]


_CHUNK = 4096  # database triplets compared at once (bounds the distance matrix)


class SceneEmbeddings:
    """(s, p, o) embeddings of every triplet of a set of scenes, and the scene of each triplet."""

    def __init__(self, s: np.ndarray, p: np.ndarray, o: np.ndarray, owner: np.ndarray, scenes: int) -> None:
        self.parts = (s, p, o)
        self.owner = owner
        self.scenes = scenes

    def select(self, structure: str) -> np.ndarray:
        """The compared vectors of every triplet for a query structure (``s+o``, ...)."""
        return np.concatenate([self.parts[i] for i in QUERY_PARTS.get(structure)], axis=1)


@torch.no_grad()
def _embed(model: RelationModel, graphs: Graphs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s, p, o = model.net.triplet_embeddings(graphs)
    return s.numpy(), p.numpy(), o.numpy()


def embed_scenes(model: RelationModel, scenes: Sequence[Scene], batch: int = 256) -> SceneEmbeddings:
    """Embed the triplets of every scene (each scene's graph from its boxes)."""
    dim = model.net.config["dim"]
    parts: list[list[np.ndarray]] = [[], [], []]
    owners = []
    for begin in range(0, len(scenes), batch):
        graphs, owner = graphs_of(scenes[begin:begin + batch], model.max_objects)
        for store, values in zip(parts, _embed(model, graphs)):
            store.append(values)
        owners.append(owner + begin)
    joined = [np.concatenate(p) if p else np.zeros((0, dim), np.float32) for p in parts]
    return SceneEmbeddings(joined[0], joined[1], joined[2], np.concatenate(owners) if owners else np.zeros(0, np.int64),
                           len(scenes))


def embed_relations(model: RelationModel, relations: Sequence[Relation]) -> SceneEmbeddings:
    """Embed each query relation as the graph it implies, built as an image's graph is: two
    objects and both ordered pairs (⟨s, p, o⟩ and ⟨o, inverse of p, s⟩); the first is the query."""
    category = {name: i for i, name in enumerate(model.categories)}
    predicate = {name: i for i, name in enumerate(PREDICATES.ordered())}
    n = len(relations)
    objects = torch.tensor([category[r.subject] for r in relations] + [category[r.object] for r in relations],
                           dtype=torch.long)
    forward = [[i, predicate[r.predicate], n + i] for i, r in enumerate(relations)]
    backward = [[n + i, predicate[PREDICATES.get(r.predicate).inverse], i] for i, r in enumerate(relations)]
    triplets = torch.tensor(forward + backward, dtype=torch.long).reshape(-1, 3)
    s, p, o = _embed(model, Graphs(objects, triplets, torch.cat([torch.arange(n), torch.arange(n)])))
    return SceneEmbeddings(s[:n], p[:n], o[:n], np.arange(n), n)


def relation_scores(query: SceneEmbeddings, database: SceneEmbeddings, structure: str = "s+o") -> np.ndarray:
    """Per scene of ``database``: Σ over query triplets of max over the scene's triplets of 1 / d
    (scenes without triplets score 0)."""
    q = torch.from_numpy(query.select(structure))
    db = database.select(structure)
    total = np.zeros(database.scenes, np.float64)
    for i in range(len(q)):
        best = np.zeros(database.scenes, np.float64)
        for begin in range(0, len(db), _CHUNK):
            d = torch.cdist(q[i:i + 1], torch.from_numpy(db[begin:begin + _CHUNK]))[0].numpy().astype(np.float64)
            np.maximum.at(best, database.owner[begin:begin + _CHUNK], 1.0 / (d + 1e-6))
        total += best
    return total


class RelationRanking:
    """The search step of a relation query over an index's annotated images (rows without boxes
    rank last). The images' embeddings are computed once per generation."""

    def __init__(self, index: Index, model: RelationModel, structure: str = "s+o") -> None:
        QUERY_PARTS.get(structure)  # a bad structure fails before any work
        self.index, self.model, self.structure = index, model, structure
        boxes = read_boxes(index.store)
        known = {name: i for i, name in enumerate(model.categories)}
        mapping = np.array([known.get(name, -1) for name in boxes.categories], np.int64)
        self.rows = np.array(sorted(boxes.rows), np.int64)
        self.scenes: list[Scene] = []
        for row in self.rows.tolist():
            b, labels = boxes.rows[row]
            mine = mapping[labels] if len(labels) else labels
            keep = mine >= 0  # categories the model never saw have no embedding
            self.scenes.append((b[keep], mine[keep]))
        self.stale = boxes.stale
        self.unknown = [name for name, i in zip(boxes.categories, mapping) if i < 0]
        if not any(len(s[0]) >= 2 for s in self.scenes):
            raise IndexError_(f"index '{index.root}' has no image with two annotated boxes of the model's categories: "
                              "nothing can be ranked by a relation")
        self._database: SceneEmbeddings | None = None

    def describe(self, cnn: str) -> str:
        """The search step's label."""
        return f"relations ({self.structure}) by {self.model.describe()} over {len(self.rows)} annotated images"

    def database(self) -> SceneEmbeddings:
        """The embeddings of every annotated image's triplets (computed on first use)."""
        if self._database is None:
            self._database = embed_scenes(self.model, self.scenes)
        return self._database

    def parse(self, text: str) -> list[Relation]:
        """The query's relations over the model's categories (one-line ConfigError otherwise)."""
        return parse_relations(text, self.model.categories)

    def rank(self, query: Any, box: Sequence[float] | None, depth: int) -> Shortlist:
        """At least ``depth`` rows, best first: annotated images by score, then the others."""
        relations = query if isinstance(query, list) else self.parse(str(query))
        scores = relation_scores(embed_relations(self.model, relations), self.database(), self.structure)
        order = np.lexsort((self.rows, -scores))
        rows, values = self.rows[order], scores[order]
        if depth > len(rows):  # unannotated images follow, below every annotated one
            rest = np.setdiff1d(np.arange(self.index.size), self.rows)[: depth - len(rows)]
            rows = np.concatenate([rows, rest])
            values = np.concatenate([values, np.full(len(rest), -1.0)])
        return Shortlist(rows[:max(depth, 1)], values[:max(depth, 1)].astype(np.float32))


class RelationSearch(SearchPipeline):
    """The search pipeline of an index whose search step is a :class:`RelationRanking`: a query
    is the relation text ("cube left of sphere"; several separated by ';')."""

    def __init__(self, index: Index, model: RelationModel, structure: str = "s+o") -> None:
        super().__init__(index.store, index.pipeline.encoder)
        self.ranking = RelationRanking(index, model, structure)  # type: ignore[assignment]

    def run(self, query: Query, k: int = 20, rerank: Chain = None) -> SearchResponse:
        """Answer one relation query (its text as ``query.source``); re-ranking needs a query
        image, so a chain is refused."""
        if rerank:
            raise ConfigError("--rerank needs a query image; a relation query is ranked by its scene graphs only")
        self.ranking.parse(str(query.source))  # type: ignore[union-attr]  # a bad relation fails before any work
        return super().run(query, k, None)

    def relation(self, text: str, k: int = 20) -> SearchResponse:
        """Answer the relation ``text``."""
        return self.run(Query(text, name=text), k)

    def notes(self) -> list[str]:
        """What the user should know about the ranking (stale boxes, categories the model lacks)."""
        ranking: RelationRanking = self.ranking  # type: ignore[assignment]
        notes = []
        if ranking.stale:
            notes.append(f"{ranking.stale} annotated images were removed or changed since 'matchlens import-boxes': "
                         "they have no boxes now (import again to annotate them)")
        if ranking.unknown:
            notes.append(f"the model was not trained on {', '.join(ranking.unknown)}: those boxes are left out "
                         "(train it again)")
        return notes


def relation_searcher(index: Index, model_path: str | os.PathLike | None = None,
                      structure: str = "s+o") -> "RelationSearch":
    """The relation search of ``index`` with the model at ``model_path`` (default: the one
    ``matchlens train-relations`` stored with the index; one-line WeightsError when there is none)."""
    if not boxes_file(index.store).is_file():
        read_boxes(index.store)  # the one-line error naming 'matchlens import-boxes'
    path = Path(model_path).expanduser() if model_path else index_model_path(index)
    if not model_path and not path.is_file():
        raise WeightsError(f"index '{index.root}' has no relation model; train one with 'matchlens train-relations "
                           f"{index.root}' or give --relation-model REL.pt")
    return RelationSearch(index, load_relation_model(path), structure)
