"""The quality network (QAIR CNN): a frozen ImageNet backbone and 5 fully connected layers that
predict, from a patch, the average precision the whole query reaches with one index's pipeline.

The backbone is the embedded EfficientNet-Lite0 of :mod:`matchlens.models` (the paper: a frozen
ImageNet CNN); its feature map is average-pooled to 1280 values and the head maps them through
five FC layers (1280 → 512 → 256 → 128 → 32 → 1, ReLU and dropout between, a sigmoid at the end
so the prediction is an AP in [0, 1]). It is trained with the mean absolute error between each
patch's prediction and its image's AP (the paper's eq. 2); an image's prediction is the mean over
its patches. Because the backbone is frozen, training caches the pooled backbone features once and
fits only the head; gradients still flow through the backbone to its *input*, which is what
fine-tuning an enhancer through it (:mod:`matchlens.quality.enhance`) needs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from matchlens.models import load_backbone

__all__ = ["BACKBONE", "HEAD_WIDTHS", "QualityHead", "QualityNet", "to_tensor", "train_head"]

BACKBONE = "tf_efficientnet_lite0"
HEAD_WIDTHS = (512, 256, 128, 32, 1)  # five FC layers after the 1280-d pooled feature


class QualityHead(nn.Module):
    """Five FC layers: pooled backbone feature → predicted AP in [0, 1]."""

    def __init__(self, in_features: int = 1280, widths: Sequence[int] = HEAD_WIDTHS, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for i, out in enumerate(widths):
            layers.append(nn.Linear(width, out))
            if i < len(widths) - 1:
                layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = out
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(n, 1280) → (n,) predicted AP."""
        return torch.sigmoid(self.layers(features)).squeeze(1)


class QualityNet(nn.Module):
    """Frozen backbone + :class:`QualityHead`; ``forward`` takes patches in [0, 1] (n, 3, s, s)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, head: QualityHead | None = None) -> None:
        super().__init__()
        self.backbone = load_backbone(BACKBONE).eval()
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        self.head = head or QualityHead(int(self.backbone.out_channels))
        self.register_buffer("mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.backbone.std).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "QualityNet":
        """Only the head ever trains; the backbone stays in eval mode (frozen BN statistics)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def pooled(self, patches: torch.Tensor) -> torch.Tensor:
        """Average-pooled backbone feature (n, 1280) of patches in [0, 1]."""
        return self.backbone((patches - self.mean) / self.std).mean(dim=(2, 3))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Predicted AP per patch (n,)."""
        return self.head(self.pooled(patches))

    @torch.no_grad()
    def features(self, patches: np.ndarray, batch: int = 32) -> np.ndarray:
        """Pooled features (n, 1280) float32 of uint8 patches (n, s, s, 3), in batches."""
        out = [self.pooled(to_tensor(patches[i:i + batch])).numpy() for i in range(0, len(patches), batch)]
        return np.concatenate(out).astype(np.float32)


def to_tensor(patches: np.ndarray) -> torch.Tensor:
    """uint8 (n, s, s, 3) → float (n, 3, s, s) in [0, 1]."""
    return torch.from_numpy(np.array(patches, np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)


def minibatch_epochs(optimiser: torch.optim.Optimizer, count: int, loss_of: Callable[[torch.Tensor], torch.Tensor],
                     epochs: int, batch: int, seed: int,
                     advance: Callable[[int], None] | None = None) -> list[float]:
    """The training loop every quality model shares: ``epochs`` passes over ``count`` samples in
    seeded random minibatches; ``loss_of(indices)`` is the batch's mean loss. Returns each epoch's
    sample-weighted mean loss (``advance(1)`` after each epoch)."""
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        order, total = torch.randperm(count, generator=generator), 0.0
        for start in range(0, count, batch):
            chosen = order[start:start + batch]
            loss = loss_of(chosen)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(chosen)
        losses.append(total / max(1, count))
        if advance:
            advance(1)
    return losses


def train_head(head: QualityHead, features: np.ndarray, targets: np.ndarray, epochs: int = 60,
               lr: float = 1e-3, batch: int = 64, seed: int = 0,
               advance: Callable[[int], None] | None = None) -> list[float]:
    """Fit the head with the mean absolute error (eq. 2) on cached patch features; returns the
    per-epoch training loss. ``targets`` holds each patch's image AP."""
    torch.manual_seed(seed)
    x = torch.from_numpy(np.asarray(features, np.float32))
    y = torch.from_numpy(np.asarray(targets, np.float32))
    optimiser = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-5)
    head.train()
    losses = minibatch_epochs(optimiser, len(x), lambda chosen: (head(x[chosen]) - y[chosen]).abs().mean(),
                              epochs, batch, seed, advance)
    head.eval()
    return losses
