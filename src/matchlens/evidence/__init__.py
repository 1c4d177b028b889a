"""Indicative retrieval (P0): a verifier that scores a pair and shows where it matches.

Pipeline: patch grid (raw pixels or backbone cells) → multi-metric 4D tensor → verifier CNN
(ResNet-18 on the (mn)×(mn) reshaped tensor, or 4D convolutions) with hypersphere attention
regulation → Grad-CAM on every layer → contribution maps C_Q, C_T → indicative PRF.

Entry point for products: :func:`explain_pair` (score + maps + PNG overlay).

The names below load on first use (PEP 562): most of this package imports torch, and the
torch-free part (``pairs``) is imported by the search path.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "aggregate": "cam", "contributions": "cam", "layer_gradcam": "cam", "upsample": "cam",
    "METRIC_NAMES": "config", "VerifierConfig": "config", "parse_grid": "config",
    "HAR": "har", "hypersphere_mask": "har",
    "EvidenceModel": "model", "Explanation": "model", "explain_pair": "model", "load_model": "model",
    "pool_query_maps": "prf", "reweight_query": "prf",
    "METRICS": "tensor", "correlation_tensor": "tensor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load an exported name from its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'matchlens.evidence' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
