"""Pixel digests of index images for the duplicates pass (their RootSIFT comes through
:class:`matchlens.local.pool.FeaturePool`, shared with ``train-regions``)."""

from __future__ import annotations

import hashlib

import numpy as np

from matchlens.io.images import load_image
from matchlens.local.pool import UNUSABLE

__all__ = ["pixel_digest"]


def pixel_digest(path: str) -> str | None:
    """sha256 of the decoded upright RGB pixels and size (None if unreadable): equal for the same
    picture saved in two lossless formats or with different metadata."""
    try:
        image = load_image(path)
    except UNUSABLE:
        return None
    digest = hashlib.sha256(f"{image.size}".encode())
    digest.update(np.asarray(image.convert("RGB")).tobytes())
    return digest.hexdigest()

