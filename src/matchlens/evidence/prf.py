"""Indicative pseudo-relevance feedback (P0 §3.4, eq. 10).

The query contribution maps C_Q of the top-k results are pooled element-wise (average or max)
into one mask, which re-weights the query image for a second round of verification.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from matchlens.errors import ConfigError
from matchlens.evidence.cam import normalise, upsample

POOLINGS = ("avg", "max")


def pool_query_maps(maps: Sequence[np.ndarray], mode: str = "avg") -> np.ndarray:
    """Eq. 10: element-wise average or max of the (each [0, 1]-normalised) C_Q maps, scaled to [0, 1]."""
    if mode not in POOLINGS:
        raise ConfigError(f"PRF pooling must be one of {', '.join(POOLINGS)}, got {mode!r}")
    if len(maps) == 0:
        raise ConfigError("PRF needs at least one query map")
    stack = np.stack([normalise(m) for m in maps])
    return normalise(stack.mean(axis=0) if mode == "avg" else stack.max(axis=0))


def reweight_query(image: Image.Image, mask: np.ndarray, floor: float = 0.2) -> Image.Image:
    """The query with its pixels multiplied by ``floor + (1 − floor)·mask`` (mask upsampled).

    The floor keeps some context: a zero weight would turn unmatched regions into black patches
    that then "match" every dark region of a target.
    """
    weight = floor + (1.0 - floor) * upsample(mask, image.size)
    pixels = np.asarray(image.convert("RGB"), np.float32) * weight[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
