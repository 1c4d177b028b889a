"""Copy kinds: the registry of names and the rule that gives each pair its kind.

Rules are tried in registration order and the first that holds names the pair; a pair no rule
accepts is not a copy. ``COPY_KINDS.describe()`` lists them with their first doc line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from matchlens.copies.geometry import Geometry
from matchlens.copies.thresholds import Thresholds
from matchlens.registry import Registry

__all__ = ["COPY_KINDS", "CopyRule", "PairEvidence", "classify"]


@dataclass
class PairEvidence:
    """What is known of one candidate pair (rows ``a`` < ``b`` of the index).

    ``regions``: per-region cosine similarities when the index stores a regional kind, else None.
    """

    a: int
    b: int
    cosine: float
    same_file: bool = False
    same_pixels: bool = False
    geometry: Geometry | None = None
    regions: tuple[float, ...] | None = None
    region_names: tuple[str, ...] | None = None

    def differing(self, thresholds: Thresholds) -> list[str]:
        """Names of the regions ``region_gap`` or more below the median region similarity."""
        if not self.regions:
            return []
        names = self.region_names or tuple(f"r{i}" for i in range(len(self.regions)))
        floor = float(np.median(self.regions)) - thresholds.region_gap
        return [n for n, s in zip(names, self.regions) if s < floor]

    def as_dict(self, thresholds: Thresholds) -> dict[str, Any]:
        """JSON-ready evidence."""
        out: dict[str, Any] = {"cosine": round(float(self.cosine), 4)}
        if self.same_file or self.same_pixels:
            out["identical"] = "file bytes (sha256)" if self.same_file else "decoded pixels"
        if self.geometry is not None:
            out.update(self.geometry.as_dict())
        if self.regions is not None:
            names = self.region_names or tuple(f"r{i}" for i in range(len(self.regions)))
            out["regions"] = {n: round(float(s), 4) for n, s in zip(names, self.regions)}
            out["regions_differ"] = self.differing(thresholds)
        return out


CopyRule = Callable[[PairEvidence, Thresholds], bool]

#: Copy kind name → rule ``(evidence, thresholds) -> bool``; registration order is precedence.
COPY_KINDS: Registry[CopyRule] = Registry("copy kind")


def _copy_geometry(e: PairEvidence, t: Thresholds, min_ratio: float) -> bool:
    """One affine map explains enough matches to sub-pixel accuracy and no perspective change is visible."""
    g = e.geometry
    return (g is not None and g.inliers >= t.min_inliers and g.ratio >= min_ratio
            and g.perspective <= t.max_perspective and g.residual <= t.max_residual)


@COPY_KINDS.register("exact")
def exact_copy(e: PairEvidence, t: Thresholds) -> bool:
    """Exact copy: the same file bytes (sha256) or identical decoded pixels."""
    return e.same_file or e.same_pixels


@COPY_KINDS.register("partial")
def partial_copy(e: PairEvidence, t: Thresholds) -> bool:
    """Partial copy: one or two regions replaced, most regions agree, the rest maps by one transform
    onto the same frame (needs the regional kind: matchlens encode IDX --kind regional)."""
    if e.regions is None or not _copy_geometry(e, t, t.partial_min_ratio):
        return False
    assert e.geometry is not None  # _copy_geometry holds
    if e.geometry.frame_offset > t.max_frame_offset:  # a crop: the same layout covers other parts
        return False
    differ = len(e.differing(t))
    # an edit spills into the neighbouring cells of the backbone map: "most agree" is the median
    return 1 <= differ <= t.max_differ and float(np.median(e.regions)) >= t.region_agree


@COPY_KINDS.register("near")
def near_duplicate(e: PairEvidence, t: Thresholds) -> bool:
    """Near-duplicate: re-encoded, resized, cropped or recoloured; one affine map explains almost all matches."""
    return _copy_geometry(e, t, t.min_ratio)


def classify(evidence: PairEvidence, thresholds: Thresholds) -> str | None:
    """The first copy kind whose rule holds (registration order), or None: not a copy."""
    for name in COPY_KINDS.ordered():
        if COPY_KINDS.get(name)(evidence, thresholds):
            return name
    return None
