"""Local features: RootSIFT keypoints and an on-disk cache of them.

Used by spatial verification (:mod:`matchlens.rerank.spatial`), the classic encodings
(:mod:`matchlens.classic`), spatial-verification evidence (:mod:`matchlens.evidence.local`),
label-free training positives and the service; the pairwise matching and geometric checks live in
:mod:`matchlens.local.verify`.

RootSIFT (Arandjelović & Zisserman, "Three things everyone should know to improve object
retrieval", CVPR 2012) is SIFT with each descriptor L1-normalised and square-rooted, so that the
Euclidean distance between RootSIFT vectors equals the Hellinger kernel between the SIFT
histograms. Every RootSIFT vector therefore has unit L2 norm.

The cache stores one small ``.npz`` file per (image content hash, extraction parameters), so the
features of a database image are computed once and reused by every later query.
"""

from __future__ import annotations

import logging
import os
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from matchlens.fileio import atomic_write
from matchlens.linalg import l2_normalize
from matchlens.registry import Registry

__all__ = ["CACHE_KIND", "CONTRASTS", "DESCRIPTOR_DIM", "FeatureCache", "LocalFeatures", "cached_features",
           "extract_rootsift", "feature_key",
           "rootsift_from_sift"]

log = logging.getLogger(__name__)

DESCRIPTOR_DIM = 128
#: The index cache folder (``<index>/cache/<CACHE_KIND>``) of detected RootSIFT features, shared by
#: spatial verification, the classic encodings and the service.
CACHE_KIND = "local_features"
_FORMAT_VERSION = 1  # bump when extraction changes, so old cache files stop matching the key
# What np.load raises on a truncated, foreign or half-written file: a bad cache file is a miss.
_BAD_CACHE_FILE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints and RootSIFT descriptors of one image, row-aligned.

    ``xy`` are pixel coordinates (x right, y down, pixel centres at integers) in the frame of the
    image that was given to :func:`extract_rootsift`, whose (width, height) is ``size``.
    """

    xy: np.ndarray           # (n, 2) float32
    scale: np.ndarray        # (n,) float32: keypoint diameter in pixels of ``size``
    angle: np.ndarray        # (n,) float32: orientation in degrees, as OpenCV reports it
    descriptors: np.ndarray  # (n, 128) float32, non-negative, unit L2 norm
    size: tuple[int, int]    # (width, height) of the frame ``xy`` refers to

    def __len__(self) -> int:
        return len(self.xy)

    @classmethod
    def empty(cls, size: tuple[int, int]) -> "LocalFeatures":
        """No keypoints (a blank or tiny image)."""
        return cls(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                   np.zeros((0, DESCRIPTOR_DIM), np.float32), size)


def _clahe(gray: np.ndarray) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (8×8 tiles, clip 2): SIFT's contrast
    threshold is absolute, so a dark photo (night, under-exposed) loses most of its keypoints;
    equalised, it keeps them. Measured in the README's localisation table (night rows)."""
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)


#: Grayscale normalisations applied before detection, by name (the only list of them).
CONTRASTS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("contrast normalisation")
CONTRASTS.register("none")(lambda gray: gray)
CONTRASTS.register("clahe")(_clahe)


def feature_key(max_keypoints: int, max_side: int, contrast: str = "none") -> str:
    """The cache key of the extraction parameters (file-name safe; unchanged for contrast none)."""
    suffix = "" if contrast == "none" else f"-{contrast}"
    return f"rootsift{_FORMAT_VERSION}-n{max_keypoints}-s{max_side}{suffix}"


def extract_rootsift(image: Image.Image, max_keypoints: int = 1000, max_side: int = 1024,
                     contrast: str = "none") -> LocalFeatures:
    """Detect SIFT keypoints on the grayscale image and return RootSIFT descriptors.

    The image is shrunk (never enlarged) so that its longest side is at most ``max_side``, which
    bounds the cost on large photos; keypoint coordinates and sizes are scaled back to the pixel
    frame of ``image``. At most ``max_keypoints`` keypoints are kept, the strongest first.
    ``contrast`` (a name of :data:`CONTRASTS`) normalises the grayscale image before detection.
    """
    normalise = CONTRASTS.get(contrast)
    width, height = image.size
    gray = np.asarray(image.convert("L"))
    factor = min(1.0, max_side / max(width, height))
    if factor < 1.0:
        work_size = (max(1, round(width * factor)), max(1, round(height * factor)))
        gray = cv2.resize(gray, work_size, interpolation=cv2.INTER_AREA)
    gray = normalise(gray)
    keypoints, descriptors = cv2.SIFT.create(nfeatures=max_keypoints).detectAndCompute(gray, None)
    if descriptors is None or not keypoints:
        return LocalFeatures.empty((width, height))
    return _assemble(keypoints, descriptors, factor, max_keypoints, (width, height))


def _assemble(keypoints: Sequence[cv2.KeyPoint], descriptors: np.ndarray, factor: float, max_keypoints: int,
              size: tuple[int, int]) -> LocalFeatures:
    """Turn OpenCV's output into :class:`LocalFeatures` in the original pixel frame."""
    response = np.array([kp.response for kp in keypoints], np.float32)
    # OpenCV keeps every keypoint tied with the n-th strongest, so it can return more than asked.
    keep = np.argsort(-response, kind="stable")[:max_keypoints]
    valid, rootsift = rootsift_from_sift(descriptors[keep])
    keep = keep[valid]
    points = np.array([keypoints[i].pt for i in keep], np.float32).reshape(-1, 2)
    # Scale pixel centres, not corners, back: centre c at factor f came from (c + 0.5) / f - 0.5.
    xy = (points + 0.5) / factor - 0.5
    np.clip(xy, 0, [size[0] - 1, size[1] - 1], out=xy)
    scale = np.array([keypoints[i].size for i in keep], np.float32) / factor
    angle = np.array([keypoints[i].angle for i in keep], np.float32)
    return LocalFeatures(xy.astype(np.float32), scale, angle, rootsift, size)


