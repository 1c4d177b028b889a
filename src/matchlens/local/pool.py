"""RootSIFT features of index images by row, for verification passes over many candidate pairs:
the index's on-disk cache (``<index>/cache/local_features``, shared with spatial verification)
plus a small in-memory LRU, since one image takes part in many pairs and a large collection's
features do not fit in memory at once (duplicates, ``train-regions``)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import cv2

from matchlens.errors import MatchlensError
from matchlens.io.images import load_image
from matchlens.local.features import FeatureCache, LocalFeatures, cached_features, extract_rootsift, feature_key

__all__ = ["FeaturePool", "UNUSABLE"]

log = logging.getLogger(__name__)
# An image we cannot use is left unverified: unreadable (ImageLoadError), an OS error, or OpenCV refusing it.
UNUSABLE = (MatchlensError, OSError, cv2.error)


class FeaturePool:
    """Features by index row: LRU memory → disk cache → extraction (then stored in the cache)."""

    def __init__(self, path_of: Callable[[int], str], sha_of: Callable[[int], str], cache_dir: Path | None,
                 max_keypoints: int, max_side: int, keep: int = 256, load_side: int | None = None,
                 label: str = "duplicates") -> None:
        self.path_of, self.sha_of, self.label = path_of, sha_of, label
        self.cache = FeatureCache(cache_dir) if cache_dir is not None else None
        self.key = feature_key(max_keypoints, max_side)
        self.max_keypoints, self.max_side, self.keep = max_keypoints, max_side, keep
        self.load_side = load_side or max_side  # the decode side; features are then made at max_side
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

    __getitem__ = get  # so a pool stands where a list of features would (verified_boxes)

    def _load(self, row: int) -> LocalFeatures | None:
        try:
            return cached_features(self.cache, self.sha_of(row), self.key, lambda: self._extract(row))
        except UNUSABLE as error:
            log.warning("%s: cannot verify row %d: %s", self.label, row, error)
            return None

    def _extract(self, row: int) -> LocalFeatures:
        features = extract_rootsift(load_image(self.path_of(row), max_side=self.load_side), self.max_keypoints,
                                    self.max_side)
        self.extracted += 1
        return features
