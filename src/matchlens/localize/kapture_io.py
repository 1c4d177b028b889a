"""Posed images and retrieval results in the kapture format (https://github.com/naver/kapture).

:func:`read_kapture` reads the cameras of a kapture dataset; :func:`export_kapture` writes an index
(and optionally its localisation map) as one; :func:`write_pairs` writes the retrieval pairs that
hloc, COLMAP's ``matches_importer`` and kapture-localization read.

The reader parses the few CSV files it needs itself: the ``kapture`` package pulls numba and
numpy-quaternion, too heavy for a dependency (the tests use it to check both directions).

What the files mean (kapture format 1.1)::

    sensors/sensors.txt          sensor_id, name, sensor_type, [sensor_params]+
                                 a camera's params: MODEL, width, height, model params (COLMAP's order)
    sensors/records_camera.txt   timestamp, device_id, image_path (relative to sensors/records_data)
    sensors/trajectories.txt     timestamp, device_id, qw, qx, qy, qz, tx, ty, tz: the device_from_world
                                 pose (world → camera, as COLMAP), so R = quaternion matrix, C = -Rᵀ t
    sensors/rigs.txt             rig_id, sensor_id, qw, qx, qy, qz, tx, ty, tz: sensor_from_rig
    reconstruction/keypoints/T/IMAGE.kpt, descriptors/T/IMAGE.desc, global_features/G/IMAGE.gfeat
                                 raw little-endian arrays, their dtype and width in keypoints.txt, ...
    reconstruction/matches/T/A.overlapping/B.matches
                                 float64 triples (keypoint of A, keypoint of B, score), A < B as strings

Exported keypoints are (x, y, scale, orientation) float32 in the pixel frame of the cameras'
intrinsics: continuous coordinates with (0, 0) at the top-left corner of the full-size image, as
COLMAP (kapture's COLMAP converter passes them through unchanged); ``scale`` is OpenCV's keypoint
size (diameter in pixels) and ``orientation`` is in radians, the order of COLMAP's 4-column keypoints.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matchlens.errors import MapError
from matchlens.fileio import atomic_write, swap_in_folder, write_text_atomic
from matchlens.index.metadata import Entry
from matchlens.index.writer import ProgressFactory
from matchlens.io.images import image_size, load_image
from matchlens.local.features import (CACHE_KIND, FeatureCache, LocalFeatures, cached_features, extract_rootsift,
                                      feature_key)
from matchlens.localize.cameras import PIXEL_OFFSET, PosedCamera
from matchlens.localize.mapstore import SceneMap, read_pair
from matchlens.localize.matching import match_pair
from matchlens.pipeline.index import Index

__all__ = ["GLOBAL_FEATURES", "KEYPOINTS", "PAIRS_FILE", "PERSPECTIVE_MODELS", "export_kapture", "pinhole_matrix",
           "read_kapture", "retrieval_pairs", "write_pairs"]

log = logging.getLogger(__name__)

KEYPOINTS = "rootsift"       # keypoints/descriptors/matches type name
GLOBAL_FEATURES = "matchlens"  # global_features type name
PAIRS_FILE = "pairs.txt"     # the retrieval pairsfile, at the root of an exported dataset
MAX_KEYPOINTS, MAX_SIDE = 4096, 1024  # as matchlens.localize.mapping: the same cache entries serve both

_FORMAT_LINE = "# kapture format: 1.1"
_SENSORS = Path("sensors", "sensors.txt")
_RECORDS = Path("sensors", "records_camera.txt")
_TRAJECTORIES = Path("sensors", "trajectories.txt")
_RIGS = Path("sensors", "rigs.txt")

#: Perspective camera models (COLMAP's names, shared by kapture): model → (number of parameters,
#: index of the first distortion parameter). With all distortion parameters zero the camera is a
#: pinhole; fisheye models are not, whatever their parameters.
PERSPECTIVE_MODELS = {"SIMPLE_PINHOLE": (3, 3), "PINHOLE": (4, 4), "SIMPLE_RADIAL": (4, 3), "RADIAL": (5, 3),
                      "OPENCV": (8, 4), "FULL_OPENCV": (12, 4), "FOV": (5, 4)}


# --- reading -----------------------------------------------------------------------------------

def pinhole_matrix(model: str, params: Sequence[float], label: str) -> np.ndarray:
    """K (3×3) of an undistorted perspective camera; MapError naming ``label`` for any other."""
    if model not in PERSPECTIVE_MODELS:
        raise MapError(f"{label}: camera model {model} is not a perspective model matchlens can use; "
                       "undistort the images first (e.g. COLMAP image_undistorter) and give their PINHOLE cameras")
    count, first = PERSPECTIVE_MODELS[model]
    values = [float(v) for v in params]
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise MapError(f"{label}: camera model {model} needs {count} finite parameters, got {len(values)}")
    if any(v != 0.0 for v in values[first:]):
        raise MapError(f"{label}: camera model {model} has non-zero distortion {values[first:]}; undistort the "
                       "images first (e.g. COLMAP image_undistorter) and give their PINHOLE cameras")
    fx, fy, cx, cy = (values[0], values[0], values[1], values[2]) if first == 3 else values[:4]
    if fx <= 0 or fy <= 0:
        raise MapError(f"{label}: camera model {model} needs positive focal lengths, got {fx:g}, {fy:g}")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _table(path: Path) -> list[list[str]]:
    """The rows of a kapture CSV file: comma-separated, trimmed, '#' comment and blank lines skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise MapError(f"cannot read kapture file {path}: {error}") from None
    return [[field.strip() for field in line.split(",")] for line in lines if line.strip() and not line.startswith("#")]