def rootsift_from_sift(sift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept, RootSIFT of those rows): L1-normalise then square-root each SIFT row.

    An all-zero SIFT (a flat patch) has no RootSIFT and is dropped; every returned row has unit
    L2 norm.
    """
    sift = np.asarray(sift, np.float32)
    l1 = sift.sum(axis=1)
    valid = l1 > 0
    return valid, np.sqrt(sift[valid] / l1[valid, None]).astype(np.float32)


class FeatureCache:
    """Local features on disk, one ``<folder>/<sha[:2]>/<sha>-<key>.npz`` file per image and key.

    Descriptors are stored as float16 (RootSIFT values lie in [0, 1]; the rounding, about 1e-3
    relative, does not change which neighbour is nearest in practice) and come back as float32;
    keypoints are stored as float32. ``descriptor_dtype="uint8"`` halves the size again (128 bytes
    per descriptor: each value rounded to a multiple of 1/255, rows re-normalised on reading),
    which is what the classic encodings store for whole collections. A reader accepts both
    kinds of file whatever its own setting. Writes go to a temporary file in the same folder that is then
    renamed over the target, so a reader sees either a whole file or none, even with several
    processes writing the same entry. An unreadable or malformed file counts as a miss.
    ``hits`` and ``misses`` count :meth:`get` outcomes (for tests and statistics).
    """

    def __init__(self, folder: str | os.PathLike, descriptor_dtype: str = "float16") -> None:
        if descriptor_dtype not in _STORED_DTYPES:
            raise ValueError(f"descriptor_dtype must be one of {', '.join(_STORED_DTYPES)}, got {descriptor_dtype!r}")
        self.folder = Path(folder)
        self.descriptor_dtype = descriptor_dtype
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()  # the counters may be bumped from several threads

    def path(self, sha256: str, key: str) -> Path:
        """Where the entry for ``sha256`` and parameter ``key`` lives."""
        return self.folder / sha256[:2] / f"{sha256}-{key}.npz"

    def get(self, sha256: str, key: str) -> LocalFeatures | None:
        """The cached features, or None if absent or unreadable."""
        features = self._read(self.path(sha256, key))
        with self._lock:
            if features is None:
                self.misses += 1
            else:
                self.hits += 1
        return features

    def put(self, sha256: str, key: str, features: LocalFeatures) -> bool:
        """Store ``features`` atomically; False (and a logged warning) if the disk refuses."""
        target = self.path(sha256, key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # A cache entry is recomputed when missing or unreadable: no fsync per small file.
            with atomic_write(target, "wb", fsync=False) as stream:
                np.savez(stream, xy=features.xy.astype(np.float32), scale=features.scale.astype(np.float32),
                         angle=features.angle.astype(np.float32),
                         descriptors=_STORED_DTYPES[self.descriptor_dtype](features.descriptors),
                         size=np.asarray(features.size, np.int64))
            return True
        except OSError as error:
            log.warning("cannot write local-feature cache %s: %s", target, error)
            return False

    @staticmethod
    def _read(path: Path) -> LocalFeatures | None:
        """Load and check one cache file; None if it is missing or not a valid entry."""
        try:
            with np.load(path, allow_pickle=False) as data:
                xy, descriptors = data["xy"].astype(np.float32), _stored_to_float(data["descriptors"])
                scale, angle = data["scale"].astype(np.float32), data["angle"].astype(np.float32)
                size = tuple(int(v) for v in data["size"])
        except FileNotFoundError:
            return None
        except _BAD_CACHE_FILE as error:
            log.warning("ignoring unreadable local-feature cache file %s: %s", path, error)
            return None
        n = len(xy)
        if (xy.shape != (n, 2) or descriptors.shape != (n, DESCRIPTOR_DIM) or scale.shape != (n,)
                or angle.shape != (n,) or len(size) != 2):
            log.warning("ignoring malformed local-feature cache file %s", path)
            return None
        return LocalFeatures(xy, scale, angle, descriptors, (size[0], size[1]))


def cached_features(cache: FeatureCache | None, sha256: str, key: str, compute: Callable[[], LocalFeatures],
                    as_stored: bool = False) -> LocalFeatures:
    """The features of ``sha256`` from ``cache``, else ``compute()`` stored in it (no cache: just
    computed). ``as_stored`` returns a fresh computation as the cache gives it back (float16
    descriptors), so a caller uses exactly what its later runs will read."""
    features = cache.get(sha256, key) if cache is not None else None
    if features is None:
        features = compute()
        if cache is not None and cache.put(sha256, key, features) and as_stored:
            features = cache.get(sha256, key) or features
    return features


def _to_uint8(descriptors: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(descriptors, np.float32) * 255.0), 0, 255).astype(np.uint8)


# How each storage type encodes a (n, 128) float32 RootSIFT array.
_STORED_DTYPES = {"float16": lambda d: np.asarray(d).astype(np.float16), "uint8": _to_uint8}


def _stored_to_float(stored: np.ndarray) -> np.ndarray:
    """Descriptors as float32 from either storage type (uint8 rows re-normalised to unit L2)."""
    if stored.dtype != np.uint8:
        return stored.astype(np.float32)
    values = stored.astype(np.float32)
    return l2_normalize(values) if values.ndim == 2 else values
