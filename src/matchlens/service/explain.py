"""The service's spatial-verification evidence, which lives in :mod:`matchlens.evidence.local`
(no FastAPI there, so the CLI uses it too); re-exported here for existing imports."""

from matchlens.evidence.local import (CAPTION, GAP, MAX_KEYPOINTS, MAX_LINES, MAX_SIDE, PANEL_HEIGHT,
                                      PANEL_MAX_WIDTH, RATIO, THRESHOLD, Explanation, PairEvidence, density_map,
                                      explain_pair, local_feature_evidence, render_evidence)

__all__ = ["CAPTION", "GAP", "MAX_KEYPOINTS", "MAX_LINES", "MAX_SIDE", "PANEL_HEIGHT", "PANEL_MAX_WIDTH", "RATIO",
           "THRESHOLD", "Explanation", "PairEvidence", "density_map", "explain_pair", "local_feature_evidence",
           "render_evidence"]
