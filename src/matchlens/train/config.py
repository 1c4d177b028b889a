"""What defines a training run and what it produces: :class:`TrainConfig` (stored in every
checkpoint), :class:`TrainResult`, and :class:`TrainingInterrupted` (Ctrl-C: the same command resumes).

The defaults and the output folder are described in :mod:`matchlens.train.trainer`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from matchlens.config import DEFAULT_BACKBONE
from matchlens.errors import ConfigError, MatchlensError
from matchlens.train.losses import LOSSES
from matchlens.train.model import BN_MODES
from matchlens.train.regions import layout_boxes
from matchlens.train.sampling import SAMPLERS
from matchlens.train.selfsup import METHODS

__all__ = ["POSITIVE_SOURCES", "ProgressFactory", "TrainConfig", "TrainResult", "TrainingInterrupted"]

POSITIVE_SOURCES = ("gt", "folders", "sv", "manifold", "selfsup")

ProgressFactory = Callable[[int, str], Callable[[int], None]]


class TrainingInterrupted(MatchlensError):
    """Training stopped by the user; the last checkpoint is kept and the same command resumes."""

    exit_code = 130


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in its checkpoints)."""

    data: str
    out: str
    positives: str = "gt"
    dataset_format: str | None = None
    train_groups: list[str] | None = None
    val_groups: list[str] | None = None
    holdout_groups: list[str] = field(default_factory=list)
    val_data: str | None = None
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    max_side: int = 320
    loss: str = "contrastive"
    margin: float | None = None
    negatives: int = 5
    tuples: int = 50
    batch: int = 5
    epochs: int = 3
    remine: int = 3
    pool_size: int = 2000
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bn: str = "frozen"
    gem_p: float = 3.0
    learn_p: bool = True
    lw: bool = True
    lw_dim: int | None = None
    save_every: int = 0
    seed: int = 0
    knn: int = 5
    min_inliers: int = 20
    anchors: int = 100
    crop: int = 128
    temperature: float = 0.1
    threads: int | None = None
    selfsup: str = "simclr"  # --positives selfsup: simclr | moco (matchlens.train.selfsup.METHODS)
    queue: int = 4096  # MoCo: keys kept as negatives
    moco_momentum: float = 0.999  # MoCo: key encoder θ_k ← m·θ_k + (1-m)·θ_q
    moco_temperature: float = 0.2  # MoCo v2's τ (SimCLR uses ``temperature``)
    regions: str | None = None  # a fixed region layout: the tuple loss summed over its regions (train/regions.py)
    sampler: str = "uniform"  # which tuples' queries are drawn: matchlens.train.sampling.SAMPLERS

    def __post_init__(self) -> None:
        if self.positives not in POSITIVE_SOURCES:
            raise ConfigError(f"unknown positives source {self.positives!r}; choose one of: {', '.join(POSITIVE_SOURCES)}")
        LOSSES.get(self.loss)
        SAMPLERS.get(self.sampler)
        if self.regions is not None:
            if self.positives == "selfsup":
                raise ConfigError("--regions trains on tuples; self-supervised training has none")
            layout_boxes(self.regions)  # a clear error for an unknown or per-image layout
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose sgd or adam")
        if self.bn not in BN_MODES:
            raise ConfigError(f"unknown BatchNorm mode {self.bn!r}; choose one of: {', '.join(BN_MODES)}")
        for name in ("negatives", "tuples", "batch", "epochs", "remine", "pool_size", "knn", "anchors"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 32 <= self.max_side <= 4096:
            raise ConfigError(f"max_side must be from 32 to 4096, got {self.max_side}")
        METHODS.get(self.selfsup)
        if self.selfsup == "moco" and self.positives != "selfsup":
            raise ConfigError("--selfsup moco trains on two views of each image: add --positives selfsup")
        if self.selfsup == "moco" and not (self.queue >= 1 and 0 <= self.moco_momentum < 1 and self.moco_temperature > 0):
            raise ConfigError("MoCo needs --queue >= 1, 0 <= --moco-momentum < 1 and a positive temperature")
        if self.positives == "selfsup" and self.batch < 2:
            raise ConfigError("self-supervised training needs --batch of at least 2 images")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.min_inliers < 0:
            raise ConfigError(f"min_inliers must be at least 0, got {self.min_inliers}")
        out = Path(self.out).expanduser()
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; give a folder for the run (checkpoints, history, curve)")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.optimizer == "sgd" else 1e-6)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What a run produced."""

    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, Any]]
    best_epoch: int
    best_map: float | None
    resumed_from: tuple[int, int] | None
    lw_map: float | None
    curve: Path | None
    notes: list[str]
