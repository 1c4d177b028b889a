"""Regional descriptors: ROI pooling of each region's cells of the backbone feature map.

For a feature map ``F`` (C × h × w) and a relative box ``(x0, y0, x1, y1)`` the region's cells
are rows ``floor(y0·h) .. max(ceil(y1·h), floor(y0·h)+1)`` and the same for columns (at least one
cell, so a thin collar band on a coarse map still gets one). Each region is pooled like the
index's global descriptor — GeM with the spec's ``p`` (max pooling for mac/rmac specs, which
pool by maxima) — and L2-normalised. With several scales in the spec, per-scale region
descriptors are L2-normalised, summed and L2-normalised again, as the global descriptor is.
No whitening: the index's whitening was learned on whole-image descriptors.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from matchlens.errors import ConfigError
from matchlens.extract.numpy_pooling import gem, mac
from matchlens.linalg import l2_normalize
from matchlens.regional.layouts import Box

__all__ = ["POOLS", "pool_for_spec", "pool_regions", "region_cells", "regional_descriptors"]

POOLS = ("auto", "gem", "max")  # the regional kind's ``pool`` parameter


def pool_for_spec(pool: str, spec: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``(C, h, w) → (C,)`` for the kind's ``pool``: ``auto`` follows the index's pooling."""
    if pool not in POOLS:
        raise ConfigError(f"regional kind: pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if pool == "auto":
        pool = "max" if spec.pooling in ("mac", "rmac") else "gem"
    if pool == "max":
        return mac
    p = float(dict(spec.pooling_params).get("p", 3.0)) if spec.pooling == "gem" else 3.0
    return lambda cells: gem(cells, p=p)


def region_cells(box: Box, height: int, width: int) -> tuple[int, int, int, int]:
    """``(r0, c0, r1, c1)``: the cells of an ``height × width`` map a relative box covers (≥ 1)."""
    x0, y0, x1, y1 = box
    r0 = min(int(math.floor(y0 * height)), height - 1)
    c0 = min(int(math.floor(x0 * width)), width - 1)
    r1 = max(int(math.ceil(y1 * height)), r0 + 1)
    c1 = max(int(math.ceil(x1 * width)), c0 + 1)
    return r0, c0, min(r1, height), min(c1, width)


def pool_regions(fmap: np.ndarray, boxes: Sequence[Box], pool: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(R, C) L2-normalised descriptors of ``boxes`` on one feature map (C, h, w)."""
    height, width = fmap.shape[-2:]
    rows = []
    for box in boxes:
        r0, c0, r1, c1 = region_cells(box, height, width)
        rows.append(pool(fmap[:, r0:r1, c0:c1]))
    return l2_normalize(np.stack(rows).astype(np.float64))


def regional_descriptors(extractor: Any, image: Image.Image, boxes: Sequence[Box], pool: str = "auto",
                         side: int | None = None) -> np.ndarray:
    """(R, d) L2-normalised region descriptors of one decoded image from the index's backbone map.

    ``extractor``: the index's query encoder (``Index.extractor``: an Extractor or the torch-free
    LightEncoder, both offer ``spec`` and ``feature_map``); ``boxes``: relative boxes (a layout's
    :meth:`~matchlens.regional.layouts.Layout.boxes`); ``side``: the longest side the map is
    computed at (default: the spec's ``max_side``; a larger side gives finer regions).
    """
    spec = extractor.spec
    pooling = pool_for_spec(pool, spec)
    base = side or spec.max_side
    total: np.ndarray | None = None
    for scale in spec.scales:
        fmap = _numpy(extractor.feature_map(image, scale * base / spec.max_side))[0]
        pooled = pool_regions(fmap.astype(np.float32, copy=False), boxes, pooling)
        total = pooled.astype(np.float64) if total is None else total + pooled
    assert total is not None  # a spec has at least one scale
    return l2_normalize(total)


def _numpy(fmap: Any) -> np.ndarray:
    """A feature map as NumPy (the PyTorch Extractor gives a CPU tensor, the LightEncoder an array)."""
    return fmap.numpy() if hasattr(fmap, "numpy") else np.asarray(fmap)
