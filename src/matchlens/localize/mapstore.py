"""A localisation map on disk: posed images, their RootSIFT features and the triangulated 3D points.

Layout of a map folder (written by :mod:`matchlens.localize.mapping`)::

    MAP/manifest.json       format, version, the index it was built with, feature and pair settings,
                            the images (name, absolute path, sha256), counts and timings
    MAP/cameras.json        the map images' cameras (read_cameras_json format)
    MAP/points.npz          xyz (P, 3) float64 world points; error (P,) mean reprojection error in px;
                            track (P,) number of images that see the point
    MAP/observations.npz    image (M,), keypoint (M,), point (M,) int32: keypoint ``keypoint`` of
                            image ``image`` (index into manifest images) observes point ``point``
    MAP/features/           the images' RootSIFT (a :class:`~matchlens.local.FeatureCache`)
    MAP/matches/I-J.npz     verified keypoint matches of mapping pair (I, J): ``matches`` (m, 2) int32

A map is built in ``MAP.partial`` (features and pair matches are kept there, so an interrupted build
resumes) and renamed to ``MAP`` when complete: a reader sees a whole map or none.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matchlens.errors import MapError
from matchlens.local.features import FeatureCache, LocalFeatures
from matchlens.localize.cameras import PosedCamera, read_cameras_json

__all__ = ["FORMAT", "VERSION", "MapImage", "SceneMap", "load_map", "pair_file", "read_pair"]

FORMAT = "matchlens-map"
VERSION = 1


@dataclass(frozen=True)
class MapImage:
    """One posed image of a map."""

    name: str     # key in cameras.json (a path relative to the scene folder)
    path: str     # absolute path when the map was built
    sha256: str   # content hash: the index entry of the same image must have it


@dataclass
class SceneMap:
    """An opened map (read-only)."""

    root: Path
    manifest: dict[str, Any]
    images: list[MapImage]
    cameras: dict[str, PosedCamera]
    xyz: np.ndarray            # (P, 3)
    error: np.ndarray          # (P,)
    track: np.ndarray          # (P,)
    observations: np.ndarray   # (M, 3) int: image, keypoint, point
    _lookup: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def feature_key(self) -> str:
        """The FeatureCache key of the map's features."""
        return str(self.manifest["features"]["key"])

    @property
    def features(self) -> FeatureCache:
        """The map's feature cache."""
        return FeatureCache(self.root / "features")

    def image_features(self, i: int) -> LocalFeatures:
        """RootSIFT of map image ``i``."""
        found = self.features.get(self.images[i].sha256, self.feature_key)
        if found is None:
            raise MapError(f"map {self.root} lacks the features of {self.images[i].name}; rebuild it")
        return found

    def points_of(self, i: int, n_keypoints: int) -> np.ndarray:
        """(n_keypoints,) int: the 3D point each keypoint of image ``i`` observes, −1 for none."""
        if i not in self._lookup:
            table = np.full(n_keypoints, -1, np.int64)
            rows = self.observations[self.observations[:, 0] == i]
            table[rows[:, 1]] = rows[:, 2]
            self._lookup[i] = table
        return self._lookup[i]

    def image_by_sha(self) -> dict[str, int]:
        """sha256 → image number, to match index entries to map images."""
        return {image.sha256: i for i, image in enumerate(self.images)}


def pair_file(root: Path, i: int, j: int) -> Path:
    """Where the verified matches of mapping pair (i, j), i < j, are stored."""
    return root / "matches" / f"{i}-{j}.npz"


def read_pair(root: Path, i: int, j: int) -> np.ndarray | None:
    """The stored verified matches (m, 2) of mapping pair (i, j), i < j; None when not stored (or unreadable)."""
    try:
        with np.load(pair_file(root, i, j), allow_pickle=False) as stored:
            return np.asarray(stored["matches"]).reshape(-1, 2)
    except (OSError, KeyError, ValueError):
        return None


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / "manifest.json"
    if not root.is_dir():
        partial = root.with_name(root.name + ".partial")
        hint = f" (an unfinished build is in {partial}: run matchlens map again to finish it)" if partial.is_dir() else ""
        raise MapError(f"map not found: {root}{hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MapError(f"{root} is not a matchlens map (cannot read manifest.json: {error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MapError(f"{root} is not a matchlens map (manifest format is not {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise MapError(f"map {root} has version {manifest.get('version')}; this matchlens reads version {VERSION}")
    return manifest


def load_map(root: str | os.PathLike) -> SceneMap:
    """Open a map folder, checking that its files agree with each other."""
    root = Path(root).absolute()
    manifest = _read_manifest(root)
    try:
        images = [MapImage(str(e["name"]), str(e["path"]), str(e["sha256"])) for e in manifest["images"]]
        with np.load(root / "points.npz", allow_pickle=False) as points:
            xyz, reprojection, track = points["xyz"].astype(np.float64), points["error"], points["track"]
        with np.load(root / "observations.npz", allow_pickle=False) as obs:
            observations = np.stack([obs["image"], obs["keypoint"], obs["point"]], axis=1).astype(np.int64)
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise MapError(f"map {root} is damaged ({error}); rebuild it with matchlens map") from None
    cameras = read_cameras_json(root / "cameras.json")
    if xyz.ndim != 2 or xyz.shape[1] != 3 or (len(observations) and (
            observations[:, 2].max() >= len(xyz) or observations[:, 0].max() >= len(images))):
        raise MapError(f"map {root} is damaged (points and observations disagree); rebuild it")
    missing = [im.name for im in images if im.name not in cameras]
    if missing:
        raise MapError(f"map {root} is damaged: no camera for {missing[0]}")
    return SceneMap(root, manifest, images, cameras, xyz, reprojection, track, observations)
