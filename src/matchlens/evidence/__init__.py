"""Indicative retrieval (P0): a verifier that scores a pair and shows where it matches.

Pipeline: patch grid (raw pixels or backbone cells) → multi-metric 4D tensor → verifier CNN
(ResNet-18 on the (mn)×(mn) reshaped tensor, or 4D convolutions) with hypersphere attention
regulation → Grad-CAM on every layer → contribution maps C_Q, C_T → indicative PRF.

Entry point for products: :func:`explain_pair` (score + maps + PNG overlay).
"""

from matchlens.evidence.cam import aggregate, contributions, layer_gradcam, upsample
from matchlens.evidence.config import METRIC_NAMES, VerifierConfig, parse_grid
from matchlens.evidence.har import HAR, hypersphere_mask
from matchlens.evidence.model import EvidenceModel, Explanation, explain_pair, load_model
from matchlens.evidence.prf import pool_query_maps, reweight_query
from matchlens.evidence.tensor import METRICS, correlation_tensor

__all__ = ["HAR", "METRICS", "METRIC_NAMES", "EvidenceModel", "Explanation", "VerifierConfig", "aggregate",
           "contributions", "correlation_tensor", "explain_pair", "hypersphere_mask", "layer_gradcam", "load_model",
           "parse_grid", "pool_query_maps", "reweight_query", "upsample"]
