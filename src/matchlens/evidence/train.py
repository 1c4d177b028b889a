"""Training the verifier from scratch on pairs (binary cross-entropy on the relevance logit)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from matchlens.errors import ConfigError
from matchlens.evidence.config import VerifierConfig
from matchlens.evidence.model import EvidenceModel, default_device
from matchlens.evidence.pairs import Pair

Progress = Callable[[int, str], Callable[[int], Any]]  # the API's ProgressFactory: (total, description) -> advance(n)


@dataclass
class TrainSettings:
    """Optimisation settings (saved in the checkpoint's meta)."""

    epochs: int = 4
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch < 1 or self.lr <= 0 or not 0 <= self.val_fraction < 1:
            raise ConfigError("train-verifier: epochs and batch must be >= 1, lr > 0, 0 <= val_fraction < 1")


@dataclass
class TrainResult:
    """The trained model and its learning curve."""

    model: EvidenceModel
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def pair_tensors(model: EvidenceModel, pairs: Sequence[Pair], batch: int = 32,
                 progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tensors ``(N, |Φ|, m, n, m, n)``, labels ``(N,)``) of the pairs, computed once."""
    bar = progress(len(pairs), "4D tensors") if progress else None
    chunks = []
    for i in range(0, len(pairs), batch):
        part = pairs[i:i + batch]
        chunks.append(model.tensors([p.query for p in part], [p.target for p in part]).cpu())
        if bar:
            bar(len(part))
    labels = torch.tensor([p.label for p in pairs], dtype=torch.float32)
    return torch.cat(chunks), labels


def accuracy_auc(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Accuracy at 0.5 and ROC AUC (Mann–Whitney; NaN with a single class)."""
    acc = float(((scores >= 0.5) == (labels >= 0.5)).mean()) if len(scores) else float("nan")
    pos, neg = scores[labels >= 0.5], scores[labels < 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return acc, float("nan")
    greater = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    return acc, float(greater)


def train_verifier(pairs: Sequence[Pair], config: VerifierConfig, settings: TrainSettings | None = None,
                   device: torch.device | str | None = None, progress: Progress | None = None) -> TrainResult:
    """Train a fresh verifier on ``pairs``; a held-out fraction reports accuracy and AUC per epoch."""
    settings = settings or TrainSettings()
    if len(pairs) < 4:
        raise ConfigError(f"train-verifier needs at least 4 pairs, got {len(pairs)}")
    started = time.perf_counter()
    model = EvidenceModel(config, device=device or default_device())
    tensors, labels = pair_tensors(model, pairs, progress=progress)
    result = fit_tensors(model, tensors, labels, settings, progress)
    result.seconds = time.perf_counter() - started
    model.meta.update(pairs=len(pairs))
    return result


def fit_tensors(model: EvidenceModel, tensors: torch.Tensor, labels: torch.Tensor,
                settings: TrainSettings | None = None, progress: Progress | None = None) -> TrainResult:
    """Train ``model``'s network on precomputed pair tensors (re-used across cross-validation folds)."""
    settings = settings or TrainSettings()
    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(settings.seed))
    n_val = int(round(len(labels) * settings.val_fraction))
    val, train = order[:n_val], order[n_val:]
    net = model.network
    optimiser = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    history = []
    for epoch in range(settings.epochs):
        net.train()
        bar = progress(len(train), f"epoch {epoch + 1}/{settings.epochs}") if progress else None
        perm = train[torch.randperm(len(train))]
        total = 0.0
        for i in range(0, len(perm), settings.batch):
            idx = perm[i:i + settings.batch]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            logits, _ = net(tensors[idx].to(model.device))
            loss = loss_fn(logits, labels[idx].to(model.device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            if bar:
                bar(len(idx))
        record = {"epoch": epoch + 1, "loss": total / max(len(train), 1)}
        if n_val:
            acc, auc = accuracy_auc(model.score_tensors(tensors[val]), labels[val].numpy())
            record.update(val_accuracy=acc, val_auc=auc)
        history.append(record)
    net.eval()
    model.meta.update(settings=vars(settings), history=history)
    return TrainResult(model, history, time.perf_counter() - started)