def _floats(fields: Sequence[str], label: str) -> list[float]:
    try:
        return [float(v) for v in fields]
    except ValueError:
        raise MapError(f"{label}: expected numbers, got {', '.join(fields)}") from None


@dataclass(frozen=True)
class _Intrinsics:
    K: np.ndarray
    width: int
    height: int


def _read_sensors(path: Path) -> dict[str, _Intrinsics | None]:
    """Camera sensors: id → intrinsics, or None for an UNKNOWN_CAMERA (no calibration)."""
    cameras: dict[str, _Intrinsics | None] = {}
    for row in _table(path):
        if len(row) < 3 or row[2] != "camera":
            continue  # other sensors (depth, lidar, wifi...) are not images
        label = f"{path}: camera {row[0]}"
        if len(row) < 6:
            raise MapError(f"{label}: expected MODEL, width, height and parameters")
        model, size = row[3].upper(), _floats(row[4:6], label)
        if model == "UNKNOWN_CAMERA":
            cameras[row[0]] = None
            continue
        K = pinhole_matrix(model, _floats(row[6:], label), label)
        cameras[row[0]] = _Intrinsics(K, int(size[0]), int(size[1]))
    return cameras


def _rotation(q: Sequence[float], label: str) -> np.ndarray:
    """The rotation matrix of quaternion (qw, qx, qy, qz), normalised first."""
    norm = math.sqrt(sum(v * v for v in q))
    if not math.isfinite(norm) or norm < 1e-12:
        raise MapError(f"{label}: the rotation quaternion must be non-zero and finite")
    w, x, y, z = (v / norm for v in q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _quaternion(R: np.ndarray) -> np.ndarray:
    """(qw, qx, qy, qz), qw ≥ 0, of a rotation matrix (Shepperd's method: stable for every angle)."""
    m = np.asarray(R, np.float64)
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0] * 4
        q[0], q[1 + i] = (m[k, j] - m[j, k]) / s, 0.25 * s
        q[1 + j], q[1 + k] = (m[j, i] + m[i, j]) / s, (m[k, i] + m[i, k]) / s
    quat = np.array(q) / np.linalg.norm(q)
    return -quat if quat[0] < 0 else quat


Pose = tuple[np.ndarray, np.ndarray]  # (R, t): x_device = R x_world + t


