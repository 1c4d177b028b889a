"""Calibrated thresholds of ``matchlens duplicates --auto`` (generated file: do not edit by hand).

Written by ``python benchmarks/copies.py --calibrate`` on its generated set: the scikit-image and
scikit-learn sample photos and 12 synthetic scenes with their near copies, partial copies and
simulated other photographs (352 images), indexed with tf_efficientnet_lite0 640px x(1,0.707107,0.5) rmac(levels=3) none.
Evidence: {"copy_pairs": 243, "near_pairs": 162, "negative_pairs": 900, "cosine_q01": 0.6989, "near_f1": 0.9415, "near_recall": 0.9444, "false_positives": 10, "tie_ranges": {"min_inliers": [8, 15], "min_ratio": [0.4, 0.75], "max_perspective": [0.002, 0.002], "max_residual": [0.35, 0.35]}, "regional": true, "partial_f1": 0.8662, "partial_recall": 0.8395, "near_labelled_partial": 8}
"""

THRESHOLDS = {
    "cosine_floor": 0.64,
    "exact_cosine": 0.9995,
    "min_inliers": 15,
    "min_ratio": 0.75,
    "max_perspective": 0.002,
    "max_residual": 0.35,
    "partial_min_ratio": 0.75,
    "region_agree": 0.6,
    "region_gap": 0.14,
    "max_differ": 3,
    "max_frame_offset": 0.05,
}
