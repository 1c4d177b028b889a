"""Patch descriptors on an m×n grid: raw pixels (P0) or backbone feature-map cells (extension)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from matchlens.evidence.config import VerifierConfig


def pixel_patches(images: Sequence[Image.Image], rows: int, cols: int, patch_px: int) -> torch.Tensor:
    """Raw-pixel descriptors: ``(B, rows*cols, 3*patch_px²)`` in [0, 1], patches in row-major order.

    Each image is resized (aspect ratio not kept: the grid always spans the whole image, so a
    map decoded on it upsamples back onto the original frame) to ``cols*patch_px`` wide and
    ``rows*patch_px`` high.
    """
    size = (cols * patch_px, rows * patch_px)
    batch = np.stack([np.asarray(im.convert("RGB").resize(size, Image.Resampling.BILINEAR), np.float32) / 255.0
                      for im in images])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2)  # (B, 3, H, W)
    # unfold: (B, 3*p*p, rows*cols), patches enumerated row by row.
    return F.unfold(x, kernel_size=patch_px, stride=patch_px).transpose(1, 2).contiguous()


class BackbonePatches:
    """Backbone feature maps average-pooled to the grid: ``(B, rows*cols, C)``.

    Uses :func:`matchlens.models.load_backbone` directly (frozen, eval mode).
    """

    def __init__(self, name: str, side: int, device: torch.device | str = "cpu") -> None:
        from matchlens.models import load_backbone

        self.backbone = load_backbone(name).eval().to(device)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.side = side
        self.device = torch.device(device)
        self.mean = torch.tensor(self.backbone.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.backbone.std, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], rows: int, cols: int) -> torch.Tensor:
        batch = np.stack([np.asarray(im.convert("RGB").resize((self.side, self.side), Image.Resampling.BILINEAR), np.float32)
                          for im in images]) / 255.0
        x = (torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device) - self.mean) / self.std
        fmap = F.adaptive_avg_pool2d(self.backbone(x), (rows, cols))  # (B, C, rows, cols)
        return fmap.flatten(2).transpose(1, 2).float().cpu()


def describe(images: Sequence[Image.Image], config: VerifierConfig,
             backbone: BackbonePatches | None = None) -> torch.Tensor:
    """Patch descriptors of ``images`` as the configuration asks."""
    if config.source == "pixels":
        return pixel_patches(images, config.rows, config.cols, config.patch_px)
    if backbone is None:
        raise ValueError("backbone descriptors need a BackbonePatches instance")
    return backbone(images, config.rows, config.cols)