def _read_poses(path: Path) -> dict[tuple[str, str], Pose]:
    """(first id, second id) → pose, for trajectories (timestamp, device) and rigs (rig, sensor)."""
    poses: dict[tuple[str, str], Pose] = {}
    for row in _table(path):
        label = f"{path}: {row[0]}, {row[1] if len(row) > 1 else ''}"
        if len(row) != 9:
            raise MapError(f"{label}: expected 9 fields (id, device, qw, qx, qy, qz, tx, ty, tz), got {len(row)}")
        if "" in row[2:]:
            continue  # a partial pose (rotation or position only) cannot place a camera
        values = _floats(row[2:], label)
        poses[(row[0], row[1])] = (_rotation(values[:4], label), np.array(values[4:]))
    return poses


def _camera_pose(timestamp: str, device: str, trajectories: dict[tuple[str, str], Pose],
                 rigs: dict[tuple[str, str], Pose]) -> Pose | None:
    """The device's world → camera pose: its own trajectory entry, else its rig's composed with the
    device's pose in the rig (one rig level, as records in kapture datasets use)."""
    if (timestamp, device) in trajectories:
        return trajectories[(timestamp, device)]
    for (rig, sensor), (R_sr, t_sr) in rigs.items():
        if sensor == device and (timestamp, rig) in trajectories:
            R_rw, t_rw = trajectories[(timestamp, rig)]
            return R_sr @ R_rw, R_sr @ t_rw + t_sr
    return None


def _stamp(text: str, path: Path) -> str:
    """A timestamp in one spelling (kapture pads them; "0007" and "7" are the same record time)."""
    try:
        return str(int(text))
    except ValueError:
        raise MapError(f"{path}: timestamps must be integers, got {text!r}") from None


def _check_kapture_root(root: Path) -> None:
    if not root.is_dir():
        raise MapError(f"kapture folder not found: {root}")
    if not (root / _SENSORS).is_file() or not (root / _RECORDS).is_file():
        nested = [p.parent.parent.name for p in sorted(root.glob(f"*/{_SENSORS.as_posix()}"))]
        hint = f" (it holds kapture datasets in {', '.join(nested)}: give one of them)" if nested else ""
        raise MapError(f"{root} is not a kapture dataset: it needs {_SENSORS.as_posix()} and "
                       f"{_RECORDS.as_posix()}{hint}")


def read_kapture(root: str | os.PathLike) -> dict[str, PosedCamera]:
    """The posed cameras of a kapture dataset, keyed by image path (relative to ``sensors/records_data``).

    Images whose camera is UNKNOWN_CAMERA or that have no pose in ``trajectories.txt`` are left
    out (logged); a distorted or fisheye camera is refused (MapError: undistort the images first).
    """
    root = Path(root)
    _check_kapture_root(root)
    sensors = _read_sensors(root / _SENSORS)
    trajectories = ({(_stamp(ts, root / _TRAJECTORIES), device): pose
                     for (ts, device), pose in _read_poses(root / _TRAJECTORIES).items()}
                    if (root / _TRAJECTORIES).is_file() else {})
    rigs = _read_poses(root / _RIGS) if (root / _RIGS).is_file() else {}
    cameras: dict[str, PosedCamera] = {}
    unposed = 0
    for row in _table(root / _RECORDS):
        if len(row) != 3:
            raise MapError(f"{root / _RECORDS}: expected timestamp, device_id, image_path, got {', '.join(row)}")
        timestamp, device, name = _stamp(row[0], root / _RECORDS), row[1], row[2]
        if device not in sensors:
            continue  # a record of a sensor that is not a camera
        intrinsics, pose = sensors[device], _camera_pose(timestamp, device, trajectories, rigs)
        if intrinsics is None or pose is None:
            unposed += 1
            continue
        R, t = pose
        cameras[name] = PosedCamera(name, intrinsics.K, R, -R.T @ t, intrinsics.width, intrinsics.height)
    if unposed:
        log.warning("%s: %d images without calibration or pose are left out", root, unposed)
    if not cameras:
        raise MapError(f"kapture dataset {root} has no image with both a calibrated camera and a pose")
    return cameras


# --- names and retrieval pairs -----------------------------------------------------------------

