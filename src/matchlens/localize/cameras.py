"""Posed cameras: intrinsics K, world-to-camera rotation R and centre C, and their file formats.

Convention (the one of ``../shared/data/strecha_posed`` and of COLMAP): a world point X projects to
``x ~ K R (X - C)``, i.e. ``P = K [R | t]`` with ``t = -R C``; camera x right, y down, z forward.
Pixel coordinates are continuous with (0, 0) at the top-left *corner* of the image, so the centre of
the first pixel is (0.5, 0.5). OpenCV keypoints put pixel centres at integers: add 0.5 to them
(:data:`PIXEL_OFFSET`) before using them with K. That is also COLMAP's convention, so points passed
to pycolmap need no other change.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matchlens.errors import MapError
from matchlens.fileio import write_json_atomic

__all__ = ["PIXEL_OFFSET", "CameraModel", "PosedCamera", "parse_camera_model", "parse_intrinsics",
           "pose_errors", "read_cameras_json", "rotation_error_deg", "write_cameras_json"]

#: Added to OpenCV keypoint coordinates (pixel centres at integers) to reach K's frame (centres at +0.5).
PIXEL_OFFSET = 0.5


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics as COLMAP names them: a model name (PINHOLE, SIMPLE_RADIAL, ...), the image size and
    the model's parameter list (PINHOLE: fx, fy, cx, cy)."""

    model: str
    width: int
    height: int
    params: tuple[float, ...]

    @classmethod
    def pinhole(cls, K: np.ndarray, width: int, height: int) -> "CameraModel":
        """The PINHOLE model of a 3×3 calibration matrix (skew is dropped: COLMAP has none)."""
        K = np.asarray(K, np.float64)
        return cls("PINHOLE", int(width), int(height), (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]),
                                                         float(K[1, 2])))

    def to_pycolmap(self) -> Any:
        """The equivalent ``pycolmap.Camera``."""
        import pycolmap

        return pycolmap.Camera(model=self.model, width=self.width, height=self.height, params=list(self.params))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"model": self.model, "width": self.width, "height": self.height, "params": list(self.params)}


