"""``matchlens train-text``: train the joint embedding, or add a CAMP / CAAN re-ranker, from a
captions file of an index's images (the code behind the command, also used by benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from matchlens.errors import ConfigError
from matchlens.queries.joint import hinge_loss, train_joint
from matchlens.queries.text_data import Captions, RegionFeatures
from matchlens.queries.text_model import CROSS_MODELS, TextModel
from matchlens.queries.text_rerank import CrossModel, train_cross

__all__ = ["MODELS", "make_cross", "train_text"]

ProgressFactory = Callable[[int, str], Callable[[int], None]]
MODELS = ("joint", "camp", "caan")


def make_cross(name: str, text_model: TextModel, regions: RegionFeatures, captions: Captions, gate: bool = True,
               hardest: bool = True, epochs: int = 10, seed: int = 0, progress: ProgressFactory | None = None,
               hidden: int = 128) -> tuple[CrossModel, float]:
    """Train a CAMP (``gate``: the gated fusion; ``hardest``: BCE on hardest negatives) or CAAN
    (``hardest``: hinge on hardest negatives) model of width ``hidden``; returns it with its
    training seconds."""
    from matchlens.queries import caan, camp  # noqa: F401  (register both)

    region_dim = int(regions.of_row(int(captions.rows[0])).shape[1])
    if name == "camp":
        model = CROSS_MODELS.get("camp")(region_dim, text_model.encoder.dim, hidden=hidden, gate=gate)

        def loss(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
            return camp.bce_loss(scores, positive, hardest)
    elif name == "caan":
        model = CROSS_MODELS.get("caan")(region_dim, text_model.encoder.dim, hidden=hidden)

        def loss(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
            return hinge_loss(scores, positive, 0.2, hardest)
    else:
        raise ConfigError(f"unknown re-ranking model {name!r}; choose camp or caan")
    seconds = train_cross(model, loss, text_model, regions, captions, epochs=epochs, seed=seed, progress=progress)
    return model, seconds


def train_text(index: Any, captions: Captions, out: str | Path, model: str = "joint", encoder: str = "bigru",
               epochs: int | None = None, regions: str = "grid", boxes: str | Path | None = None, gate: bool = True,
               hardest: bool = True, seed: int = 0, progress: ProgressFactory | None = None, side: int = 256
               ) -> TextModel:
    """Train ``model`` and write ``out``: ``joint`` writes a new text model; ``camp`` / ``caan`` add
    a re-ranker to the joint model already in ``out`` (trained for the same index pipeline), on
    region features of ``regions`` (``grid`` or ``boxes`` from the COCO file ``boxes``) pooled on
    the backbone map at longest side ``side``."""
    if model not in MODELS:
        raise ConfigError(f"unknown text model {model!r}; choose one of: {', '.join(MODELS)}")
    out = Path(out).expanduser()
    if model == "joint":
        text_model = train_joint(index, captions, encoder=encoder, epochs=epochs or 20, hardest=hardest, seed=seed,
                                 progress=progress)
    else:
        if not out.is_file():
            raise ConfigError(f"{out} holds no joint model yet: train it first with "
                              f"'matchlens train-text CAPTIONS --index IDX --out {out}' (it gives the shortlist)")
        text_model = TextModel.load(out)
        text_model.check(index)
        features = RegionFeatures(index, regions, boxes, side=side)
        if text_model.cross and text_model.regions and text_model.regions != features.config():
            raise ConfigError(f"{out} already holds re-rankers trained on other regions ({text_model.regions}); "
                              "use the same --regions/--boxes/--side or another --out")
        cross, seconds = make_cross(model, text_model, features, captions, gate, hardest, epochs or 10, seed, progress)
        text_model.cross[model] = cross
        text_model.regions = features.config()
        text_model.facts[model] = {"epochs": epochs or 10, "captions": len(captions), "gate": gate,
                                   "hardest": hardest, "train_seconds": round(seconds, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    text_model.save(out)
    return text_model
