"""Local features of a collection for the classic encodings: RootSIFT at detected keypoints (cached
on disk with the index) or on a dense multi-scale grid (DenseVLAD; recomputed, never cached).

Detected features live in the index's ``cache/local_features`` folder through
:class:`~matchlens.local.features.FeatureCache`, stored as uint8 (128 bytes a descriptor),
keyed by image content hash and extraction parameters: a re-index, a new encoding or spatial
verification with the same parameters reads them instead of running SIFT again.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
from PIL import Image

from matchlens.errors import ConfigError, MatchlensError
from matchlens.io.collection import file_memo_key
from matchlens.io.images import crop_to_box, load_image
from matchlens.local.features import FeatureCache, LocalFeatures, extract_rootsift, feature_key, rootsift_from_sift

__all__ = ["FeatureParams", "LocalFeatureStore", "extract_dense_rootsift"]

log = logging.getLogger(__name__)

_QUERY_MEMO_SIZE = 256


@dataclass(frozen=True)
class FeatureParams:
    """How local features are extracted.

    ``max_keypoints`` strongest SIFT keypoints on the image shrunk to ``max_side``; with
    ``dense`` a grid instead: every ``dense_step`` pixels, one descriptor per patch size in
    ``dense_sizes`` (pixels at the ``max_side`` working resolution), upright.
    """

    max_keypoints: int = 2000
    max_side: int = 1024
    dense: bool = False
    dense_step: int = 8
    dense_sizes: tuple[int, ...] = (16, 24, 32, 40)

    def __post_init__(self) -> None:
        for name in ("max_keypoints", "max_side", "dense_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"local features: {name} must be an integer >= 1, got {value!r}")
        if not self.dense_sizes or any(not isinstance(s, int) or s < 4 for s in self.dense_sizes):
            raise ConfigError(f"local features: dense_sizes must be integers >= 4, got {self.dense_sizes!r}")

    @property
    def key(self) -> str:
        """Cache key (the same as spatial verification's for the same keypoint cap and side)."""
        if self.dense:
            return f"dense-st{self.dense_step}-sz{'_'.join(map(str, self.dense_sizes))}-s{self.max_side}"
        return feature_key(self.max_keypoints, self.max_side)

    def extract(self, image: Image.Image) -> LocalFeatures:
        """The features of one decoded image."""
        if self.dense:
            return extract_dense_rootsift(image, self.dense_step, self.dense_sizes, self.max_side)
        return extract_rootsift(image, self.max_keypoints, self.max_side)


def extract_dense_rootsift(image: Image.Image, step: int = 8, sizes: Sequence[int] = (16, 24, 32, 40),
                           max_side: int = 1024) -> LocalFeatures:
    """RootSIFT on a regular grid at several patch sizes (DenseVLAD, Torii et al. CVPR 2015).

    The image is shrunk so its longest side is at most ``max_side``; grid points start half a
    step in from the border and every patch size is computed at every point, upright (angle 0).
    Coordinates and sizes are returned in the pixel frame of ``image``.
    """
    width, height = image.size
    gray = np.asarray(image.convert("L"))
    factor = min(1.0, max_side / max(width, height))
    if factor < 1.0:
        gray = cv2.resize(gray, (max(1, round(width * factor)), max(1, round(height * factor))),
                          interpolation=cv2.INTER_AREA)
    h, w = gray.shape
    ys, xs = np.mgrid[step / 2:h:step, step / 2:w:step]
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    keypoints = [cv2.KeyPoint(float(x), float(y), float(size), 0.0, 0.0, _pyramid_level(size))
                 for size in sizes for x, y in points]
    if not keypoints:
        return LocalFeatures.empty((width, height))
    described, sift = cv2.SIFT.create().compute(gray, keypoints)
    if sift is None or not described:
        return LocalFeatures.empty((width, height))
    valid, rootsift = rootsift_from_sift(sift)
    kept = [kp for kp, ok in zip(described, valid) if ok]
    xy = np.array([kp.pt for kp in kept], np.float32).reshape(-1, 2) / factor
    scale = np.array([kp.size for kp in kept], np.float32) / factor
    return LocalFeatures(xy, scale, np.zeros(len(kept), np.float32), rootsift, (width, height))


def _pyramid_level(size: float) -> int:
    """OpenCV's packed ``KeyPoint.octave`` for a patch of diameter ``size``.

    OpenCV SIFT describes a keypoint on the Gaussian-pyramid image of its octave and layer, where
    ``size = 3.2 · 2^(octave + layer/3)``. A grid keypoint left at octave 0 is described on the
    full-resolution, unsmoothed image: 20x slower for 40-pixel patches (the sampling window grows
    with the size) and aliased. Placing it at the level its size belongs to does what a detected
    keypoint of that size gets, which is also what dense SIFT's per-scale smoothing is for.
    """
    level = math.log2(size / 3.2)
    octave = math.floor(level)
    layer = round((level - octave) * 3)
    if layer == 3:
        octave, layer = octave + 1, 0
    return (octave & 0xFF) | (layer << 8)


class LocalFeatureStore:
    """Features of database images (from the on-disk cache, else extracted and cached) and of
    queries (memoised in memory by file, size, mtime and box).

    ``folder`` is the index's cache folder for local features (None: nothing is cached, e.g. a
    read-only index). Dense features are never cached: they are ~10x larger than the encodings
    computed from them, which are what the index keeps.
    """

    _query_memo: dict[tuple, LocalFeatures] = {}
    _memo_lock = threading.Lock()

    def __init__(self, folder: str | os.PathLike | None, params: FeatureParams, workers: int | None = None) -> None:
        self.params = params
        self.cache = FeatureCache(folder, descriptor_dtype="uint8") if folder is not None and not params.dense else None
        self.workers = workers or min(4, os.cpu_count() or 1)

    def get(self, sha256: str, path: str) -> LocalFeatures | None:
        """Features of one database image; None (logged) when the file cannot be read."""
        if self.cache is not None:
            cached = self.cache.get(sha256, self.params.key)
            if cached is not None:
                return cached
        try:
            features = self.params.extract(load_image(path, max_side=self.params.max_side))
        except (MatchlensError, OSError, cv2.error) as error:
            log.warning("no local features for %s: %s", path, error)
            return None
        if self.cache is not None:
            self.cache.put(sha256, self.params.key, features)
        return features

    def many(self, items: Sequence[tuple[str, str]],
             advance: Callable[[int], None] | None = None) -> Iterator[tuple[int, LocalFeatures | None]]:
        """``(position, features)`` for ``(sha256, path)`` items, in order, extracted by a few
        threads (OpenCV releases the GIL while it computes SIFT)."""
        if self.workers <= 1 or len(items) < 2:
            for i, (sha, path) in enumerate(items):
                yield i, self.get(sha, path)
                if advance:
                    advance(1)
            return
        _warm_up_opencv(self.params)
        window = 4 * self.workers  # a bounded window of futures keeps memory flat on large collections
        with ThreadPoolExecutor(self.workers) as pool:
            pending: deque = deque()
            for i, (sha, path) in enumerate(items):
                pending.append((i, pool.submit(self.get, sha, path)))
                if len(pending) >= window:
                    yield _done(pending.popleft(), advance)
            while pending:
                yield _done(pending.popleft(), advance)

    def query(self, source, box: Sequence[float] | None = None) -> LocalFeatures:
        """Features of a query (path, bytes, PIL image or array), cropped to ``box`` first.

        With a box the image is decoded at full size, so the box keeps its pixel meaning.
        """
        key = _memo_key(source, box, self.params)
        if key is not None:
            with self._memo_lock:
                hit = self._query_memo.get(key)
            if hit is not None:
                return hit
        image = load_image(source) if box is not None else load_image(source, max_side=self.params.max_side)
        if box is not None:
            image = crop_to_box(image, box)
        features = self.params.extract(image)
        if key is not None:
            with self._memo_lock:
                if len(self._query_memo) >= _QUERY_MEMO_SIZE:
                    self._query_memo.clear()
                self._query_memo[key] = features
        return features


_warmed: set[FeatureParams] = set()
_warm_lock = threading.Lock()


def _warm_up_opencv(params: FeatureParams) -> None:
    """Run one extraction on a small synthetic image before threads start extracting.

    Observed here: two threads making their first OpenCV SIFT calls at once deadlocked (one
    waiting on a C++ static-initialisation guard while holding the GIL, the other holding the
    guard and waiting for the GIL). After one call in a single thread the initialisers have run.
    """
    with _warm_lock:
        if params in _warmed:
            return
        rng = np.random.default_rng(0)
        pixels = (rng.random((96, 96)) * 255).astype(np.uint8)
        params.extract(Image.fromarray(pixels).convert("RGB"))
        _warmed.add(params)


def _done(item: tuple, advance: Callable[[int], None] | None) -> tuple[int, LocalFeatures | None]:
    position, future = item
    result = future.result()
    if advance:
        advance(1)
    return position, result


def _memo_key(source, box, params: FeatureParams) -> tuple | None:
    key = file_memo_key(source, box)
    return None if key is None else (*key, params)
