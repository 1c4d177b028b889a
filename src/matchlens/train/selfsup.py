"""Self-supervised option (P4: SimCLR/MoCo-style): two random views of each image of a batch
are positives of each other, every other view in the batch a negative (NT-Xent loss)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

__all__ = ["two_views"]


def _augment(size: int) -> v2.Compose:
    # SimCLR's recipe, milder crops: instance retrieval needs the object to stay in view.
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ])


def two_views(images: Sequence[Image.Image], size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches (B, 3, size, size) uint8: independent random views of each image."""
    augment = _augment(size)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    torch.manual_seed(seed)  # torchvision's transforms draw from the global generator
    tensors = [torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1) for img in images]
    first = torch.stack([augment(t) for t in tensors])
    second = torch.stack([augment(t) for t in tensors])
    return first, second
