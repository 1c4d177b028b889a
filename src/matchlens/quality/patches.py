"""Patches of a query, the quality network's input (the paper divides each image into 124×124 patches).

A query is first shrunk so its longest side is at most ``max_side`` (the retrieval pipelines' query
side: finer detail never reaches the descriptor), never enlarged; patches of ``size`` px are then
taken on a regular grid that covers it. A query too small for one patch, or blank, is refused with
one line.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from matchlens.errors import ImageLoadError

__all__ = ["PATCH", "MAX_SIDE", "check_usable", "grid_patches", "random_patches", "working_image"]

PATCH = 128      # patch side in px (the paper: 124; 128 is a whole number of the backbone's 32-px cells)
MAX_SIDE = 640   # the query side the patches are cut at
BLANK_STD = 1.5  # grey standard deviation (0–255) below which an image is blank


def working_image(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """RGB image shrunk (never enlarged) to ``max_side`` on its longest side."""
    rgb = image.convert("RGB")
    scale = max_side / max(rgb.size)
    if scale < 1:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                         Image.Resampling.BICUBIC)
    return rgb


def check_usable(image: Image.Image, size: int = PATCH) -> None:
    """One-line :class:`ImageLoadError` for a query too small for a ``size`` patch, or blank."""
    if min(image.size) < size:
        raise ImageLoadError(f"the query is {image.width}×{image.height} px: too small to take "
                             f"{size}×{size} quality patches from (needs at least {size} px on each side)")
    if float(np.asarray(image.convert("L"), np.float32).std()) < BLANK_STD:
        raise ImageLoadError("the query is blank (one uniform colour): there is nothing to search by")


def _starts(length: int, size: int, count: int) -> list[int]:
    """``count`` evenly spread start offsets of a ``size`` window in ``length``."""
    if count <= 1 or length <= size:
        return [max(0, (length - size) // 2)]
    return sorted({round(i * (length - size) / (count - 1)) for i in range(count)})


def grid_patches(image: Image.Image, size: int = PATCH, per_side: int = 3) -> np.ndarray:
    """Up to ``per_side``² patches (n, size, size, 3) uint8 on a grid covering the image (fewer
    along a side that only holds one patch)."""
    check_usable(image, size)
    pixels = np.asarray(image.convert("RGB"))
    h, w = pixels.shape[:2]
    ys = _starts(h, size, per_side)  # overlapping where the side is under per_side patches
    xs = _starts(w, size, per_side)
    return np.stack([pixels[y:y + size, x:x + size] for y in ys for x in xs])


def random_patches(image: Image.Image, count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random patches (count, size, size, 3) uint8 (training)."""
    check_usable(image, size)
    pixels = np.asarray(image.convert("RGB"))
    h, w = pixels.shape[:2]
    ys, xs = rng.integers(0, h - size + 1, count), rng.integers(0, w - size + 1, count)
    return np.stack([pixels[y:y + size, x:x + size] for y, x in zip(ys, xs)])
