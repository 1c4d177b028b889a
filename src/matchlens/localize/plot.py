"""A top-down PNG of a map: its cameras, a sample of its 3D points, and each query's estimated and
true camera (joined by a line, so the error is visible at a glance).

"Top-down" is the plane orthogonal to the map cameras' mean up direction (−y of each camera in the
world frame), whatever the world frame's own axes are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from matchlens.fileio import atomic_path
from matchlens.localize.mapstore import SceneMap

__all__ = ["QueryPose", "plot_map"]

MAX_POINTS = 20000  # a sample is enough to show the scene's layout and keeps the PNG small


@dataclass(frozen=True)
class QueryPose:
    """A query to draw: its name, estimated R and C (None when failed) and optional ground truth."""

    name: str
    R: np.ndarray | None
    C: np.ndarray | None
    true_R: np.ndarray | None = None
    true_C: np.ndarray | None = None


def _basis(scene_map: SceneMap) -> np.ndarray:
    """(2, 3) rows spanning the ground plane: orthogonal to the mean camera up vector."""
    up = -np.mean([cam.R[1] for cam in scene_map.cameras.values()], axis=0)
    up /= np.linalg.norm(up)
    forward = np.mean([cam.R[2] for cam in scene_map.cameras.values()], axis=0)
    forward -= up * (forward @ up)
    if np.linalg.norm(forward) < 1e-9:  # cameras looking straight down: any horizontal axis
        forward = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    forward /= np.linalg.norm(forward)
    return np.stack([np.cross(forward, up), forward])


def _camera(ax, basis: np.ndarray, R: np.ndarray, C: np.ndarray, colour: str, size: float, label: str | None) -> None:
    """The centre as a dot and the viewing direction as a short arrow."""
    centre, direction = basis @ C, basis @ R[2]
    ax.plot(*centre, "o", color=colour, markersize=5, label=label)
    ax.arrow(*centre, *(direction * size), color=colour, width=size * 0.02, length_includes_head=True)


def plot_map(scene_map: SceneMap, queries: Sequence[QueryPose], out: str | os.PathLike, title: str = "") -> None:
    """Write the top-down plot of ``scene_map`` and ``queries`` to ``out`` (PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    basis = _basis(scene_map)
    centres = np.array([basis @ cam.C for cam in scene_map.cameras.values()])
    size = max(float(np.ptp(centres, axis=0).max()) * 0.06, 1e-3)
    fig, ax = plt.subplots(figsize=(7, 7), dpi=110)
    points = scene_map.xyz[np.random.default_rng(0).permutation(len(scene_map.xyz))[:MAX_POINTS]]
    if len(points):
        flat = points @ basis.T
        ax.scatter(flat[:, 0], flat[:, 1], s=0.3, c="0.6", label=f"{len(scene_map.xyz):,} map points")
    for n, cam in enumerate(scene_map.cameras.values()):
        _camera(ax, basis, cam.R, cam.C, "tab:blue", size, "map cameras" if n == 0 else None)
    _draw_queries(ax, basis, queries, size)
    _limits(ax, centres, points @ basis.T if len(points) else centres)
    ax.set_aspect("equal")
    ax.set_title(title or f"map {scene_map.root.name}: top-down view")
    ax.legend(loc="best", fontsize=8)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def _limits(ax, centres: np.ndarray, flat_points: np.ndarray) -> None:
    """Frame the cameras and the bulk of the points: a few far (often wrong) points would
    otherwise shrink the scene to a dot."""
    low = np.minimum(centres.min(axis=0), np.percentile(flat_points, 5, axis=0))
    high = np.maximum(centres.max(axis=0), np.percentile(flat_points, 95, axis=0))
    margin = 0.1 * max(float((high - low).max()), 1e-3)
    ax.set_xlim(low[0] - margin, high[0] + margin)
    ax.set_ylim(low[1] - margin, high[1] + margin)


def _draw_queries(ax, basis: np.ndarray, queries: Sequence[QueryPose], size: float) -> None:
    """True cameras green, estimated red, a line between; failed queries only in green with a cross."""
    for n, query in enumerate(queries):
        first = n == 0
        if query.true_R is not None and query.true_C is not None:
            _camera(ax, basis, query.true_R, query.true_C, "tab:green", size, "query (truth)" if first else None)
        if query.R is not None and query.C is not None:
            _camera(ax, basis, query.R, query.C, "tab:red", size, "query (estimated)" if first else None)
            if query.true_C is not None:
                ax.plot(*np.stack([basis @ query.C, basis @ query.true_C]).T, "-", color="tab:red", linewidth=0.8)
        elif query.true_C is not None:
            ax.plot(*(basis @ query.true_C), "x", color="black", markersize=8)
        anchor = query.C if query.C is not None else query.true_C
        if anchor is not None:
            ax.annotate(query.name, basis @ anchor, fontsize=6, xytext=(3, 3), textcoords="offset points")
