"""COLMAP registration settings of the Kapture paper (P1c, Table 1) as named presets.

The paper maps with ``config1`` and localises with ``config1`` or ``config2``; ``config3`` also
refines the focal length and distortion of the query camera. The numbers are COLMAP's
``image_registrator`` options of Table 1; how each is used here:

- ``min_num_matches``: fewer 2D–3D correspondences than this → the query fails before PnP.
- ``abs_pose_max_error``: the RANSAC reprojection threshold of PnP, in pixels.
- ``abs_pose_min_num_inliers`` / ``abs_pose_min_inlier_ratio``: a pose with fewer inliers (or a
  smaller inlier share) is reported as failed, never as a success.
- ``filter_max_reproj_error``: map points whose reprojection error exceeds it in any image are
  dropped when the map is built (mapping always uses config1, as the paper).
- ``refine_focal_length`` / ``refine_extra_params``: what the non-linear refinement may change.
- ``init_min_num_inliers`` and ``ba_local_max_num_iterations`` are kept for reference: with known
  map poses there is no initial pair and no bundle adjustment (the paper's mapping skips pose
  estimation too).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from matchlens.registry import Registry

__all__ = ["PRESETS", "RegistrationPreset"]


@dataclass(frozen=True)
class RegistrationPreset:
    """One column of the paper's Table 1."""

    refine_focal_length: bool
    refine_principal_point: bool
    refine_extra_params: bool
    min_num_matches: int
    init_min_num_inliers: int
    abs_pose_min_num_inliers: int
    abs_pose_min_inlier_ratio: float
    ba_local_max_num_iterations: int
    abs_pose_max_error: float
    filter_max_reproj_error: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for manifests and --json output)."""
        return asdict(self)


#: The only list of registration preset names.
PRESETS: Registry[RegistrationPreset] = Registry("registration preset")
PRESETS.register("config1")(RegistrationPreset(False, False, False, 15, 100, 30, 0.25, 25, 12.0, 4.0))
PRESETS.register("config2")(RegistrationPreset(False, False, False, 4, 4, 4, 0.05, 50, 20.0, 12.0))
PRESETS.register("config3")(RegistrationPreset(True, False, True, 4, 4, 4, 0.05, 50, 20.0, 12.0))
