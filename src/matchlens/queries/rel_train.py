"""Training and storing the scene-graph network (:mod:`matchlens.queries.scenegraph`) on annotated
scenes, and the relation model file (``rel.pt``) it produces.

The network learns from scene graphs alone (the paper's setting: no pixels, no word vectors):
every annotated image gives a graph whose objects are its boxes (at most ``max_objects``, the
largest) and whose triplets are every ordered pair with its geometric predicate. The pretext task
is layout prediction: the boxes, plus the triplet mask and superbox with ``triplet=True``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from matchlens.errors import ConfigError, WeightsError
from matchlens.fileio import atomic_path
from matchlens.queries.coco import read_boxes
from matchlens.queries.relations import predicate_names, scene_triplets
from matchlens.queries.scenegraph import Graphs, LayoutLosses, SceneGraphNet

__all__ = ["FORMAT", "RelationModel", "Scene", "TrainSettings", "graphs_of", "index_model_path", "load_relation_model",
           "train_on_index", "train_relation_model"]

FORMAT = "matchlens-relations/1"
Scene = tuple[np.ndarray, np.ndarray]  # boxes (n, 4) in [0, 1] (x0, y0, x1, y1), category indices (n,)
Progress = Callable[[int, str], Callable[[int], None]]


@dataclass
class TrainSettings:
    """Training options (defaults: the paper's network; a few CPU minutes on a few thousand scenes)."""

    epochs: int = 20
    batch: int = 32
    lr: float = 1e-3
    triplet: bool = True     # the triplet mask and superbox losses ('Triplet' vs 'NoTriplet' models)
    max_objects: int = 8     # per scene (the largest boxes): a scene has n(n-1) triplets
    dim: int = 128
    hidden: int = 512
    layers: int = 5
    seed: int = 0
    max_seconds: float | None = None  # stop after the epoch that passes this


@dataclass
class RelationModel:
    """A trained network with its vocabularies and training facts."""

    net: SceneGraphNet
    categories: list[str]
    predicates: list[str]
    triplet: bool
    max_objects: int
    facts: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model file atomically."""
        target = Path(path).expanduser()
        payload = {"format": FORMAT, "config": self.net.config, "state": self.net.state_dict(),
                   "categories": self.categories, "predicates": self.predicates, "triplet": self.triplet,
                   "max_objects": self.max_objects, "facts": self.facts}
        with atomic_path(target, suffix=".pt") as tmp:
            torch.save(payload, tmp)
        return target

    def describe(self) -> str:
        """e.g. 'Triplet scene-graph model (12 categories, 6 predicates)'."""
        return (f"{'Triplet' if self.triplet else 'NoTriplet'} scene-graph model ({len(self.categories)} categories, "
                f"{len(self.predicates)} predicates)")


def load_relation_model(path: str | os.PathLike) -> RelationModel:
    """Read a model written by :meth:`RelationModel.save` (one-line WeightsError otherwise)."""
    where = Path(path).expanduser()
    try:
        payload = torch.load(where, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"relation model '{where}' does not exist (write one with 'matchlens train-relations')") from None
    except Exception as exc:  # pickle, zip and torch errors alike: the file is not a model
        raise WeightsError(f"relation model '{where}' cannot be read: {type(exc).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(f"'{where}' is not a relation model (written by 'matchlens train-relations')")
    if list(payload["predicates"]) != predicate_names():
        raise WeightsError(f"relation model '{where}' was trained with other predicates: {payload['predicates']}")
    net = SceneGraphNet(**payload["config"])
    net.load_state_dict(payload["state"])
    net.eval()
    return RelationModel(net, list(payload["categories"]), list(payload["predicates"]), bool(payload["triplet"]),
                         int(payload["max_objects"]), dict(payload.get("facts", {})))


def kept_objects(scene: Scene, max_objects: int) -> Scene:
    """The ``max_objects`` largest boxes of a scene, in their original order."""
    boxes, labels = scene
    if len(boxes) <= max_objects:
        return boxes, labels
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = np.sort(np.argsort(-area, kind="stable")[:max_objects])
    return boxes[keep], labels[keep]


def graphs_of(scenes: Sequence[Scene], max_objects: int) -> tuple[Graphs, np.ndarray]:
    """One batch of the scenes' graphs, and the scene of every triplet (T,)."""
    objects, boxes, triplets, graph_of, owner = [], [], [], [], []
    offset = 0
    for number, scene in enumerate(scenes):
        b, labels = kept_objects(scene, max_objects)
        objects.append(labels)
        boxes.append(b)
        graph_of.append(np.full(len(labels), number))
        found = np.asarray(scene_triplets(b.tolist()), np.int64).reshape(-1, 3)
        triplets.append(found + np.array([offset, 0, offset]))
        owner.append(np.full(len(found), number))
        offset += len(labels)
    cat = lambda parts, dtype, width=None: torch.from_numpy(  # noqa: E731
        np.concatenate(parts).astype(dtype) if parts else np.zeros((0, width) if width else 0, dtype))
    graphs = Graphs(cat(objects, np.int64), cat(triplets, np.int64, 3).reshape(-1, 3), cat(graph_of, np.int64),
                    cat(boxes, np.float32, 4).reshape(-1, 4))
    return graphs, (np.concatenate(owner) if owner else np.zeros(0, np.int64))


def train_relation_model(scenes: Sequence[Scene], categories: Sequence[str], settings: TrainSettings | None = None,
                         progress: Progress | None = None) -> RelationModel:
    """Train the network on annotated scenes (those with at least two boxes)."""
    settings = settings or TrainSettings()
    usable = [s for s in scenes if len(s[0]) >= 2]
    if not usable:
        raise ConfigError("no annotated image has two boxes or more: a relation needs a subject and an object")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    net = SceneGraphNet(len(categories), len(predicate_names()), settings.dim, settings.hidden, settings.layers)
    loss_fn = LayoutLosses(triplet=settings.triplet)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
    steps = settings.epochs * -(-len(usable) // settings.batch)
    advance = progress(steps, "training the scene-graph network") if progress else None
    start, last, done = time.perf_counter(), {}, 0
    net.train()
    while done < settings.epochs:
        order = rng.permutation(len(usable))
        for begin in range(0, len(order), settings.batch):
            graphs, _ = graphs_of([usable[i] for i in order[begin:begin + settings.batch]], settings.max_objects)
            losses = loss_fn(net, graphs)
            optimiser.zero_grad()
            losses["total"].backward()
            optimiser.step()
            last = {k: round(float(v.detach()), 5) for k, v in losses.items()}
            if advance:
                advance(1)
        done += 1
        if settings.max_seconds is not None and time.perf_counter() - start > settings.max_seconds:
            break
    net.eval()
    facts = {"scenes": len(usable), "epochs": done, "seconds": round(time.perf_counter() - start, 1),
             "final_losses": last, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return RelationModel(net, list(categories), predicate_names(), settings.triplet, settings.max_objects, facts)


def index_model_path(index: Any) -> Path:
    """Where ``matchlens train-relations IDX`` stores the model with the index (``IDX/relations/model.pt``)."""
    return Path(index.root) / "relations" / "model.pt"


def train_on_index(index: Any, settings: TrainSettings | None = None,
                   progress: Progress | None = None) -> RelationModel:
    """Train on the boxes imported for ``index`` (its current generation's images)."""
    boxes = read_boxes(index)
    scenes = [boxes.rows[row] for row in sorted(boxes.rows)]
    model = train_relation_model(scenes, boxes.categories, settings, progress)
    model.facts.update({"index": str(index.root), "generation": index.generation, "stale_images": boxes.stale})
    return model
