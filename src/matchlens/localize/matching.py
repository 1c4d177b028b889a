"""Keypoint matches between two images, and their geometric check with known or unknown poses.

Matches are nearest neighbours of RootSIFT descriptors that pass Lowe's ratio test (optionally
mutual). With both cameras known, a match is kept when its Sampson distance to the ground-truth
epipolar geometry F = K₂⁻ᵀ [t]ₓ R K₁⁻¹ is below a threshold, which is how hloc and kapture verify
mapping pairs when poses are given; without poses, the inliers of a MAGSAC++ fundamental matrix
are kept (:func:`matchlens.local.verify.inlier_mask`).
"""

from __future__ import annotations

import numpy as np

from matchlens.local.features import LocalFeatures
from matchlens.local.verify import inlier_mask, match_indices
from matchlens.localize.cameras import PIXEL_OFFSET, PosedCamera

__all__ = ["epipolar_filter", "fundamental_from_poses", "match_pair", "sampson_distance"]


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def fundamental_from_poses(first: PosedCamera, second: PosedCamera) -> np.ndarray:
    """F with x₂ᵀ F x₁ = 0 for pixel points (K frame) of the same world point."""
    relative_R = second.R @ first.R.T
    relative_t = second.R @ (first.C - second.C)
    return np.linalg.inv(second.K).T @ _skew(relative_t) @ relative_R @ np.linalg.inv(first.K)


def sampson_distance(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """First-order geometric (Sampson) distance in pixels of each pair (x1, x2) to F."""
    h1 = np.c_[x1, np.ones(len(x1))]
    h2 = np.c_[x2, np.ones(len(x2))]
    f_x1, ft_x2 = h1 @ F.T, h2 @ F
    numerator = np.sum(h2 * f_x1, axis=1) ** 2
    denominator = f_x1[:, 0] ** 2 + f_x1[:, 1] ** 2 + ft_x2[:, 0] ** 2 + ft_x2[:, 1] ** 2
    return np.sqrt(numerator / np.maximum(denominator, 1e-300))


def epipolar_filter(matches: np.ndarray, first: LocalFeatures, second: LocalFeatures, cam1: PosedCamera,
                    cam2: PosedCamera, max_error: float) -> np.ndarray:
    """The rows of ``matches`` ((m, 2) keypoint indices) within ``max_error`` px of the known geometry."""
    if not len(matches):
        return matches
    x1 = first.xy[matches[:, 0]].astype(np.float64) + PIXEL_OFFSET
    x2 = second.xy[matches[:, 1]].astype(np.float64) + PIXEL_OFFSET
    return matches[sampson_distance(fundamental_from_poses(cam1, cam2), x1, x2) < max_error]


def match_pair(first: LocalFeatures, second: LocalFeatures, *, ratio: float = 0.8, mutual: bool = True,
               cameras: tuple[PosedCamera, PosedCamera] | None = None, max_error: float = 4.0) -> np.ndarray:
    """Verified matches (m, 2) int32 of keypoint indices first → second.

    With ``cameras`` the known poses verify the matches (Sampson distance < ``max_error`` px);
    without, a MAGSAC++ fundamental matrix with the same threshold does.
    """
    matches = match_indices(first, second, ratio, mutual=mutual)
    if cameras is not None:
        return epipolar_filter(matches, first, second, cameras[0], cameras[1], max_error).astype(np.int32)
    keep = inlier_mask(first.xy[matches[:, 0]], second.xy[matches[:, 1]], "fundamental", "magsac", max_error)
    return matches[keep].astype(np.int32)
