"""Region agreement from the index's regional descriptor kind (:mod:`matchlens.regional`), when
the index stores one: per-region cosine similarities of a pair, the evidence of a partial copy."""

from __future__ import annotations

from typing import Any

import numpy as np

from matchlens.errors import IndexError_
from matchlens.regional import RegionalKind, open_regional

__all__ = ["REGIONAL_HINT", "open_regions", "pair_regions"]

#: What the output says when the index has no regional kind.
REGIONAL_HINT = "partial-copy detection needs the regional kind: matchlens encode IDX --kind regional"


def open_regions(index: Any, name: str = "regional") -> RegionalKind | None:
    """The regional kind ``name`` of ``index``, or None when the index does not store it."""
    try:
        return open_regional(index, name=name)
    except IndexError_:  # no such kind, or not a regional one: partial copies are not labelled
        return None


def pair_regions(view: RegionalKind | None, a: int, b: int) -> tuple[tuple[float, ...], tuple[str, ...]] | None:
    """(per-region cosine, region names) of rows ``a`` and ``b``, or None without a regional kind."""
    if view is None:
        return None
    values = tuple(float(v) for v in np.asarray(view.similarities(a, b)).ravel())
    return values, tuple(str(n) for n in view.names)
