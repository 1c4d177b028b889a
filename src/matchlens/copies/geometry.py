"""Near-copy geometry: does one transform map almost all matched keypoints of a pair?

A copy (re-encoded, resized, cropped, recoloured, stretched) is the same pixels under an affine
map of the plane, so RootSIFT matches fit one affine transform to sub-pixel accuracy. Two
photographs of the same landmark or object from different viewpoints do not: perspective and
parallax leave most matches off any affine map (a low inlier ratio), and the homography that
does fit them departs from the best affine map (a clear perspective term). Both numbers are
kept as the pair's evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from matchlens.local import LocalFeatures, match_indices

__all__ = ["Geometry", "GeometrySettings", "verify_copy"]


@dataclass(frozen=True)
class GeometrySettings:
    """How pairs are matched and fitted: Lowe ``ratio`` (mutual matches), the affine inlier
    threshold ``affine_px`` and the homography threshold ``homography_px`` (pixels of the
    ``max_side`` working frame), RootSIFT ``max_keypoints`` and ``max_side`` (as spatial
    verification extracts them, so the index's feature cache is shared), ``match_keypoints``: the
    strongest keypoints matched (a copy keeps its strongest keypoints; matching cost grows with
    its square), ``perspective_from``: the inlier share from which the perspective term is
    computed (below it the pair is no copy whatever that term is, so the homography is skipped)."""

    ratio: float = 0.8
    affine_px: float = 2.0
    homography_px: float = 4.0
    max_keypoints: int = 1000
    max_side: int = 1024
    match_keypoints: int = 500
    perspective_from: float = 0.3


@dataclass(frozen=True)
class Geometry:
    """Evidence of one pair: ``matches`` (mutual ratio-test matches), ``inliers`` (of the affine
    map), ``ratio`` (inliers / matches), ``residual`` (median inlier error, working-frame px),
    ``perspective`` (largest corner gap between the homography and the affine map over the
    matched area, as a share of its diagonal in ``b``), ``affine`` (2×3, a → b, working frame) and the
    inlier points (k, 4: x_a, y_a, x_b, y_b in each image's own pixels) for drawing."""

    matches: int
    inliers: int
    ratio: float
    residual: float
    perspective: float
    affine: np.ndarray | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    frames: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))  # (width, height) ``points`` refer to
    frame_offset: float = float("inf")  # how far a's frame lands from b's frame (share of b's sides; 0: same frame)

    def as_dict(self) -> dict[str, float | int | None]:
        """The numbers (JSON)."""
        return {"matches": self.matches, "inliers": self.inliers, "inlier_ratio": round(self.ratio, 4),
                "residual_px": _finite(self.residual, 3), "perspective": _finite(self.perspective, 4),
                "frame_offset": _finite(self.frame_offset, 4)}


def _finite(value: float, digits: int) -> float | None:
    """None for "not measured" (inf), so the JSON stays standard."""
    return round(value, digits) if np.isfinite(value) else None


_MIN_POINTS = 6  # an affine map needs 3, a homography 4; fewer than 6 cannot show a consistent copy


def verify_copy(a: LocalFeatures, b: LocalFeatures, settings: GeometrySettings = GeometrySettings()) -> Geometry:
    """Fit the near-copy geometry of ``a`` → ``b`` (see the module docstring)."""
    a, b = _strongest(a, settings.match_keypoints), _strongest(b, settings.match_keypoints)
    found = match_indices(a, b, settings.ratio, mutual=True)
    if len(found) < _MIN_POINTS:
        return Geometry(len(found), 0, 0.0, float("inf"), float("inf"))
    # In the working frame, so that pixel thresholds mean the same whatever size images were decoded at.
    src = _working(a.xy[found[:, 0]], a.size, settings.max_side)
    dst = _working(b.xy[found[:, 1]], b.size, settings.max_side)
    affine, mask = _fit_affine(src, dst, settings.affine_px)
    if affine is None:
        return Geometry(len(found), 0, 0.0, float("inf"), float("inf"))
    errors = np.linalg.norm(src @ affine[:, :2].T + affine[:, 2] - dst, axis=1)
    inliers = int(mask.sum())
    ratio = inliers / len(found)
    points = np.hstack([a.xy[found[mask, 0]], b.xy[found[mask, 1]]]).astype(np.float32)
    perspective = (_perspective(src, dst, mask, affine, settings.homography_px) if ratio >= settings.perspective_from
                   else float("inf"))
    return Geometry(len(found), inliers, ratio, float(np.median(errors[mask])) if inliers else float("inf"),
                    perspective, affine, points, (a.size, b.size), _frame_offset(affine, a.size, b.size, settings.max_side))


def _frame_offset(affine: np.ndarray, size_a: tuple[int, int], size_b: tuple[int, int], max_side: int) -> float:
    """Largest gap between a's corners mapped into b and b's corners, relative to b's sides."""
    wa, ha = (np.array(size_a, np.float64) * min(1.0, max_side / max(size_a))).tolist()
    wb, hb = (np.array(size_b, np.float64) * min(1.0, max_side / max(size_b))).tolist()
    corners = np.array([[0, 0], [wa, 0], [wa, ha], [0, ha]], np.float64)
    mapped = (corners @ affine[:, :2].T + affine[:, 2]) / [wb, hb]
    return float(np.abs(mapped - [[0, 0], [1, 0], [1, 1], [0, 1]]).max())


def _strongest(features: LocalFeatures, count: int) -> LocalFeatures:
    """The first ``count`` keypoints: extraction and the cache keep them strongest first."""
    if len(features) <= count:
        return features
    return LocalFeatures(features.xy[:count], features.scale[:count], features.angle[:count],
                         features.descriptors[:count], features.size)


def _working(points: np.ndarray, size: tuple[int, int], max_side: int) -> np.ndarray:
    factor = min(1.0, max_side / max(size))
    return np.ascontiguousarray(points * np.float32(factor), dtype=np.float32)


def _fit_affine(src: np.ndarray, dst: np.ndarray, threshold: float) -> tuple[np.ndarray | None, np.ndarray]:
    """Robust full affine fit (6 dof: a non-uniform resize is still a copy); (None, all False) if none."""
    empty = np.zeros(len(src), bool)
    try:
        affine, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold,
                                            maxIters=2000, confidence=0.999)
    except cv2.error:  # degenerate sets (all points collinear) can raise
        return None, empty
    if affine is None or mask is None:
        return None, empty
    return affine.astype(np.float64), mask.ravel().astype(bool)


def _perspective(src: np.ndarray, dst: np.ndarray, mask: np.ndarray, affine: np.ndarray, threshold: float) -> float:
    """Largest gap, over the corners of the matched area of ``src``, between a robust homography of
    all matches and the affine map, as a share of that area's diagonal (0 for a copy)."""
    try:
        homography, _ = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, threshold, maxIters=2000, confidence=0.999)
    except cv2.error:
        homography = None
    if homography is None:
        return 0.0  # no better model than the affine one: nothing shows a perspective change
    # The corners of the area the inliers cover, not of the image: a small crop must not extrapolate.
    low, high = src[mask].min(0), src[mask].max(0)
    corners = np.array([[low[0], low[1]], [high[0], low[1]], [high[0], high[1]], [low[0], high[1]]], np.float64)
    projected = cv2.perspectiveTransform(corners[None], homography)[0]
    mapped = corners @ affine[:, :2].T + affine[:, 2]
    diagonal = max(float(np.hypot(*(mapped.max(0) - mapped.min(0)))), 1.0)  # in b's frame, like the gap
    return float(np.abs(projected - mapped).max() / diagonal)