def _indexed(index: Index) -> list[Entry]:
    """The searchable images, in vector-row order."""
    entries = sorted((e for e in index.entries if e.status == "indexed" and e.row is not None),
                     key=lambda e: int(e.row or 0))
    if not entries:
        raise MapError(f"index {index.root} has no indexed image to export")
    return entries


def _names(entries: Sequence[Entry], scene_map: SceneMap | None) -> list[str]:
    """Dataset names: the map's name of a map image, else the path relative to the images' common folder."""
    folders = [os.path.dirname(os.path.abspath(e.path)) for e in entries]
    parent = os.path.commonpath(folders)
    in_map = _map_numbers(entries, scene_map)
    names = [scene_map.images[in_map[n]].name if scene_map is not None and n in in_map
             else Path(os.path.relpath(os.path.abspath(e.path), parent)).as_posix()
             for n, e in enumerate(entries)]
    seen: dict[str, int] = {}
    for n, name in enumerate(names):
        if name in seen:
            raise MapError(f"two images export as {name!r} ({entries[seen[name]].path} and {entries[n].path})")
        seen[name] = n
    return names


def _map_numbers(entries: Sequence[Entry], scene_map: SceneMap | None) -> dict[int, int]:
    """Entry number → map image number, matched by content hash."""
    if scene_map is None:
        return {}
    by_sha = scene_map.image_by_sha()
    return {n: by_sha[e.sha256] for n, e in enumerate(entries) if e.sha256 in by_sha}


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise MapError(f"k (pairs per image) must be a positive integer, got {k!r}")
    return k


def retrieval_pairs(index: Index, *, k: int = 20, fuse: str | None = None,
                    progress: ProgressFactory | None = None) -> list[tuple[int, int, float]]:
    """(query, retrieved, score) for each indexed image and its top ``k`` other images, best first.

    Numbers are positions in the index's searchable images (vector-row order). The ranking is the
    index's own search (``fuse``: a stored kind or fusion, None for the global descriptor) with the
    image itself as the query; the image is dropped from its own list.
    """
    k = _check_k(k)
    entries = _indexed(index)
    number = {e.id: n for n, e in enumerate(entries)}
    searcher = index.searcher(fuse)
    advance = progress(len(entries), "retrieval pairs") if progress else None
    pairs: list[tuple[int, int, float]] = []
    for n, entry in enumerate(entries):
        results = searcher.search(entry.path, k=min(len(entries), k + 1))
        others = [(number[r.id], r.score) for r in results if r.id != entry.id and r.id in number]
        pairs.extend((n, m, float(score)) for m, score in others[:k])
        if advance:
            advance(1)
    return pairs


def _pairs_text(names: Sequence[str], pairs: Sequence[tuple[int, int, float]], style: str) -> str:
    if style == "hloc":
        spaced = next((names[i] for pair in pairs for i in pair[:2] if re.search(r"\s", names[i])), None)
        if spaced is not None:
            raise MapError(f"image name {spaced!r} has white space, which hloc and COLMAP pair lists cannot hold")
        return "".join(f"{names[q]} {names[m]}\n" for q, m, _ in pairs)
    if style == "kapture":
        _check_csv_names(names)
        lines = [_FORMAT_LINE, "# query_image, map_image, score"]
        return "\n".join(lines + [f"{names[q]}, {names[m]}, {score!r}" for q, m, score in pairs]) + "\n"
    raise MapError(f"pairs style must be 'hloc' or 'kapture', got {style!r}")


def _check_csv_names(names: Sequence[str]) -> None:
    bad = next((n for n in names if "," in n or "\n" in n or n != n.strip()), None)
    if bad is not None:
        raise MapError(f"image name {bad!r} cannot be written in kapture's comma-separated files")


