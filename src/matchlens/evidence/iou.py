"""Evidence quality as P0 measures it: IoU of the thresholded map with a region, over thresholds."""

from __future__ import annotations

from typing import Sequence

import numpy as np

THRESHOLDS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2).tolist())


def box_mask(size: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of a box ``(x0, y0, x1, y1)`` in an image of ``size`` = (W, H)."""
    width, height = size
    x0, y0, x1, y1 = box
    mask = np.zeros((height, width), bool)
    mask[max(0, int(round(y0))):min(height, int(round(y1))), max(0, int(round(x0))):min(width, int(round(x1)))] = True
    return mask


def iou_curve(heat: np.ndarray, region: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """IoU of ``heat >= t`` (heat in [0, 1]) with the boolean ``region``, for each threshold ``t``."""
    if heat.shape != region.shape:
        raise ValueError(f"map {heat.shape} and region {region.shape} differ in size")
    out = []
    for t in thresholds:
        predicted = heat >= t
        union = np.logical_or(predicted, region).sum()
        out.append(np.logical_and(predicted, region).sum() / union if union else 0.0)
    return np.asarray(out, np.float64)


def mean_iou(curves: Sequence[np.ndarray]) -> float:
    """mIoU: the mean over pairs and thresholds (the area under the mean IoU-vs-threshold curve)."""
    return float(np.mean(np.stack(curves))) if len(curves) else float("nan")
