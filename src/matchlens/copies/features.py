"""RootSIFT features of index images for the verification pass: the index's on-disk cache
(``<index>/cache/local_features``, shared with spatial verification) plus a small in-memory LRU,
since one image takes part in up to 2k candidate pairs."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from matchlens.errors import MatchlensError
from matchlens.io.images import load_image
from matchlens.local.features import FeatureCache, LocalFeatures, cached_features, extract_rootsift, feature_key

__all__ = ["FeaturePool", "pixel_digest"]

log = logging.getLogger(__name__)
# An image we cannot use is left unverified: unreadable (ImageLoadError), an OS error, or OpenCV refusing it.
_UNUSABLE = (MatchlensError, OSError, cv2.error)


class FeaturePool:
    """Features by index row: LRU memory → disk cache → extraction (then stored in the cache)."""

    def __init__(self, path_of: Callable[[int], str], sha_of: Callable[[int], str], cache_dir: Path | None,
                 max_keypoints: int, max_side: int, keep: int = 256) -> None:
        self.path_of, self.sha_of = path_of, sha_of
        self.cache = FeatureCache(cache_dir) if cache_dir is not None else None
        self.key = feature_key(max_keypoints, max_side)
        self.max_keypoints, self.max_side, self.keep = max_keypoints, max_side, keep
        self._memory: OrderedDict[int, LocalFeatures | None] = OrderedDict()
        self.extracted = 0

    def get(self, row: int) -> LocalFeatures | None:
        """The features of ``row``, or None when its image cannot be read (logged once)."""
        if row in self._memory:
            self._memory.move_to_end(row)
            return self._memory[row]
        features = self._load(row)
        self._memory[row] = features
        if len(self._memory) > self.keep:
            self._memory.popitem(last=False)
        return features

    def _load(self, row: int) -> LocalFeatures | None:
        try:
            return cached_features(self.cache, self.sha_of(row), self.key, lambda: self._extract(row))
        except _UNUSABLE as error:
            log.warning("duplicates: cannot verify row %d: %s", row, error)
            return None

    def _extract(self, row: int) -> LocalFeatures:
        features = extract_rootsift(load_image(self.path_of(row), max_side=self.max_side), self.max_keypoints,
                                    self.max_side)
        self.extracted += 1
        return features


def pixel_digest(path: str) -> str | None:
    """sha256 of the decoded upright RGB pixels and size (None if unreadable): equal for the same
    picture saved in two lossless formats or with different metadata."""
    try:
        image = load_image(path)
    except _UNUSABLE:
        return None
    digest = hashlib.sha256(f"{image.size}".encode())
    digest.update(np.asarray(image.convert("RGB")).tobytes())
    return digest.hexdigest()