def write_pairs(index: Index, path: str | os.PathLike, *, k: int = 20, fuse: str | None = None,
                style: str = "hloc", scene_map: SceneMap | None = None,
                progress: ProgressFactory | None = None) -> int:
    """Write the retrieval pairs of every indexed image (its top ``k``); returns the number of pairs.

    ``style="hloc"``: one ``name0 name1`` line per pair, the format of hloc's pairs files and of
    COLMAP's ``matches_importer --match_type pairs``. ``style="kapture"``: a kapture pairsfile
    (``query_image, map_image, score``). Names are relative to the images' common folder (a map
    image's name in ``scene_map``), as :func:`export_kapture` names them.
    """
    if style not in ("hloc", "kapture"):
        raise MapError(f"pairs style must be 'hloc' or 'kapture', got {style!r}")
    entries = _indexed(index)
    names = _names(entries, scene_map)
    pairs = retrieval_pairs(index, k=k, fuse=fuse, progress=progress)
    target = Path(path)
    if not target.parent.is_dir():
        raise MapError(f"the folder of the pairs file does not exist: {target.parent}")
    write_text_atomic(target, _pairs_text(names, pairs, style))
    return len(pairs)


# --- export ------------------------------------------------------------------------------------

@dataclass
class _Image:
    """One exported image: its name, file, size, camera (None: uncalibrated) and features."""

    name: str
    entry: Entry
    size: tuple[int, int]
    camera: PosedCamera | None
    map_number: int | None
    features: LocalFeatures


def _map_settings(scene_map: SceneMap | None) -> tuple[float, float]:
    """(ratio, epipolar error) the map matched with, so pairs matched here agree with its stored ones."""
    settings = scene_map.manifest.get("settings", {}) if scene_map is not None else {}
    return float(settings.get("ratio", 0.8)), float(settings.get("epipolar_error", 4.0))


def _image_features(entry: Entry, cache: FeatureCache | None) -> LocalFeatures:
    # The full image, as mapping reads it: keypoints then lie in the frame of its intrinsics.
    return cached_features(cache, entry.sha256, feature_key(MAX_KEYPOINTS, MAX_SIDE),
                           lambda: extract_rootsift(load_image(entry.path), MAX_KEYPOINTS, MAX_SIDE))


def _gather(index: Index, scene_map: SceneMap | None, progress: ProgressFactory | None) -> list[_Image]:
    """Names, sizes, cameras and features of every indexed image (the map's when it has them)."""
    entries = _indexed(index)
    names = _names(entries, scene_map)
    in_map = _map_numbers(entries, scene_map)
    if scene_map is not None and not in_map:
        raise MapError(f"map {scene_map.root} has none of the images of index {index.root}: "
                       "it was built with another index")
    folder = index.store.cache_dir(CACHE_KIND)
    cache = FeatureCache(folder) if folder is not None else None
    advance = progress(len(entries), "features") if progress else None
    images = []
    for n, (entry, name) in enumerate(zip(entries, names)):
        number = in_map.get(n)
        if scene_map is not None and number is not None:
            camera = scene_map.cameras[scene_map.images[number].name]
            images.append(_Image(name, entry, (camera.width, camera.height), camera, number,
                                 scene_map.image_features(number)))
        else:
            images.append(_Image(name, entry, image_size(entry.path), None, None, _image_features(entry, cache)))
        if advance:
            advance(1)
    return images


