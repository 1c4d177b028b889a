"""Label-free region boxes from spatially verified matches (Gordo et al., "002", §3 cleaning).

Gordo et al. cleaned their landmark set with geometry and took, for each verified pair, the
bounding box of the matched keypoints as the region the proposal network must learn to find.
Here the same comes without labels: RootSIFT matches of two images pass Lowe's ratio test, a
homography is fitted robustly (:mod:`matchlens.local.verify`), and when at least ``min_inliers``
survive, the bounding box of the inliers in each image is that image's box for the pair.

Boxes are relative ``(x0, y0, x1, y1)`` in [0, 1] of the image's width and height, so they hold in
any frame the image is later resized to (the feature map of a network, the ``max_side`` input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from matchlens.local.features import LocalFeatures
from matchlens.local.pool import FeaturePool
from matchlens.local.verify import inlier_mask, match_features, to_working_frame

__all__ = ["VerifiedBoxes", "inlier_box", "pair_boxes", "verified_boxes"]

MIN_INLIERS = 15
#: A box narrower than this (relative) is a few collinear inliers, not an object: dropped.
MIN_SIDE = 0.05


@dataclass
class VerifiedBoxes:
    """The verified pairs (i, j) and, for each image id, the boxes its verified pairs gave it."""

    pairs: list[tuple[int, int]] = field(default_factory=list)
    boxes: dict[int, list[np.ndarray]] = field(default_factory=dict)
    inliers: list[int] = field(default_factory=list)

    def add(self, i: int, j: int, box_i: np.ndarray, box_j: np.ndarray, inliers: int) -> None:
        self.pairs.append((i, j))
        self.inliers.append(inliers)
        self.boxes.setdefault(i, []).append(box_i)
        self.boxes.setdefault(j, []).append(box_j)


def inlier_box(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The bounding box of ``points`` (n, 2) in pixels of an image of ``size`` (w, h), relative
    ``(x0, y0, x1, y1)`` clipped to [0, 1]."""
    w, h = size
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    box = np.array([x0 / w, y0 / h, x1 / w, y1 / h], np.float32)
    return np.clip(box, 0.0, 1.0)


def pair_boxes(a: LocalFeatures, b: LocalFeatures, *, ratio: float = 0.8, threshold: float = 4.0,
               max_side: int = 512, min_inliers: int = MIN_INLIERS) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The inlier boxes of ``a`` and ``b`` (relative) and the inlier count, or None when fewer than
    ``min_inliers`` verify or a box is degenerate. ``threshold`` is in pixels of the ``max_side``
    working frame, as :func:`matchlens.local.verify.verify_pair`."""
    src, dst = match_features(a, b, ratio)
    mask = inlier_mask(to_working_frame(src, a.size, max_side), to_working_frame(dst, b.size, max_side),
                       "homography", "magsac", threshold)
    count = int(mask.sum())
    if count < min_inliers:
        return None
    box_a, box_b = inlier_box(src[mask], a.size), inlier_box(dst[mask], b.size)
    if min(box_a[2] - box_a[0], box_a[3] - box_a[1], box_b[2] - box_b[0], box_b[3] - box_b[1]) < MIN_SIDE:
        return None
    return box_a, box_b, count


def verified_boxes(features: Sequence[LocalFeatures | None] | FeaturePool, candidates: Sequence[tuple[int, int]], *,
                   min_inliers: int = MIN_INLIERS, max_side: int = 512,
                   advance: Callable[[int], None] | None = None) -> VerifiedBoxes:
    """Verify each candidate pair (e.g. kNN pairs of a global descriptor) and collect the boxes of
    the pairs that hold: each image gets one box per verified partner. ``features[i]`` is image
    i's features (a list, or a :class:`~matchlens.local.pool.FeaturePool` that reads them as
    needed); an image without (None: unreadable) verifies nothing."""
    found = VerifiedBoxes()
    for i, j in candidates:
        a, b = features[i], features[j]
        result = None if a is None or b is None else pair_boxes(a, b, max_side=max_side, min_inliers=min_inliers)
        if result is not None:
            found.add(i, j, *result)
        if advance:
            advance(1)
    return found
