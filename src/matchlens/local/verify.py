"""Geometric verification of one pair of images from their local features.

Query→database RootSIFT matches are the nearest neighbours that pass Lowe's ratio test
(:func:`match_features`); a homography (or fundamental matrix) is then fitted robustly with
MAGSAC++ or RANSAC and its inliers (:func:`inlier_mask`, :func:`count_inliers`) measure how surely
the two images show the same object. :func:`verify_pair` does both, with the inlier threshold in
pixels of the ``max_side`` working resolution (:func:`to_working_frame`), whatever the size the
images were decoded at.

Used by the spatial-verification reranker (:mod:`matchlens.rerank.spatial`), its evidence
(:mod:`matchlens.evidence.local`) and label-free training positives (:mod:`matchlens.train.positives`).
"""

from __future__ import annotations

import cv2
import numpy as np

from matchlens.local.features import LocalFeatures

__all__ = ["METHODS", "MIN_MATCHES", "count_inliers", "inlier_mask", "match_features", "match_indices", "to_working_frame",
           "verify_pair"]

#: Robust estimators by name.
METHODS = {"magsac": cv2.USAC_MAGSAC, "ransac": cv2.RANSAC}
#: Geometric models by name, with the number of point matches each model's solver needs.
MIN_MATCHES = {"homography": 4, "fundamental": 8}
CONFIDENCE = 0.999
MAX_ITERS = 2000


def match_indices(query: LocalFeatures, database: LocalFeatures, ratio: float, mutual: bool = False) -> np.ndarray:
    """Query→database nearest-neighbour matches passing Lowe's ratio test, as keypoint indices (m, 2).

    ``mutual`` also requires the query keypoint to be the database keypoint's nearest neighbour
    (cross-check), which removes most many-to-one matches on repeated structures.
    """
    if len(query) == 0 or len(database) < 2:  # the ratio test needs a second neighbour
        return np.zeros((0, 2), np.int64)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    pairs = matcher.knnMatch(query.descriptors, database.descriptors, k=2)
    good = [(p[0].queryIdx, p[0].trainIdx) for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if not good:
        return np.zeros((0, 2), np.int64)
    found = np.array(good, np.int64)
    if mutual:
        back = np.array([m.trainIdx for m in matcher.match(database.descriptors, query.descriptors)], np.int64)
        found = found[back[found[:, 1]] == found[:, 0]]
    return found


def match_features(query: LocalFeatures, database: LocalFeatures, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Query→database nearest-neighbour matches passing Lowe's ratio test: (src, dst) points, (m, 2)."""
    found = match_indices(query, database, ratio)
    return query.xy[found[:, 0]].reshape(-1, 2), database.xy[found[:, 1]].reshape(-1, 2)


def inlier_mask(src: np.ndarray, dst: np.ndarray, model: str = "homography", method: str = "magsac",
                threshold: float = 8.0) -> np.ndarray:
    """Which ``src``→``dst`` matches are inliers of a ``model`` fitted robustly (bool, (m,));
    all False if there are too few points or no fit."""
    mask = np.zeros(len(src), bool)
    if len(src) < MIN_MATCHES[model]:
        return mask
    flag = METHODS[method]
    try:
        if model == "homography":
            matrix, found = cv2.findHomography(src, dst, flag, threshold, maxIters=MAX_ITERS, confidence=CONFIDENCE)
        else:
            matrix, found = cv2.findFundamentalMat(src, dst, flag, threshold, CONFIDENCE, MAX_ITERS)
    except cv2.error:  # degenerate configurations (e.g. all points collinear) can raise
        return mask
    if matrix is None or found is None:
        return mask
    return found.ravel().astype(bool)


def count_inliers(src: np.ndarray, dst: np.ndarray, model: str, method: str, threshold: float) -> int:
    """Inliers of a ``model`` fitted robustly to ``src``→``dst``; 0 if too few points or no fit."""
    return int(np.count_nonzero(inlier_mask(src, dst, model, method, threshold)))


def to_working_frame(points: np.ndarray, size: tuple[int, int], max_side: int) -> np.ndarray:
    """Scale points of an image of ``size`` to the resolution features are detected at (longest
    side at most ``max_side``), so a threshold means the same number of pixels whatever the size the
    image was decoded at."""
    factor = min(1.0, max_side / max(size))
    return np.ascontiguousarray(points * np.float32(factor), dtype=np.float32)


def verify_pair(query: LocalFeatures, database: LocalFeatures, *, ratio: float = 0.8, model: str = "homography",
                method: str = "magsac", threshold: float = 8.0, max_side: int = 1024) -> int:
    """Inliers of the robust model fitted to the ratio-test matches, ``threshold`` in pixels of the
    ``max_side`` working frame."""
    src, dst = match_features(query, database, ratio)
    return count_inliers(to_working_frame(src, query.size, max_side), to_working_frame(dst, database.size, max_side),
                         model, method, float(threshold))
