"""Global pooling of CNN feature maps: MAC, SPoC, GeM, R-MAC and CroW.

The maths lives in :mod:`.functional` as plain functions on ``(B, C, H, W)`` tensors; the
modules in :mod:`.modules` wrap them for use in a network and are chosen by name with
:func:`make_pooling`. Outputs are ``(B, C)`` and not L2-normalised.
"""

from __future__ import annotations

from .functional import crow, gem, mac, rmac, rmac_regions, spoc, spoc_prior
from .modules import POOLINGS, CroW, GeM, MAC, Pooling, RMAC, SPoC, make_pooling, pooling_names

__all__ = [
    "POOLINGS", "CroW", "GeM", "MAC", "Pooling", "RMAC", "SPoC", "crow", "gem", "mac",
    "make_pooling", "pooling_names", "rmac", "rmac_regions", "spoc", "spoc_prior",
]
