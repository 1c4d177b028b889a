"""Tracks from pairwise matches and their triangulation with known camera poses.

Verified pairwise matches are joined transitively into tracks (union–find over (image, keypoint)
nodes). A track that sees one image twice is inconsistent and dropped. Each remaining track is
triangulated by pycolmap's LO-RANSAC multi-view triangulation with the cameras fixed (the map
poses are known, so there is no pose estimation and no bundle adjustment); an observation is kept
only if the point lies in front of its camera and reprojects within ``max_reproj_error`` pixels,
and a point needs two kept observations with at least ``min_angle`` degrees between their rays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from matchlens.local.features import LocalFeatures
from matchlens.localize.cameras import PIXEL_OFFSET, PosedCamera

__all__ = ["Triangulation", "build_tracks", "triangulate_tracks"]

Node = tuple[int, int]  # (image number, keypoint index)


@dataclass(frozen=True)
class Triangulation:
    """Points and their observations."""

    xyz: np.ndarray           # (P, 3)
    error: np.ndarray         # (P,) mean reprojection error (px) of the kept observations
    track: np.ndarray         # (P,) kept observations per point
    observations: np.ndarray  # (M, 3) int32: image, keypoint, point
    tracks_tried: int


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Node, Node] = {}

    def find(self, node: Node) -> Node:
        parent = self.parent
        root = parent.setdefault(node, node)
        while root != parent[root]:
            root = parent[root]
        while node != root:  # path compression keeps later finds O(1)
            parent[node], node = root, parent[node]
        return root

    def union(self, a: Node, b: Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


def build_tracks(pair_matches: Iterable[tuple[int, int, np.ndarray]]) -> list[list[Node]]:
    """Tracks (lists of (image, keypoint), ≥ 2 distinct images, each image once) from (i, j, matches)."""
    sets = _UnionFind()
    for i, j, matches in pair_matches:
        for a, b in np.asarray(matches, np.int64).reshape(-1, 2):
            sets.union((i, int(a)), (j, int(b)))
    groups: dict[Node, list[Node]] = {}
    for node in list(sets.parent):
        groups.setdefault(sets.find(node), []).append(node)
    tracks = []
    for nodes in groups.values():
        images = [image for image, _ in nodes]
        if len(nodes) >= 2 and len(set(images)) == len(images):
            tracks.append(sorted(nodes))
    return tracks


def _kept(xyz: np.ndarray, nodes: Sequence[Node], points: np.ndarray, cameras: Sequence[PosedCamera],
          max_reproj_error: float) -> tuple[list[Node], list[float]]:
    """The observations of ``xyz`` in front of their camera and within the reprojection threshold."""
    kept, errors = [], []
    for (image, keypoint), observed in zip(nodes, points):
        pixel, depth = cameras[image].project(xyz[None, :])
        error = float(np.linalg.norm(pixel[0] - observed))
        if depth[0] > 0 and error <= max_reproj_error:
            kept.append((image, keypoint))
            errors.append(error)
    return kept, errors


def _max_angle(xyz: np.ndarray, centres: np.ndarray) -> float:
    """Largest angle (degrees) between the rays from ``xyz`` to the camera centres."""
    rays = centres - xyz
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    return math.degrees(math.acos(float(np.clip((rays @ rays.T).min(), -1.0, 1.0))))


def triangulate_tracks(tracks: Sequence[Sequence[Node]], features: Sequence[LocalFeatures],
                       cameras: Sequence[PosedCamera], max_reproj_error: float = 4.0,
                       min_angle: float = 1.5) -> Triangulation:
    """Triangulate every track with the known cameras; keep points that pass the checks."""
    import pycolmap

    options = pycolmap.EstimateTriangulationOptions()
    options.min_tri_angle = math.radians(min_angle)
    # pycolmap's RANSAC measures angular error (default 2°, i.e. ~30 px at f = 900): use the pixel
    # threshold seen through the longest focal length, so RANSAC's inliers are the ones kept below.
    longest = max(float(max(camera.K[0, 0], camera.K[1, 1])) for camera in cameras)
    options.ransac.max_error = math.atan2(max_reproj_error, longest)
    options.ransac.random_seed = 0  # the same matches give the same map
    poses = [camera.cam_from_world() for camera in cameras]
    models = [camera.camera.to_pycolmap() for camera in cameras]
    xyzs: list[np.ndarray] = []
    errors: list[float] = []
    lengths: list[int] = []
    observations: list[tuple[int, int, int]] = []
    for nodes in tracks:
        points = np.array([features[i].xy[k] for i, k in nodes], np.float64) + PIXEL_OFFSET
        found = pycolmap.estimate_triangulation(points, [poses[i] for i, _ in nodes], [models[i] for i, _ in nodes],
                                                options)
        if found is None:
            continue
        xyz = np.asarray(found["xyz"], np.float64).ravel()
        kept, kept_errors = _kept(xyz, nodes, points, cameras, max_reproj_error)
        if len(kept) < 2 or _max_angle(xyz, np.array([cameras[i].C for i, _ in kept])) < min_angle:
            continue
        point = len(xyzs)
        xyzs.append(xyz)
        errors.append(float(np.mean(kept_errors)))
        lengths.append(len(kept))
        observations.extend((image, keypoint, point) for image, keypoint in kept)
    return Triangulation(np.array(xyzs, np.float64).reshape(-1, 3), np.array(errors, np.float32),
                         np.array(lengths, np.int32), np.array(observations, np.int32).reshape(-1, 3), len(tracks))
