"""Local features: RootSIFT extraction and its on-disk cache (:mod:`matchlens.local.features`), and
the matching and geometric verification of one pair of images (:mod:`matchlens.local.verify`).

Shared by spatial verification (:mod:`matchlens.rerank.spatial`), the classic encodings
(:mod:`matchlens.classic`), spatial-verification evidence (:mod:`matchlens.evidence.local`),
label-free training positives and the service. This layer sits beside ``index``/``extract``: it
may import only ``io`` and the base modules (errors, registry, config, fileio, linalg).
"""

from matchlens.local.features import (CACHE_KIND, DESCRIPTOR_DIM, FeatureCache, LocalFeatures, extract_rootsift,
                                      feature_key, rootsift_from_sift)
from matchlens.local.verify import count_inliers, inlier_mask, match_features, match_indices, to_working_frame, verify_pair

__all__ = ["CACHE_KIND", "DESCRIPTOR_DIM", "FeatureCache", "LocalFeatures", "count_inliers", "extract_rootsift",
           "feature_key", "inlier_mask", "match_features", "match_indices", "rootsift_from_sift", "to_working_frame", "verify_pair"]