@dataclass(frozen=True)
class PosedCamera:
    """One image with known intrinsics and pose (R world-to-camera, C centre in world units)."""

    name: str
    K: np.ndarray  # (3, 3)
    R: np.ndarray  # (3, 3) world-to-camera
    C: np.ndarray  # (3,) camera centre in the world frame
    width: int
    height: int

    @property
    def t(self) -> np.ndarray:
        """The translation of ``x_cam = R X + t``."""
        return -self.R @ self.C

    @property
    def camera(self) -> CameraModel:
        """The PINHOLE camera of K and the image size."""
        return CameraModel.pinhole(self.K, self.width, self.height)

    def cam_from_world(self) -> Any:
        """The pose as a ``pycolmap.Rigid3d``."""
        import pycolmap

        return pycolmap.Rigid3d(np.hstack([self.R, self.t[:, None]]))

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pixel coordinates (n, 2), depth (n,)) of world points (n, 3)."""
        cam = (np.asarray(points, np.float64) - self.C) @ self.R.T
        depth = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            pixels = (cam @ np.asarray(self.K, np.float64).T)[:, :2] / depth[:, None]
        return pixels, depth

    def to_dict(self) -> dict[str, Any]:
        """The ``cameras.json`` entry of this camera."""
        return {"K": np.asarray(self.K).tolist(), "R": np.asarray(self.R).tolist(), "C": np.asarray(self.C).tolist(),
                "width": self.width, "height": self.height}


def _camera_from_json(name: str, entry: Any) -> PosedCamera:
    """One checked entry of a cameras file."""
    try:
        K, R, C = (np.asarray(entry[key], np.float64) for key in ("K", "R", "C"))
        width, height = int(entry["width"]), int(entry["height"])
    except (KeyError, TypeError, ValueError) as error:
        raise MapError(f"camera {name!r}: needs K (3x3), R (3x3), C (3), width and height ({error})") from None
    if K.shape != (3, 3) or R.shape != (3, 3) or C.shape != (3,) or width < 1 or height < 1:
        raise MapError(f"camera {name!r}: K and R must be 3x3, C 3 values and the size positive")
    if not (np.isfinite(K).all() and np.isfinite(R).all() and np.isfinite(C).all()):
        raise MapError(f"camera {name!r}: K, R and C must be finite numbers")
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-4 or np.linalg.det(R) < 0:
        raise MapError(f"camera {name!r}: R is not a rotation (R Rᵀ must be I and det R = 1)")
    return PosedCamera(name, K, R, C, width, height)


def read_cameras_json(path: str | os.PathLike) -> dict[str, PosedCamera]:
    """Read ``{"NAME.jpg": {"K": 3x3, "R": 3x3, "C": [x, y, z], "width": W, "height": H}}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MapError(f"cameras file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MapError(f"cannot read cameras file {path}: {error}") from None
    if not isinstance(data, dict) or not data:
        raise MapError(f"cameras file {path} must be a non-empty JSON object of image name -> camera")
    return {str(name): _camera_from_json(str(name), entry) for name, entry in data.items()}


def write_cameras_json(cameras: dict[str, PosedCamera], path: str | os.PathLike) -> None:
    """Write cameras in the format :func:`read_cameras_json` reads (atomically)."""
    write_json_atomic(path, {name: cam.to_dict() for name, cam in sorted(cameras.items())}, indent=1)


def parse_intrinsics(text: str, width: int, height: int) -> CameraModel:
    """``"fx,fy,cx,cy"`` (or ``"f,cx,cy"``) for an image of ``width`` × ``height`` → a camera model."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise MapError(f"--intrinsics must be fx,fy,cx,cy (numbers), got {text!r}") from None
    if len(values) == 3:
        return CameraModel("SIMPLE_PINHOLE", width, height, values)
    if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[0] <= 0 or values[1] <= 0:
        raise MapError(f"--intrinsics must be fx,fy,cx,cy with positive focal lengths, got {text!r}")
    return CameraModel("PINHOLE", width, height, values)


def parse_camera_model(text: str) -> CameraModel:
    """A COLMAP camera line without its id: ``"MODEL WIDTH HEIGHT PARAMS..."``, e.g.
    ``"SIMPLE_RADIAL 1024 683 900 512 341 0.01"`` (checked by pycolmap)."""
    import pycolmap

    parts = text.replace(",", " ").split()
    try:
        model, width, height, params = parts[0].upper(), int(parts[1]), int(parts[2]), [float(p) for p in parts[3:]]
        camera = pycolmap.Camera(model=model, width=width, height=height, params=params)
        valid = camera.verify_params()
    except (IndexError, ValueError, TypeError) as error:
        raise MapError(f"--camera-model must be 'MODEL WIDTH HEIGHT PARAMS...' (COLMAP), got {text!r} ({error})") \
            from None
    if not valid:
        raise MapError(f"--camera-model {text!r}: wrong number of parameters for {model}")
    return CameraModel(model, width, height, tuple(params))


def rotation_error_deg(R_est: np.ndarray, R_true: np.ndarray) -> float:
    """The angle of ``R_est R_trueᵀ`` in degrees.

    atan2(sin θ, cos θ) rather than arccos((trace − 1) / 2): arccos loses precision near 0°, where
    the errors of interest are (0.0001° comes out as 0.002°).
    """
    M = np.asarray(R_est, np.float64) @ np.asarray(R_true, np.float64).T
    sin = 0.5 * np.linalg.norm([M[2, 1] - M[1, 2], M[0, 2] - M[2, 0], M[1, 0] - M[0, 1]])
    cos = (np.trace(M) - 1.0) / 2.0
    return float(np.degrees(np.arctan2(sin, cos)))


def pose_errors(R_est: np.ndarray, C_est: np.ndarray, truth: PosedCamera) -> tuple[float, float]:
    """(position error in world units, rotation error in degrees) of an estimate against the truth."""
    return float(np.linalg.norm(np.asarray(C_est) - truth.C)), rotation_error_deg(R_est, truth.R)
