"""Image → network input, shared by the Extractor and the torch-free query encoder.

Decoding (safe, upright, RGB, JPEG draft shrinking for whole images), query-box cropping, the
aspect-keeping bicubic resize and the mean/std normalisation live here once, so both encoders
feed their networks the same arrays. NumPy and PIL only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from matchlens.config import PipelineSpec
from matchlens.io.images import crop_to_box, load_image

__all__ = ["decode_side", "load_for_spec", "normaliser", "scale_side", "to_array"]


def scale_side(spec: PipelineSpec, scale: float) -> int:
    """Longest image side at ``scale`` for ``spec``."""
    return round(spec.max_side * scale)


def decode_side(spec: PipelineSpec) -> int:
    """The side a whole image is decoded at (at least twice the largest resized side).

    JPEG draft decoding may shrink huge files by 1/2..1/8 in the DCT; asking for twice the needed
    side keeps the final bicubic resize in charge, so a file and the same image given as pixels
    describe (almost) identically.
    """
    return 2 * round(spec.max_side * max(spec.scales))


def load_for_spec(spec: PipelineSpec, source, box: Sequence[float] | None = None) -> Image.Image:
    """Decode (safely, upright, RGB) and optionally crop to a query box.

    A box is in the pixels of the full-size upright image, so a boxed query is decoded at full
    size (no JPEG draft shrinking, which would move the box) and cropped before resizing.
    """
    if box is None:
        return load_image(source, max_side=decode_side(spec))
    return crop_to_box(load_image(source), box)


def normaliser(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) with ``pixel * scale + offset == (pixel / 255 - mean) / std``."""
    mean_ = np.asarray(mean, dtype=np.float32)
    std_ = np.asarray(std, dtype=np.float32)
    return 1.0 / (255.0 * std_), -mean_ / std_


def to_array(image: Image.Image, side: int, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Resize so the longest side is ``side`` (aspect kept; no padding, no distortion); normalise
    into a (1, 3, h, w) float32 array."""
    w, h = image.size
    ratio = side / max(w, h)
    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels * scale + offset
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))[None]
