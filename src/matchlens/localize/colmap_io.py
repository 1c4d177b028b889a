"""Posed images from a COLMAP model (``cameras``, ``images``, ``points3D`` in binary or text form).

COLMAP's convention is matchlens's (:mod:`matchlens.localize.cameras`): an image's ``cam_from_world``
is the world → camera pose (R, t), so its centre is C = -Rᵀ t, and pixel coordinates put (0, 0) at
the top-left corner of the image. Only undistorted perspective cameras are accepted (run COLMAP's
``image_undistorter`` first); pycolmap is imported when a model is read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from matchlens.errors import MapError
from matchlens.localize.cameras import PosedCamera
from matchlens.localize.kapture_io import pinhole_matrix

__all__ = ["read_colmap"]

_MODEL_FILES = ("cameras", "images")


def _open_model(model_dir: Path) -> Any:
    """The ``pycolmap.Reconstruction`` in ``model_dir``; MapError when there is none."""
    import pycolmap

    if not model_dir.is_dir():
        raise MapError(f"COLMAP model folder not found: {model_dir}")
    present = [name for name in _MODEL_FILES
               if (model_dir / f"{name}.bin").is_file() or (model_dir / f"{name}.txt").is_file()]
    if len(present) < len(_MODEL_FILES):
        nested = sorted(p.parent.name for p in model_dir.glob("*/cameras.*") if p.suffix in (".bin", ".txt"))
        hint = f" (models are in its subfolders {', '.join(nested)}: give one of them)" if nested else ""
        raise MapError(f"{model_dir} is not a COLMAP model: it needs cameras and images .bin or .txt{hint}")
    try:
        return pycolmap.Reconstruction(str(model_dir))
    except (ValueError, RuntimeError, OSError) as error:
        raise MapError(f"cannot read the COLMAP model in {model_dir}: {error}") from None


def _intrinsics(camera: Any, label: str) -> np.ndarray:
    """K of an undistorted camera (checked with the same rules as kapture cameras)."""
    model = str(camera.model_name)
    pinhole_matrix(model, [float(v) for v in camera.params], label)  # refuses distortion and fisheye models
    return np.asarray(camera.calibration_matrix(), np.float64)


def _pose(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) world → camera; ``cam_from_world`` is a method since pycolmap 3.12 (rigs), a property before."""
    pose = image.cam_from_world
    pose = pose() if callable(pose) else pose
    return np.asarray(pose.rotation.matrix(), np.float64), np.asarray(pose.translation, np.float64).reshape(3)


def read_colmap(model_dir: str | os.PathLike) -> dict[str, PosedCamera]:
    """The posed cameras of a COLMAP model, keyed by image name (relative to COLMAP's image folder).

    Images without a pose (not registered) are left out; a distorted or fisheye camera is refused
    (MapError: undistort the images first).
    """
    model_dir = Path(model_dir)
    reconstruction = _open_model(model_dir)
    cameras: dict[str, PosedCamera] = {}
    for image in reconstruction.images.values():
        if not image.has_pose:
            continue
        camera = image.camera
        K = _intrinsics(camera, f"{model_dir}: camera {image.camera_id} of {image.name}")
        R, t = _pose(image)
        cameras[image.name] = PosedCamera(image.name, K, R, -R.T @ t, int(camera.width), int(camera.height))
    if not cameras:
        raise MapError(f"COLMAP model {model_dir} has no registered image")
    return cameras
