"""The R-MAC region grid (Tolias et al.'s rigid grid, as cirtorch computes it), shared by the
torch poolings (:mod:`matchlens.pooling.functional`) and the NumPy ones of the torch-free query
encoder (:mod:`matchlens.extract.numpy_pooling`). Pure NumPy: no torch import."""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["RMAC_LONG_SIDE_STEPS", "RMAC_OVERLAP", "Region", "rmac_regions"]

RMAC_OVERLAP = 0.4
RMAC_LONG_SIDE_STEPS = (2, 3, 4, 5, 6, 7)

Region = tuple[int, int, int, int]  # (y0, x0, h, w) in feature-map cells


def rmac_regions(height: int, width: int, levels: int = 3) -> list[Region]:
    """The R-MAC regions of an ``H×W`` map, as ``(y0, x0, h, w)`` cell boxes, in pooling order.

    The list is the grid of cirtorch's ``rmac`` (Tolias et al.'s rigid grid):

    1. the whole map ``(0, 0, H, W)``;
    2. then for each level ``l = 1..levels``: square regions of side
       ``s_l = floor(2·min(H, W) / (l + 1))``, with ``l`` regions along the short side and
       ``l + e`` along the long side, where ``e`` (1..6, 0 for a square map) is chosen once per
       map so that level-1 regions overlap by about 40%. Along each side of length ``n`` with
       ``m`` regions, region ``k`` starts at ``floor(k·(n - s_l)/(m - 1))`` (0 if ``m = 1``),
       computed in float32 like cirtorch. Rows vary slowest. Levels with ``s_l = 0`` are
       skipped.

    For a square map the level-1 region is the whole map again, so it is counted twice, as in
    cirtorch. A 5×7 map with 3 levels gives 1 + 2 + 6 + 12 = 21 regions.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    return list(_grid(height, width, levels))


@functools.lru_cache(maxsize=256)
def _grid(height: int, width: int, levels: int) -> tuple[Region, ...]:
    short = min(height, width)
    extra = _long_side_extra(height, width)
    extra_w, extra_h = (extra, 0) if width > height else (0, extra)
    regions: list[Region] = [(0, 0, height, width)]
    for level in range(1, levels + 1):
        size = math.floor(2 * short / (level + 1))
        if size == 0:
            continue
        for y0 in _region_starts(height, size, level + extra_h):
            for x0 in _region_starts(width, size, level + extra_w):
                regions.append((y0, x0, size, size))
    return tuple(regions)


def _long_side_extra(height: int, width: int) -> int:
    """How many regions the long side gets beyond the short side at each level (0 if square):
    from ``RMAC_LONG_SIDE_STEPS``, so that consecutive level-1 regions overlap by about
    ``RMAC_OVERLAP``."""
    short, long = min(height, width), max(height, width)
    if short == long:
        return 0
    # float32 throughout, as cirtorch: at near-ties (a 3×11 map) its rounding decides the count.
    # torch computes ``number / tensor`` as ``number * reciprocal(tensor)``: so here too (11×47
    # differs otherwise).
    steps = np.asarray(RMAC_LONG_SIDE_STEPS, dtype=np.float32)
    stride = np.float32(long - short) * (np.float32(1) / (steps - np.float32(1)))
    overlap = (np.float32(short**2) - np.float32(short) * stride) / np.float32(short**2)
    return int(np.argmin(np.abs(overlap - np.float32(RMAC_OVERLAP)))) + 1


def _region_starts(side: int, size: int, count: int) -> list[int]:
    """First cells of ``count`` windows of ``size`` spread evenly from 0 to ``side - size``, in
    cirtorch's float32 ``floor(half + k·stride) - half``."""
    if count == 1:
        return [0]
    stride = np.float32((side - size) / (count - 1))
    half = math.floor(size / 2 - 1)
    ks = np.arange(count, dtype=np.float32)
    return [int(v) for v in (np.floor(np.float32(half) + ks * stride) - np.float32(half)).tolist()]
