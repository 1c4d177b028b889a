"""Build a localisation map from posed images (P1c's mapping pipeline, with known poses).

1. RootSIFT of every map image (cached in the map, so a resumed build reuses them);
2. mapping pairs by retrieval: each image's top-k neighbours under the index's search (one
   descriptor kind or a fusion such as ``cnn+densevlad:ghm``);
3. matching of each pair (ratio test, mutual) and verification against the known epipolar geometry;
4. tracks, triangulation with the known poses and reprojection filtering (:mod:`.triangulate`);
5. the map is written into ``MAP.partial`` and renamed to ``MAP`` (:mod:`.mapstore`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matchlens.errors import MapError
from matchlens.fileio import atomic_write, swap_in_folder, write_json_atomic
from matchlens.index.writer import ProgressFactory
from matchlens.io.images import load_image
from matchlens.local.features import CONTRASTS, FeatureCache, cached_features, LocalFeatures, extract_rootsift, feature_key
from matchlens.localize.cameras import PosedCamera, write_cameras_json
from matchlens.localize.mapstore import FORMAT, VERSION, MapImage, SceneMap, load_map, pair_file, read_pair
from matchlens.localize.matching import match_pair
from matchlens.localize.presets import PRESETS
from matchlens.localize.triangulate import build_tracks, triangulate_tracks
from matchlens.pipeline.index import Index

__all__ = ["MapSettings", "build_map", "map_entries"]


@dataclass(frozen=True)
class MapSettings:
    """How a map is built (stored in its manifest; a resumed build must use the same)."""

    k: int = 10                 # mapping pairs: each image's top-k retrieved images
    fuse: str | None = None     # descriptor kind or fusion for the pairs (None: the index's cnn)
    max_keypoints: int = 4096
    max_side: int = 1024
    contrast: str = "clahe"     # grayscale normalisation before SIFT (local.features.CONTRASTS): night queries
    ratio: float = 0.8
    epipolar_error: float = 4.0  # px, Sampson distance to the known geometry
    min_angle: float = 1.5       # degrees between the rays of a kept point
    preset: str = "config1"      # Table 1 column: min_num_matches and filter_max_reproj_error


def _noop(total: int, description: str):  # a ProgressFactory that draws nothing
    return lambda n=1: None


def map_entries(index: Index, scene: Path, cameras: dict[str, PosedCamera],
                names: Sequence[str] | None) -> list[MapImage]:
    """The map images: cameras (optionally only ``names``) whose file is under ``scene`` and indexed."""
    by_path = {os.path.realpath(e.path): e for e in index.entries if e.status == "indexed"}
    wanted = sorted(names) if names is not None else sorted(cameras)
    unknown = [n for n in wanted if n not in cameras]
    if unknown:
        raise MapError(f"{len(unknown)} map images have no camera in the cameras file, e.g. {unknown[0]}")
    images, missing = [], []
    for name in wanted:
        path = os.path.realpath(scene / name)
        entry = by_path.get(path)
        if entry is None:
            missing.append(name)
        else:
            images.append(MapImage(name, path, entry.sha256))
    if missing:
        raise MapError(f"{len(missing)} of {len(wanted)} map images are not in the index {index.root} "
                       f"(e.g. {scene / missing[0]}): index them first (matchlens add)")
    if len(images) < 2:
        raise MapError(f"a map needs at least 2 posed images; {len(images)} found")
    return images


def _features(images: Sequence[MapImage], cache: FeatureCache, settings: MapSettings,
              progress: ProgressFactory) -> list[LocalFeatures]:
    key = feature_key(settings.max_keypoints, settings.max_side, settings.contrast)
    advance = progress(len(images), "features")
    found = []
    for image in images:
        def extract(path: str = image.path) -> LocalFeatures:
            return extract_rootsift(load_image(path), settings.max_keypoints, settings.max_side, settings.contrast)

        # Match with the stored (float16) descriptors, as a resumed build and localisation will.
        found.append(cached_features(cache, image.sha256, key, extract, as_stored=True))
        advance(1)
    return found


def _pairs(index: Index, images: Sequence[MapImage], settings: MapSettings,
           progress: ProgressFactory) -> list[tuple[int, int]]:
    """Unordered mapping pairs (i < j): each image with its top-k retrieved map images."""
    number = {image.path: i for i, image in enumerate(images)}
    searcher = index.searcher(settings.fuse)
    advance = progress(len(images), "mapping pairs")
    pairs: set[tuple[int, int]] = set()
    for i, image in enumerate(images):
        results = searcher.search(image.path, k=min(index.size, settings.k + 1))
        neighbours = [number[p] for p in (os.path.realpath(r.path) for r in results) if p in number]
        for j in [n for n in neighbours if n != i][:settings.k]:
            pairs.add((min(i, j), max(i, j)))
        advance(1)
    return sorted(pairs)


def _matches(root: Path, pairs: Sequence[tuple[int, int]], features: Sequence[LocalFeatures],
             cameras: Sequence[PosedCamera], settings: MapSettings,
             progress: ProgressFactory) -> list[tuple[int, int, np.ndarray]]:
    """Verified matches of every pair, read from ``matches/`` when a previous run stored them."""
    minimum = PRESETS.get(settings.preset).min_num_matches
    advance = progress(len(pairs), "matching")
    found = []
    for i, j in pairs:
        matches = read_pair(root, i, j)
        if matches is None:
            target = pair_file(root, i, j)
            matches = match_pair(features[i], features[j], ratio=settings.ratio, cameras=(cameras[i], cameras[j]),
                                 max_error=settings.epipolar_error)
            matches = matches if len(matches) >= minimum else np.zeros((0, 2), np.int32)
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(target, "wb", fsync=False) as stream:
                np.savez(stream, matches=matches)
        found.append((i, j, matches))
        advance(1)
    return found


def _start(work: Path, settings: MapSettings, images: Sequence[MapImage]) -> None:
    """Prepare ``MAP.partial``; keep what a previous run of the same settings and images stored."""
    wanted = {"settings": asdict(settings), "images": [asdict(im) for im in images]}
    state = work / "settings.json"
    if work.exists():
        try:
            same = json.loads(state.read_text(encoding="utf-8")) == wanted
        except (OSError, ValueError):
            same = False
        if not same:  # pair numbers or matching parameters changed: stored matches are stale
            shutil.rmtree(work / "matches", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state, wanted, indent=1)


def _publish(work: Path, out: Path, replace: bool) -> None:
    """Rename the finished ``MAP.partial`` to ``MAP`` (replacing an old map only when asked)."""
    if out.exists() and not replace:
        raise MapError(f"{out} already exists: pass --replace to overwrite it")
    swap_in_folder(work, out)


def build_map(index: Index, scene: str | os.PathLike, cameras: dict[str, PosedCamera], out: str | os.PathLike,
              settings: MapSettings = MapSettings(), names: Sequence[str] | None = None, replace: bool = False,
              progress: ProgressFactory | None = None) -> SceneMap:
    """Build the map of the posed images under ``scene`` (those of ``names``, default all cameras)."""
    out = Path(out).absolute()
    if out.exists() and not replace:
        raise MapError(f"{out} already exists: pass --replace to overwrite it")
    preset = PRESETS.get(settings.preset)
    CONTRASTS.get(settings.contrast)  # an unknown name fails before any work
    progress = progress or _noop
    images = map_entries(index, Path(scene).absolute(), cameras, names)
    work = out.with_name(out.name + ".partial")
    _start(work, settings, images)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    features = _features(images, FeatureCache(work / "features"), settings, progress)
    posed = [cameras[im.name] for im in images]
    timings["features_s"], clock = time.perf_counter() - clock, time.perf_counter()
    pairs = _pairs(index, images, settings, progress)
    matches = _matches(work, pairs, features, posed, settings, progress)
    timings["matching_s"], clock = time.perf_counter() - clock, time.perf_counter()
    tracks = build_tracks(matches)
    advance = progress(1, "triangulation")
    points = triangulate_tracks(tracks, features, posed, preset.filter_max_reproj_error, settings.min_angle)
    advance(1)
    timings["triangulation_s"] = time.perf_counter() - clock
    _write(work, index, images, posed, points, pairs, settings, timings)
    _publish(work, out, replace)
    return load_map(out)


def _write(work: Path, index: Index, images: Sequence[MapImage], posed: Sequence[PosedCamera], points: Any,
           pairs: Sequence[tuple[int, int]], settings: MapSettings, timings: dict[str, float]) -> None:
    """The map's files, the manifest last (its presence marks a complete map)."""
    with atomic_write(work / "points.npz", "wb") as stream:
        np.savez(stream, xyz=points.xyz, error=points.error, track=points.track)
    obs = points.observations
    with atomic_write(work / "observations.npz", "wb") as stream:
        np.savez(stream, image=obs[:, 0], keypoint=obs[:, 1], point=obs[:, 2])
    write_cameras_json({im.name: cam for im, cam in zip(images, posed)}, work / "cameras.json")
    manifest = {
        "format": FORMAT, "version": VERSION, "index": str(index.root),
        "features": {"kind": "rootsift", "max_keypoints": settings.max_keypoints, "max_side": settings.max_side,
                     "contrast": settings.contrast,
                     "key": feature_key(settings.max_keypoints, settings.max_side, settings.contrast)},
        "settings": asdict(settings), "images": [asdict(im) for im in images], "pairs": [list(p) for p in pairs],
        "counts": {"images": len(images), "pairs": len(pairs), "tracks": points.tracks_tried,
                   "points": len(points.xyz), "observations": len(obs)},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    write_json_atomic(work / "manifest.json", manifest, indent=1)
