"""The checkpoints of a training run: the files of its output folder, writing ``last.pt`` /
``best.pt`` (CPU tensors, written atomically), resuming from ``last.pt``, and loading the best
weights back into the model.

A checkpoint holds the backbone's state dict and a ``matchlens`` entry (pipeline spec, GeM p,
epoch, validation mAP, the run's config, learned whitening); ``last.pt`` adds a ``training``
entry (model, optimizer, scheduler, RNG state, epoch/step, history, and a self-supervised step's
own state, e.g. MoCo's heads, key encoder and queue) from which a run resumes exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from matchlens.config import PipelineSpec
from matchlens.errors import ConfigError
from matchlens.models import load_backbone
from matchlens.models.backbones import backbone_state_dict
from matchlens.models.weights import MATCHLENS_KIND, read_checkpoint
from matchlens.train.config import TrainConfig
from matchlens.train.model import RetrievalNet
from matchlens.train.persist import atomic_torch_save

CHECKPOINT_FORMAT = 1
LAST, BEST, TRAINSET, HISTORY, CURVE = "last.pt", "best.pt", "trainset.json", "history.json", "curve.png"
# Fields that must not change when a run is resumed (the others, e.g. epochs, may be raised).
FIXED_ON_RESUME = ("data", "positives", "backbone", "weights", "max_side", "loss", "negatives", "tuples",
                   "batch", "optimizer", "seed", "train_groups", "holdout_groups", "selfsup", "regions")
# The run's progress kept in last.pt's "training" entry (besides the model, optimizer, scheduler and RNG).
PROGRESS_KEYS = ("epoch", "step", "history", "best_map", "best_epoch")
# The "training" entry's key for a self-supervised step's own state (absent in checkpoints before it).
SELFSUP = "selfsup"


def trained_spec(config: TrainConfig, model: RetrievalNet) -> PipelineSpec:
    """The pipeline spec of the trained model (what an index built from the checkpoint uses)."""
    return PipelineSpec(backbone=config.backbone, max_side=config.max_side, scales=(1.0,),
                        pooling="gem", pooling_params={"p": round(model.gem_p, 6)})


def training_state(model: RetrievalNet, optimizer: torch.optim.Optimizer, scheduler: Any,
                   state: dict[str, Any], selfsup: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``training`` entry of ``last.pt``: everything a resumed run restores. ``selfsup``: what
    a self-supervised step keeps besides the model (under ``SELFSUP``, e.g. ``{"moco": ...}``)."""
    training = {
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "epoch": state["epoch"], "step": state["step"], "history": state["history"],
        "best_map": state["best_map"], "best_epoch": state["best_epoch"],
        "torch_rng": torch.get_rng_state(), "state": model.state_dict(),
    }
    if selfsup is not None:
        training[SELFSUP] = selfsup
    return training


def save_checkpoint(path: Path, config: TrainConfig, model: RetrievalNet, epoch: int, val_map: float | None,
                    lw: dict | None = None, training: dict[str, Any] | None = None) -> None:
    """Write a checkpoint atomically, every tensor on the CPU; ``training`` for ``last.pt``."""
    meta = {"kind": MATCHLENS_KIND, "format": CHECKPOINT_FORMAT, "spec": trained_spec(config, model).to_dict(),
            "gem_p": model.gem_p, "epoch": epoch, "val_map": val_map,
            "config": config.to_dict(), "lw": lw}
    content: dict[str, Any] = {"state_dict": backbone_state_dict(model.backbone), "matchlens": meta}
    if training is not None:
        content["training"] = training
    atomic_torch_save(to_cpu(content), path)


def resume_training(out: Path, config: TrainConfig, model: RetrievalNet, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG from ``out/last.pt``; returns its ``training``
    entry. Raises ConfigError when it holds no training state or a run with other fixed options."""
    content = read_checkpoint(out / LAST)
    training = content.get("training") if isinstance(content, dict) else None
    old = (content.get("matchlens") or {}).get("config", {}) if training else {}
    if not training:
        raise ConfigError(f"{out / LAST} holds no training state; choose an empty --out folder")
    changed = [k for k in FIXED_ON_RESUME if old.get(k) != config.to_dict().get(k)]
    if changed:
        raise ConfigError(f"{out} holds a run with different {', '.join(changed)}; "
                          "use the same options to resume, or --restart (or another --out) to start over")
    model.load_state_dict(training["state"])
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    torch.set_rng_state(training["torch_rng"])
    return training


def load_best_weights(model: RetrievalNet, backbone_name: str, path: Path, best: dict) -> None:
    """Load ``best.pt`` (read as ``best``) into ``model``: backbone weights and GeM p; eval mode."""
    backbone = load_backbone(backbone_name, path)
    model.backbone.load_state_dict(backbone.state_dict())
    p = float(best["matchlens"]["gem_p"])
    if isinstance(model.pool.p, torch.Tensor):
        model.pool.p.data.fill_(p)
    model.eval()


def to_cpu(obj: Any) -> Any:
    """A copy of a checkpoint's content with every tensor on the CPU (loadable anywhere)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    return obj
