"""Training a recognizer (``matchlens train-recognizer``): read the labelled images, build the
split network, then train the last stage(s) and classifiers with the chosen method.

Where the trunk is frozen (CPU, the default there) its feature maps are computed once and each
step runs only the last stage(s); with a GPU (or ``full=True``) each step runs the whole network
on the images and the trunk trains too. Titles (SICoT) add the semantic stream's mixed loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from matchlens.config import DEFAULT_BACKBONE
from matchlens.errors import ConfigError
from matchlens.models import load_backbone
from matchlens.recognize.heads import METHODS, ExtraLoss, Method
from matchlens.recognize.labels import LabelledSet, read_labelled, read_titles
from matchlens.recognize.model import Recognizer, save_recognizer
from matchlens.recognize.network import RecognitionNet, image_batch, trunk_features
from matchlens.recognize.sicot import TitleStream, encode_titles

__all__ = ["FitResult", "RecognizerConfig", "fit", "train_recognizer"]

ProgressFactory = Callable[[int, str], Callable[[int], None]]


@dataclass
class RecognizerConfig:
    """Everything that defines a recognizer's training run."""

    data: str
    out: str
    method: str = "ce"
    titles: str | None = None
    words: str = "minilm"
    lam: float = 1.0
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    size: int = 224
    epochs: int = 30
    batch: int = 32
    lr: float = 0.01
    seed: int = 0
    full: bool | None = None  # None: the whole network trains when a GPU is present
    threshold: float = 0.5
    threads: int | None = None

    def __post_init__(self) -> None:
        METHODS.get(self.method)
        if self.titles and METHODS.get(self.method).branches > 1:
            raise ConfigError("--titles (SICoT) goes with --method ce, rs or rw, not bbn")
        for name in ("epochs", "batch"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 32 <= self.size <= 1024:
            raise ConfigError(f"size must be from 32 to 1024, got {self.size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"threshold must be in [0, 1), got {self.threshold}")


@dataclass
class FitResult:
    """What a run produced."""

    path: Path
    classes: list[str]
    counts: list[int]
    losses: list[float]
    seconds: float
    trunk_trained: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class Titles:
    """Encoded titles of the training examples and their semantic stream."""

    ids: torch.Tensor
    mask: torch.Tensor
    stream: TitleStream

    def extra(self, rows: np.ndarray, targets: torch.Tensor) -> ExtraLoss:
        ids, mask = self.ids[rows].to(targets.device), self.mask[rows].to(targets.device)
        return lambda feature, classifier: self.stream.loss(feature, classifier, ids, mask, targets)


def train_recognizer(config: RecognizerConfig, progress: ProgressFactory | None = None,
                     log: Callable[[str], None] | None = None) -> FitResult:
    """Train and save a recognizer as ``config`` says; returns what was written."""
    start = time.monotonic()
    log = log or (lambda text: None)
    if config.threads:
        torch.set_num_threads(config.threads)
    labelled = read_labelled(config.data)
    for note in labelled.notes:
        log(note)
    full = torch.cuda.is_available() if config.full is None else config.full
    backbone = load_backbone(config.backbone, config.weights)
    net = RecognitionNet(backbone, len(labelled.classes), METHODS.get(config.method).branches)
    advance = progress(len(labelled.paths), "reading images") if progress else None
    images = _read_images(labelled, config.size, advance)
    inputs = images if full else trunk_features(net, images, advance=progress(len(images), "frozen trunk") if progress else None)
    titles = _titles(config, labelled, net.width) if config.titles else None
    losses = fit(net, config.method, inputs, labelled.labels, epochs=config.epochs, batch=config.batch, lr=config.lr,
                 seed=config.seed, train_trunk=full, progress=progress, titles=titles)
    info: dict[str, Any] = {"counts": [int(n) for n in labelled.counts], "losses": losses,
                            "titles": bool(titles), "words": config.words if titles else None, "data": config.data}
    rec = Recognizer(net, labelled.classes, backbone.name, backbone.weights_id, config.method, config.size, full,
                     config.threshold, info)
    path = save_recognizer(rec, config.out)
    return FitResult(path, labelled.classes, info["counts"], losses, time.monotonic() - start, full, labelled.notes)


def _read_images(labelled: LabelledSet, size: int, advance) -> torch.Tensor:
    out = []
    for path in labelled.paths:
        out.append(image_batch([path], size))
        if advance:
            advance(1)
    return torch.cat(out)


def _titles(config: RecognizerConfig, labelled: LabelledSet, width: int) -> Titles:
    assert config.titles is not None
    ids, mask, table, frozen = encode_titles(read_titles(config.titles, labelled.paths), config.words)
    return Titles(ids, mask, TitleStream(table, frozen, width, config.lam))


def fit(net: RecognitionNet, method_name: str, inputs: torch.Tensor, labels: np.ndarray, *, epochs: int = 30,
        batch: int = 32, lr: float = 0.01, seed: int = 0, train_trunk: bool = False,
        progress: ProgressFactory | None = None, titles: Titles | None = None) -> list[float]:
    """Train ``net`` in place; ``inputs`` are uint8 images when ``train_trunk`` else trunk maps.
    SGD (momentum 0.9, weight decay 5e-4) with a cosine schedule; returns the mean loss per epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, np.int64)
    method: Method = METHODS.get(method_name)(np.bincount(labels, minlength=net.n_classes).clip(min=1))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    optimizer, scheduler, steps = _optimizer(net, titles, train_trunk, lr, epochs, math.ceil(len(labels) / batch))
    advance = progress(epochs * steps, f"training ({method_name})") if progress else None
    targets_all = torch.as_tensor(labels)
    losses: list[float] = []
    for epoch in range(epochs):
        _train_mode(net, train_trunk)
        total = 0.0
        for _ in range(steps):
            rows = method.draw(labels, batch, rng)
            maps = [net.stem(inputs[r].to(device)) if train_trunk else inputs[r].to(device) for r in rows]
            targets = [targets_all[r].to(device) for r in rows]
            extra = titles.extra(rows[0], targets[0]) if titles is not None else None
            loss = method.loss(net, maps, targets, epoch / epochs, extra)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            if advance:
                advance(1)
        losses.append(total / steps)
    net.eval()
    return losses


def _train_mode(net: RecognitionNet, train_trunk: bool) -> None:
    """Training mode with every BatchNorm of the last stage(s) frozen (running statistics, as
    cirtorch fine-tunes): small, imbalanced batches would give the tail classes noisy statistics,
    and training and test then see the same normalisation. The trunk trains in full only with it."""
    net.train()
    frozen = net.branches if train_trunk else net
    for module in frozen.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _optimizer(net: RecognitionNet, titles: Titles | None, train_trunk: bool, lr: float, epochs: int, steps: int):
    for p in net.trunk.parameters():
        p.requires_grad_(train_trunk)
    params = [p for p in net.parameters() if p.requires_grad]
    if titles is not None:
        titles.stream.to(net.mean.device)
        params += [p for p in titles.stream.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps))
    return optimizer, scheduler, steps
