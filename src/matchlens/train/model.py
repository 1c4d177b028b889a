"""The trainable network: backbone → GeM with learnable p → L2, plus the image store it reads.

Training uses the PyTorch backbone directly (differentiable), not the Extractor, and resizes
images exactly as the Extractor does (longest side = ``max_side``, aspect kept, bicubic), so
descriptors computed here match those of an index built from the checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from matchlens.io.images import load_image
from matchlens.models import Backbone
from matchlens.pooling import make_pooling

__all__ = ["ImageStore", "RetrievalNet", "describe", "reestimate_batchnorm", "set_batchnorm_mode"]

BN_MODES = ("frozen", "train", "reestimate")


class ImageStore:
    """Training images decoded once at ``max_side`` and kept in memory as uint8 (3, h, w) tensors
    (a thousand images at 320 px take about 300 MB); unreadable files raise a one-line error."""

    def __init__(self, max_side: int) -> None:
        self.max_side = max_side
        self._tensors: dict[str, torch.Tensor] = {}

    def image(self, path: str) -> Image.Image:
        """The image resized so its longest side is ``max_side`` (as the Extractor does)."""
        image = load_image(path, max_side=2 * self.max_side)
        w, h = image.size
        ratio = self.max_side / max(w, h)
        size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
        return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0) if size != image.size else image

    def tensor(self, path: str) -> torch.Tensor:
        if path not in self._tensors:
            array = np.asarray(self.image(path), dtype=np.uint8)
            self._tensors[path] = torch.from_numpy(array.copy()).permute(2, 0, 1)
        return self._tensors[path]


class RetrievalNet(nn.Module):
    """``backbone`` feature map → GeM(p, learnable) → L2; input uint8 or [0, 1] RGB batches."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, backbone: Backbone, p: float = 3.0, learn_p: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = make_pooling("gem", p=p, learn_p=learn_p)
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.mean.device)
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return F.normalize(self.pool(self.backbone((x - self.mean) / self.std)), dim=1)

    @property
    def gem_p(self) -> float:
        p: Any = self.pool.p  # a tensor (a Parameter when learned), or a number
        return float(p.detach()) if isinstance(p, torch.Tensor) else float(p)


def set_batchnorm_mode(model: nn.Module, mode: str) -> None:
    """Put the model in training mode with BatchNorm ``frozen`` (eval statistics, as cirtorch does for
    tuples of one image at a time) or ``train``/``reestimate`` (batch statistics)."""
    model.train()
    if mode == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


@torch.no_grad()
def reestimate_batchnorm(model: RetrievalNet, store: ImageStore, paths: Sequence[str]) -> None:
    """Recompute every BatchNorm's running mean/variance on ``paths`` (cumulative average), so
    the statistics fit the fine-tuned weights and the training images."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not paths:
        return
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over all images seen
        bn.train()
    for path in paths:
        model(store.tensor(path).unsqueeze(0))
    model.eval()


@torch.no_grad()
def describe(model: RetrievalNet, store: ImageStore, paths: Iterable[str],
             advance: Callable[[int], None] | None = None, batch: int = 16) -> np.ndarray:
    """Descriptors (n, d) float32 of ``paths`` with the model in eval mode. Images keep their
    aspect ratio; those of equal size are batched together (most photos share a few shapes)."""
    paths = list(paths)
    modes = [(m, m.training) for m in model.modules()]  # restored after: keeps BatchNorm frozen if it was
    model.eval()
    out = np.zeros((len(paths), model.backbone.out_channels), np.float32)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, path in enumerate(paths):
        by_shape.setdefault(tuple(store.tensor(path).shape), []).append(i)
    for rows in by_shape.values():
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            out[chunk] = model(torch.stack([store.tensor(paths[i]) for i in chunk])).cpu().numpy()
            if advance:
                advance(len(chunk))
    for module, training in modes:
        module.training = training
    return out