def _number(value: float) -> str:
    """A float as kapture writes it: integers without a fraction, others at full precision."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _write_table(path: Path, header: str, rows: Sequence[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [_FORMAT_LINE, header] + [", ".join(str(v) for v in row) for row in rows]
    with atomic_write(path, "w", fsync=False) as stream:
        stream.write("\n".join(lines) + "\n")


def _write_array(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb", fsync=False) as stream:
        stream.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())


def _sensor_params(image: _Image) -> tuple[str, ...]:
    if image.camera is None:
        return ("UNKNOWN_CAMERA", str(image.size[0]), str(image.size[1]))
    K = image.camera.K
    return ("PINHOLE", str(image.size[0]), str(image.size[1])) + tuple(
        _number(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))


def _write_sensors(work: Path, images: Sequence[_Image]) -> None:
    """sensors.txt (one sensor per distinct camera), records_camera.txt and trajectories.txt."""
    sensor_of: dict[tuple[str, ...], str] = {}
    records, poses = [], []
    for timestamp, image in enumerate(images):
        params = _sensor_params(image)
        sensor = sensor_of.setdefault(params, f"cam{len(sensor_of)}")
        records.append((timestamp, sensor, image.name))
        if image.camera is not None:
            q, t = _quaternion(image.camera.R), image.camera.t
            poses.append((timestamp, sensor, *(_number(v) for v in q), *(_number(v) for v in t)))
    _write_table(work / _SENSORS, "# sensor_id, name, sensor_type, [sensor_params]+",
                 [(sensor, "", "camera", *params) for params, sensor in sensor_of.items()])
    _write_table(work / _RECORDS, "# timestamp, device_id, image_path", records)
    if poses:
        _write_table(work / _TRAJECTORIES, "# timestamp, device_id, qw, qx, qy, qz, tx, ty, tz", poses)


def _keypoints(image: _Image) -> np.ndarray:
    """(n, 4) float32 x, y, scale, orientation in the camera frame (see the module notes)."""
    features = image.features
    sx, sy = image.size[0] / features.size[0], image.size[1] / features.size[1]
    # Features may come from a shrunken decode (a cache shared with spatial verification): scale
    # pixel centres to the full image, then move the origin to the corner as K expects.
    xy = (features.xy.astype(np.float64) + PIXEL_OFFSET) * [sx, sy]
    scale = features.scale.astype(np.float64) * (sx + sy) / 2
    return np.column_stack([xy, scale, np.radians(features.angle)]).astype(np.float32)


def _write_features(work: Path, images: Sequence[_Image], vectors: np.ndarray) -> None:
    recon = work / "reconstruction"
    _write_table(recon / "keypoints" / KEYPOINTS / "keypoints.txt", "# name, dtype, dsize",
                 [(KEYPOINTS, "float32", 4)])
    _write_table(recon / "descriptors" / KEYPOINTS / "descriptors.txt",
                 "# name, dtype, dsize, keypoints_type, metric_type", [(KEYPOINTS, "float32", 128, KEYPOINTS, "L2")])
    _write_table(recon / "global_features" / GLOBAL_FEATURES / "global_features.txt",
                 "# name, dtype, dsize, metric_type", [(GLOBAL_FEATURES, "float32", vectors.shape[1], "L2")])
    for image in images:
        _write_array(recon / "keypoints" / KEYPOINTS / f"{image.name}.kpt", _keypoints(image))
        _write_array(recon / "descriptors" / KEYPOINTS / f"{image.name}.desc",
                     image.features.descriptors.astype(np.float32))
        row = int(image.entry.row or 0)
        _write_array(recon / "global_features" / GLOBAL_FEATURES / f"{image.name}.gfeat",
                     np.asarray(vectors[row:row + 1], np.float32))


def _pair_matches(first: _Image, second: _Image, scene_map: SceneMap | None) -> np.ndarray:
    """Verified matches (m, 2) first → second: the map's stored ones when it matched this pair."""
    i, j = first.map_number, second.map_number
    if scene_map is not None and i is not None and j is not None:
        stored = read_pair(scene_map.root, min(i, j), max(i, j))
        if stored is not None:
            matches = stored.astype(np.int64)
            return matches if i < j else matches[:, ::-1]
        # not a mapping pair: match it below as mapping does
    ratio, max_error = _map_settings(scene_map)
    cameras = (first.camera, second.camera) if first.camera is not None and second.camera is not None else None
    return match_pair(first.features, second.features, ratio=ratio, cameras=cameras, max_error=max_error)


