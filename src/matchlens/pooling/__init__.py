"""Global pooling of CNN feature maps: MAC, SPoC, GeM, R-MAC and CroW.

The registry of names, parameters and defaults (:data:`POOLINGS`, :mod:`.specs`) needs no
torch; the maths lives in :mod:`.functional` as plain functions on ``(B, C, H, W)`` tensors and
the modules in :mod:`.modules` wrap them; both are imported on first use (``make_pooling``, or
an attribute such as ``matchlens.pooling.gem``). Outputs are ``(B, C)`` and not L2-normalised.
"""

from __future__ import annotations

import importlib
from typing import Any

from .specs import POOLINGS, PoolingSpec, make_pooling, pooling_names

_LAZY = {
    **dict.fromkeys(("crow", "gem", "mac", "rmac", "rmac_regions", "spoc", "spoc_prior"), "functional"),
    **dict.fromkeys(("CroW", "FunctionalPooling", "GeM", "MAC", "Pooling", "RMAC", "SPoC"), "modules"),
}

__all__ = [
    "POOLINGS", "CroW", "FunctionalPooling", "GeM", "MAC", "Pooling", "PoolingSpec", "RMAC", "SPoC", "crow", "gem",
    "mac", "make_pooling", "pooling_names", "rmac", "rmac_regions", "spoc", "spoc_prior",
]


def __getattr__(name: str) -> Any:
    """The torch parts, imported when first asked for (the registry alone stays torch-free)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
