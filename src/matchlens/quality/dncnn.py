"""DnCNN (Zhang et al. 2017): a residual denoiser — it predicts the noise and subtracts it.

``depth`` conv layers of ``channels`` 3×3 filters: conv+ReLU, (depth − 2) × conv+BN+ReLU, conv.
The paper's size is 17 layers × 64 channels (:data:`PAPER`); on a CPU this package uses
:data:`CPU` (6 layers × 24 channels, about 40× fewer operations per pixel) unless told otherwise
(:func:`default_size` picks by whether CUDA is available). Trained with the MSE between the
denoised and the clean patch; :func:`enhance_image` applies a model to a whole photo.
The same network, trained on bicubic ×4 down/up-sampled inputs, is the SR variant
(:mod:`matchlens.quality.sr`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from matchlens.errors import WeightsError
from matchlens.quality.net import minibatch_epochs, to_tensor
from matchlens.quality.patches import random_patches

__all__ = ["CPU", "DnCNN", "PAPER", "default_size", "enhance_image", "make_pairs", "train_mse"]

PAPER = (17, 64)  # (depth, channels) in Zhang et al. and the QAIR paper
CPU = (6, 24)     # the reduced size used where no GPU is present

Degrade = Callable[[Image.Image, int], Image.Image]


def default_size() -> tuple[int, int]:
    """The paper's size where CUDA is available, else the reduced CPU size."""
    return PAPER if torch.cuda.is_available() else CPU


class DnCNN(nn.Module):
    """Residual CNN: output = input − predicted residual, on RGB in [0, 1]."""

    def __init__(self, depth: int = CPU[0], channels: int = CPU[1]) -> None:
        super().__init__()
        if depth < 2 or channels < 1:
            raise WeightsError(f"DnCNN needs depth ≥ 2 and channels ≥ 1, got {depth} × {channels}")
        self.depth, self.channels = depth, channels
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                       nn.ReLU(inplace=True)]
        last = nn.Conv2d(channels, 3, 3, padding=1)
        nn.init.zeros_(last.weight)  # starts as the identity: an untrained model changes nothing
        nn.init.zeros_(last.bias)  # type: ignore[arg-type]  # Conv2d has a bias unless told otherwise
        self.body = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)

    def config(self) -> dict[str, Any]:
        return {"depth": self.depth, "channels": self.channels}


def make_pairs(images: Sequence[Image.Image], degrade: Degrade, count: int, size: int,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` (degraded, clean) uint8 patch pairs (n, size, size, 3), spread over ``images``.
    Each clean patch is degraded on its own (noise, down-sampling and low light are local)."""
    rng = np.random.default_rng(seed)
    per = max(1, count // max(1, len(images)))
    clean = np.concatenate([random_patches(im, per, size, rng) for im in images if min(im.size) >= size])[:count]
    noisy = np.stack([np.asarray(degrade(Image.fromarray(p), int(rng.integers(1 << 30)))) for p in clean])
    return noisy, clean


def train_mse(model: DnCNN, noisy: np.ndarray, clean: np.ndarray, epochs: int = 3, lr: float = 3e-3,
              batch: int = 32, seed: int = 0, advance: Callable[[int], None] | None = None) -> list[float]:
    """Fit with the MSE to the clean patches (Adam); returns the per-epoch loss."""
    torch.manual_seed(seed)
    x, y = to_tensor(noisy), to_tensor(clean)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = minibatch_epochs(optimiser, len(x), lambda chosen: nn.functional.mse_loss(model(x[chosen]), y[chosen]),
                              epochs, batch, seed, advance)
    model.eval()
    return losses


@torch.no_grad()
def enhance_image(model: nn.Module, image: Image.Image) -> Image.Image:
    """Apply an enhancer to a whole RGB photo (fully convolutional: any size)."""
    model.eval()
    x = to_tensor(np.asarray(image.convert("RGB"))[None])
    y = model(x).clamp_(0, 1).mul_(255).round_().byte()[0].permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(y), "RGB")