def _write_matches(work: Path, images: Sequence[_Image], pairs: Sequence[tuple[int, int, float]],
                   scene_map: SceneMap | None, progress: ProgressFactory | None) -> tuple[int, int]:
    """One .matches file per unordered retrieval pair; returns (pairs, matches) written."""
    # kapture keeps a pair once, under its names in string order, with the columns in that order.
    unordered = sorted({(a, b) if images[a].name < images[b].name else (b, a) for a, b, _ in pairs})
    advance = progress(len(unordered), "matching") if progress else None
    total = 0
    for a, b in unordered:
        first, second = images[a], images[b]
        matches = _pair_matches(first, second, scene_map)
        # Score: descriptor similarity (dot product of unit RootSIFT vectors), higher is better.
        score = np.einsum("ij,ij->i", first.features.descriptors[matches[:, 0]],
                          second.features.descriptors[matches[:, 1]])
        triples = np.column_stack([matches.astype(np.float64), score.astype(np.float64)]).reshape(-1, 3)
        _write_array(work / "reconstruction" / "matches" / KEYPOINTS / f"{first.name}.overlapping"
                     / f"{second.name}.matches", triples)
        total += len(matches)
        if advance:
            advance(1)
    return len(unordered), total


def _link_images(work: Path, images: Sequence[_Image]) -> None:
    for image in images:
        link = work / "sensors" / "records_data" / image.name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.abspath(image.entry.path), link)


def _publish(work: Path, out: Path, replace: bool) -> None:
    """Move the finished dataset onto ``out`` (replacing an old export only when asked)."""
    if out.exists() and not out.is_dir():
        raise MapError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not replace:
        raise MapError(f"{out} already exists and is not empty; remove it or export elsewhere")
    swap_in_folder(work, out)


def _check_out(out: Path, replace: bool) -> None:
    """Fail before any work on an output that cannot be written."""
    if out.exists() and not out.is_dir():
        raise MapError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not replace:
        raise MapError(f"{out} already exists and is not empty; remove it or export elsewhere")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MapError(f"cannot create the folder of {out}: {error}") from None


def export_kapture(index: Index, out_dir: str | os.PathLike, *, scene_map: SceneMap | None = None, k: int = 20,
                   fuse: str | None = None, progress: ProgressFactory | None = None, replace: bool = False,
                   link_images: bool = False) -> dict[str, Any]:
    """Write the index as a kapture dataset: cameras, global features, RootSIFT keypoints and
    descriptors, verified matches of the retrieval pairs and the pairsfile (``pairs.txt``).

    Every indexed image is exported, named relative to the images' common folder. With a
    ``scene_map`` its images keep their map names, PINHOLE cameras and poses (trajectories.txt),
    its stored features and its stored pair matches; other images get an UNKNOWN_CAMERA of their
    size and RootSIFT features (cached in ``<index>/cache/local_features``). Pairs are each image's
    top ``k`` by the index's search (``fuse`` as in :meth:`Index.searcher`); a pair is verified by
    the known poses when both images are posed, else by a fundamental matrix.

    The dataset is written in a temporary sibling folder renamed to ``out_dir`` at the end, so an
    interrupted export never leaves a dataset that looks complete. ``replace``: overwrite a
    non-empty ``out_dir``. ``link_images``: symlink the image files into ``sensors/records_data``
    (the images themselves are never copied). Returns counts and the paths written.
    """
    start = time.perf_counter()
    k = _check_k(k)
    out = Path(out_dir).absolute()
    _check_out(out, replace)
    pairs = retrieval_pairs(index, k=k, fuse=fuse, progress=progress)
    images = _gather(index, scene_map, progress)
    names = [image.name for image in images]
    _check_csv_names(names)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _write_sensors(work, images)
        _write_features(work, images, index.vectors())
        matched, matches = _write_matches(work, images, pairs, scene_map, progress)
        write_text_atomic(work / PAIRS_FILE, _pairs_text(names, pairs, "kapture"))
        if link_images:
            _link_images(work, images)
        _publish(work, out, replace)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # also on Ctrl-C: no half dataset is left behind
        raise
    return {"out": str(out), "pairs_file": str(out / PAIRS_FILE), "images": len(images),
            "posed": sum(image.camera is not None for image in images), "pairs": len(pairs),
            "matched_pairs": matched, "matches": matches,
            "keypoints": sum(len(image.features) for image in images), "keypoints_type": KEYPOINTS,
            "global_features_type": GLOBAL_FEATURES, "seconds": round(time.perf_counter() - start, 3)}

