"""Localise a query photo in a map: retrieve, match, lift to 3D, PnP + RANSAC (P1c's localisation).

1. The query's top-k map images under the index's search (a descriptor kind or a fusion);
2. RootSIFT matches of the query against each retrieved image (ratio test, mutual);
3. each matched map keypoint that observes a 3D point gives a 2D–3D correspondence (one per
   (query keypoint, point) pair);
4. pycolmap's LO-RANSAC PnP and non-linear refinement (``estimate_and_refine_absolute_pose``) with
   the registration preset's threshold; a pose with too few inliers, or too small an inlier share,
   is reported as ``failed`` with the reason, never as a success.

Without known intrinsics the query camera is a SIMPLE_PINHOLE with focal 1.2 × the longest side
and principal point at the centre (COLMAP's default prior), and the focal length is estimated
with the pose.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from matchlens.errors import MapError
from matchlens.io.images import load_image
from matchlens.local.features import LocalFeatures, extract_rootsift
from matchlens.local.verify import match_indices
from matchlens.localize.cameras import PIXEL_OFFSET, CameraModel
from matchlens.localize.mapstore import SceneMap
from matchlens.localize.presets import PRESETS, RegistrationPreset
from matchlens.pipeline.index import Index

__all__ = ["Localization", "Localizer", "default_camera"]

DEFAULT_FOCAL_FACTOR = 1.2  # COLMAP's prior focal length: 1.2 × the longest image side


@dataclass
class Localization:
    """The answer for one query: a pose (status "ok") or the reason it failed."""

    query: str
    status: str                       # "ok" or "failed"
    reason: str | None = None
    R: np.ndarray | None = None       # world-to-camera rotation
    t: np.ndarray | None = None       # x_cam = R X + t
    C: np.ndarray | None = None       # camera centre (map units)
    inliers: int = 0
    correspondences: int = 0
    camera: CameraModel | None = None  # the query camera (refined when the preset refines it)
    retrieved: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when a pose was found and passed the preset's checks."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        pose = {key: None if value is None else np.asarray(value).tolist()
                for key, value in (("R", self.R), ("t", self.t), ("C", self.C))}
        return {"query": self.query, "status": self.status, "reason": self.reason, **pose,
                "inliers": self.inliers, "correspondences": self.correspondences,
                "camera": None if self.camera is None else self.camera.to_dict(),
                "retrieved": self.retrieved, "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()}}


def default_camera(width: int, height: int) -> CameraModel:
    """The camera assumed for a query of unknown intrinsics (its focal is then estimated)."""
    return CameraModel("SIMPLE_PINHOLE", width, height, (DEFAULT_FOCAL_FACTOR * max(width, height), width / 2,
                                                         height / 2))


class Localizer:
    """Localises queries against one map, retrieving through the index the map was built with."""

    def __init__(self, scene_map: SceneMap, index: Index, k: int = 5, fuse: str | None = None,
                 preset: str = "config1", ratio: float = 0.8) -> None:
        self.map, self.index, self.k, self.ratio = scene_map, index, int(k), float(ratio)
        self.preset: RegistrationPreset = PRESETS.get(preset)
        self.searcher = index.searcher(fuse)
        self._by_sha = scene_map.image_by_sha()
        self._rows = self._map_rows()
        self._features: dict[int, LocalFeatures] = {}

    def _map_rows(self) -> dict[int, int]:
        """Index entry id → map image number, refusing an index that holds none of the map's images."""
        rows = {e.id: self._by_sha[e.sha256] for e in self.index.entries
                if e.status == "indexed" and e.sha256 in self._by_sha}
        if not rows:
            raise MapError(f"map {self.map.root} was built for another index: none of its "
                           f"{len(self.map.images)} images is in {self.index.root}")
        return rows

    def _map_features(self, i: int) -> LocalFeatures:
        if i not in self._features:
            self._features[i] = self.map.image_features(i)
        return self._features[i]

    def localize(self, query: str | os.PathLike | Image.Image, camera: CameraModel | None = None,
                 name: str | None = None) -> Localization:
        """Localise one query image (a path or a decoded image)."""
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        image = query if isinstance(query, Image.Image) else load_image(query)
        label = name or (str(query) if not isinstance(query, Image.Image) else "query")
        settings = self.map.manifest["features"]
        # The query is described exactly as the map images were (same keypoints budget and contrast).
        features = extract_rootsift(image, int(settings["max_keypoints"]), int(settings["max_side"]),
                                    str(settings.get("contrast", "none")))
        timings["features"], clock = 1000 * (time.perf_counter() - clock), time.perf_counter()
        retrieved = self._retrieve(image)
        timings["retrieval"], clock = 1000 * (time.perf_counter() - clock), time.perf_counter()
        points2d, points3d = self._correspondences(features, retrieved)
        timings["matching"], clock = 1000 * (time.perf_counter() - clock), time.perf_counter()
        result = Localization(label, "failed", retrieved=[self.map.images[i].name for i in retrieved],
                              correspondences=len(points2d), timings_ms=timings)
        self._solve(result, points2d, points3d, camera or default_camera(*image.size), known=camera is not None)
        timings["pnp"] = 1000 * (time.perf_counter() - clock)
        return result

    def _retrieve(self, image: Image.Image) -> list[int]:
        """Map image numbers of the query's top-k (index images that are not map images are skipped)."""
        # Enough results to hold k map images even if every other indexed image ranks first.
        results = self.searcher.search(image, k=min(self.index.size, self.k + self.index.size - len(self._rows)))
        found = [self._rows[r.id] for r in results if r.id in self._rows]
        return found[:self.k]

    def _correspondences(self, features: LocalFeatures, retrieved: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Unique (query keypoint, 3D point) correspondences: (m, 2) pixels and (m, 3) points."""
        pairs: set[tuple[int, int]] = set()
        for i in retrieved:
            database = self._map_features(i)
            matches = match_indices(features, database, self.ratio, mutual=True)
            if not len(matches):
                continue
            point = self.map.points_of(i, len(database))[matches[:, 1]]
            pairs.update((int(q), int(p)) for q, p in zip(matches[:, 0], point) if p >= 0)
        if not pairs:
            return np.zeros((0, 2)), np.zeros((0, 3))
        found = np.array(sorted(pairs), np.int64)
        return features.xy[found[:, 0]].astype(np.float64) + PIXEL_OFFSET, self.map.xyz[found[:, 1]]

    def _solve(self, result: Localization, points2d: np.ndarray, points3d: np.ndarray, camera: CameraModel,
               known: bool) -> None:
        """Fill ``result`` with the pose of PnP + RANSAC and refinement, or the reason it failed."""
        import pycolmap

        preset = self.preset
        if len(points2d) < max(preset.min_num_matches, 4):
            result.reason = f"too few 2D-3D matches ({len(points2d)} < {max(preset.min_num_matches, 4)})"
            return
        estimation = pycolmap.AbsolutePoseEstimationOptions()
        estimation.estimate_focal_length = not known
        estimation.ransac.max_error = preset.abs_pose_max_error
        estimation.ransac.min_inlier_ratio = preset.abs_pose_min_inlier_ratio
        estimation.ransac.random_seed = 0  # the same query gives the same pose
        refinement = pycolmap.AbsolutePoseRefinementOptions()
        refinement.refine_focal_length = preset.refine_focal_length or not known
        refinement.refine_extra_params = preset.refine_extra_params
        colmap_camera = camera.to_pycolmap()
        found = pycolmap.estimate_and_refine_absolute_pose(points2d, points3d, colmap_camera, estimation, refinement)
        inliers = 0 if found is None else int(found["num_inliers"])
        result.inliers = inliers
        if found is None or inliers < preset.abs_pose_min_num_inliers:
            result.reason = f"too few PnP inliers ({inliers} < {preset.abs_pose_min_num_inliers})"
            return
        if inliers < preset.abs_pose_min_inlier_ratio * len(points2d):
            result.reason = (f"inlier ratio {inliers / len(points2d):.2f} below "
                             f"{preset.abs_pose_min_inlier_ratio} ({inliers}/{len(points2d)})")
            return
        pose = found["cam_from_world"]
        result.R = np.asarray(pose.rotation.matrix(), np.float64)
        result.t = np.asarray(pose.translation, np.float64).ravel()
        result.C = -result.R.T @ result.t
        result.camera = CameraModel(camera.model, camera.width, camera.height,
                                    tuple(float(v) for v in colmap_camera.params))
        result.status = "ok"
