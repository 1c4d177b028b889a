"""Spatial verification: re-rank the top of a shortlist by geometrically consistent local matches.

For each of the first ``k`` shortlist entries, RootSIFT features of the query and the database
image are matched (nearest neighbour with Lowe's ratio test), a homography (or fundamental matrix)
is fitted robustly (MAGSAC++ or RANSAC), and the number of inliers measures how surely the two
images show the same object. Database features are cached on disk by image content hash, so a
repeated verification does not recompute them.

Scores after verification, for a shortlist whose largest score is ``top``:

* a verified image (``inliers >= min_inliers``) scores ``max(top, 1) + inliers / 1000``: strictly
  above every score of the input shortlist (so above every unverified entry), increasing with the
  inlier count, and equal to the usual ``1 + inliers / 1000`` for cosine scores;
* the other entries keep their scores and their relative order.

Verified images come first (most inliers first, ties in original order), then the unverified of
the first ``k``, then the rest of the shortlist unchanged.

The features and their cache are :mod:`matchlens.local.features`; the matching and the robust fit
of one pair are :mod:`matchlens.local.verify`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from matchlens.io.images import load_image
from matchlens.local.features import (CACHE_KIND, FeatureCache, LocalFeatures, cached_features, extract_rootsift,
                                      feature_key)
from matchlens.local.pool import UNUSABLE
from matchlens.local.verify import METHODS, MIN_MATCHES, verify_pair
from matchlens.components import in_range, one_of, positive_float, positive_int
from matchlens.rerank.base import RERANKERS, QueryInput, Reranker, RerankContext, Shortlist

__all__ = ["SpatialVerification"]

log = logging.getLogger(__name__)

_INLIER_SCALE = 1000.0  # verified score = base + inliers / _INLIER_SCALE


@RERANKERS.register("sv")
class SpatialVerification(Reranker):
    """Verify the top ``k`` by local-feature geometry and move verified images to the front.

    Parameters: ``k`` (entries to verify), ``max_keypoints`` (SIFT keypoints per image),
    ``max_side`` (longest side features are detected at), ``ratio`` (Lowe ratio test),
    ``method`` (``magsac`` or ``ransac``), ``model`` (``homography`` or ``fundamental``),
    ``threshold`` (inlier distance in pixels at the ``max_side`` working resolution),
    ``min_inliers`` (inliers needed to count as verified).

    After :meth:`rerank`, ``last_inliers`` maps each verified-or-rejected row to its inlier count
    and ``last_unreadable`` holds the rows whose image could not be read (left unverified).
    """

    needs_image = True
    defaults = {"k": 100, "max_keypoints": 1000, "max_side": 1024, "ratio": 0.8, "method": "magsac",
                "model": "homography", "threshold": 8.0, "min_inliers": 12}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.last_inliers: dict[int, int] = {}
        self.last_unreadable: set[int] = set()
        self.cache: FeatureCache | None = None  # kept across queries so its counters accumulate

    def validate(self) -> None:
        """One-line ConfigError for any parameter out of range."""
        for key in ("k", "max_keypoints", "max_side", "min_inliers"):
            self.check(key, positive_int)
        self.check("ratio", in_range, 0.0, 1.0, low_open=True)
        self.check("threshold", positive_float)  # pixels at the max_side working resolution
        self.check("method", one_of, METHODS)
        self.check("model", one_of, MIN_MATCHES)

    def rerank(self, query: QueryInput, shortlist: Shortlist, ctx: RerankContext) -> Shortlist:
        """Verify the first ``k`` entries and reorder them; the rest is returned unchanged."""
        self.last_inliers, self.last_unreadable = {}, set()
        if query.image is None or len(shortlist) == 0:
            if query.image is None:
                log.warning("spatial verification skipped: the query has no image")
            return shortlist
        self._use_cache(ctx)
        query_features = self._query_features(query)
        head = shortlist.head(self.config["k"])
        for row in head.rows.tolist():
            features = self._database_features(ctx, row)
            if features is None:
                self.last_unreadable.add(row)
            else:
                self.last_inliers[row] = self._inliers(query_features, features)
        return self._reorder(shortlist, len(head))

    # ---------------------------------------------------------------------------------------
    # Features

    @property
    def _key(self) -> str:
        return feature_key(self.config["max_keypoints"], self.config["max_side"])

    def _extract(self, image: Image.Image) -> LocalFeatures:
        return extract_rootsift(image, self.config["max_keypoints"], self.config["max_side"])

    def _use_cache(self, ctx: RerankContext) -> None:
        """Open the context's cache folder, reusing the open cache while the folder is the same."""
        folder = ctx.cache_dir(CACHE_KIND)
        if folder is None:
            self.cache = None
        elif self.cache is None or self.cache.folder != Path(folder):
            self.cache = FeatureCache(folder)

    def _cached(self, sha256: str, compute: Callable[[], LocalFeatures]) -> LocalFeatures:
        """Features from the cache, else ``compute()`` stored in it."""
        return cached_features(self.cache, sha256, self._key, compute)

    def _query_features(self, query: QueryInput) -> LocalFeatures:
        """The query's features; cached only for queries read from a file (``sha256`` known)."""
        image = query.image
        assert image is not None  # rerank() returns early for a query without an image
        if query.sha256 is None:
            return self._extract(image)
        # query.image may be a crop of the file, so the key covers the pixels as well as the file.
        pixels = hashlib.sha256(f"{query.sha256}:{image.size}:".encode())
        pixels.update(image.convert("RGB").tobytes())
        return self._cached(pixels.hexdigest(), lambda: self._extract(image))

    def _database_features(self, ctx: RerankContext, row: int) -> LocalFeatures | None:
        """The features of database image ``row``, or None if its image cannot be read."""
        try:
            return self._cached(ctx.image_sha256(row), lambda: self._extract(
                load_image(ctx.image_path(row), max_side=self.config["max_side"])))
        except UNUSABLE as error:  # left unverified: unreadable file, OS error or OpenCV refusing the pixels
            log.warning("spatial verification skips database row %d: %s", row, error)
            return None

    # ---------------------------------------------------------------------------------------
    # Matching and scoring

    def _inliers(self, query: LocalFeatures, database: LocalFeatures) -> int:
        """Inliers of the robust model fitted to the ratio-test matches, in working-frame pixels."""
        return verify_pair(query, database, ratio=self.config["ratio"], model=self.config["model"],
                           method=self.config["method"], threshold=float(self.config["threshold"]),
                           max_side=self.config["max_side"])

    def _reorder(self, shortlist: Shortlist, k: int) -> Shortlist:
        """Verified first (by inliers, then original order), unverified of the top k, then the rest."""
        rows, scores = shortlist.rows, shortlist.scores.astype(np.float64)
        counts = np.array([self.last_inliers.get(int(row), 0) for row in rows[:k]], np.int64)
        verified = counts >= self.config["min_inliers"]
        # A stable sort on -inliers keeps the original (score) order among equal inlier counts.
        order = np.flatnonzero(verified)[np.argsort(-counts[verified], kind="stable")]
        base = max(1.0, float(scores.max()))
        new_rows = np.concatenate([rows[order], rows[:k][~verified], rows[k:]])
        new_scores = np.concatenate([base + counts[order] / _INLIER_SCALE, scores[:k][~verified], scores[k:]])
        return Shortlist(new_rows, new_scores.astype(np.float32))
