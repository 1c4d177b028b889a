"""Region-weighted similarity (PS-Net eq. 1), region weights files and per-result verdicts.

    s(I, I') = Σ_r λ_r · cos(f_r(I), f_r(I')),   λ_r ≥ 0, Σ_r λ_r = 1

Weights file (``lambdas.json``, what ``matchlens fit-regions`` writes)::

    {"layout": "garment5",                                  # optional: checked against the kind
     "default": {"collar": 0.2, "left_sleeve": 0.2, ...},  # every region of the layout
     "categories": {"tshirt": {"collar": 0.1, ...}, ...},  # optional, chosen by --category
     "differs_below": 0.6}                                  # optional: the verdict threshold

Without a file (or without ``default``) the weights are uniform ("traditional" in PS-Net's
Table 2). Weights are normalised to sum 1 when read.

Verdict: a region *differs* when its cosine is below ``DIFFERS_BELOW`` (or the file's
``differs_below``). The default is calibrated on generated copies (docs/regional.md,
"Calibration"): generated scenes with one garment5 region replaced by another scene's texture,
described by the embedded backbone at 128, 256 and 640 px; the threshold sits between the
cosines of unchanged regions and those of replaced ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from matchlens.fileio import read_json_object
from matchlens.errors import ConfigError
from matchlens.regional.layouts import region_label

__all__ = ["DIFFERS_BELOW", "RegionWeights", "cosines", "read_weights", "uniform", "verdict", "weighted_scores"]

DIFFERS_BELOW = 0.8  # GeM regions at 640 px, calibrated on generated copies (docs/regional.md)


def uniform(n: int) -> np.ndarray:
    """Equal weights summing to 1."""
    return np.full(n, 1.0 / n, np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-region cosines (R,) of two (R, d) region descriptor sets (rows L2-normalised or zero)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise ValueError(f"region descriptors differ in shape: {a.shape} vs {b.shape}")
    return np.einsum("rd,rd->r", a, b)


def weighted_scores(database: np.ndarray, query: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ_r λ_r cos over a collection: ``database`` (n, R, d), ``query`` (R, d) → (n,) float32."""
    per_region = np.einsum("nrd,rd->nr", np.asarray(database, np.float32), np.asarray(query, np.float32))
    return (per_region @ np.asarray(weights, np.float32)).astype(np.float32)


@dataclass
class RegionWeights:
    """A weights file read and checked against a layout's region names."""

    regions: list[str]
    default: np.ndarray
    categories: dict[str, np.ndarray] = field(default_factory=dict)
    differs_below: float = DIFFERS_BELOW
    source: str | None = None

    def for_category(self, category: str | None) -> np.ndarray:
        """The weights of ``category`` (None: the default); one-line error for an unknown one."""
        if category is None:
            return self.default
        if category not in self.categories:
            known = ", ".join(sorted(self.categories)) or "none"
            raise ConfigError(f"weights {self.source or '(uniform)'} have no category {category!r} (categories: {known})")
        return self.categories[category]

    def to_json(self) -> dict[str, Any]:
        """The file's content (weights as {region: λ})."""
        def named(w: np.ndarray) -> dict[str, float]:
            return {r: round(float(v), 6) for r, v in zip(self.regions, w)}

        return {"default": named(self.default), "categories": {c: named(w) for c, w in self.categories.items()},
                "differs_below": self.differs_below}


def read_weights(path: str | os.PathLike | None, regions: Sequence[str], layout: str | None = None) -> RegionWeights:
    """The weights of ``path`` for a layout with ``regions`` (uniform without a file)."""
    names = list(regions)
    if path is None:
        return RegionWeights(names, uniform(len(names)))
    where = os.fspath(path)
    data = read_json_object(path, "weights file", ConfigError, "with 'default' and/or 'categories'")
    if layout is not None and data.get("layout", layout) != layout:
        raise ConfigError(f"weights file '{where}' is for layout {data['layout']!r}, the regional kind uses {layout!r}")
    categories = data.get("categories", {})
    if not isinstance(categories, dict):
        raise ConfigError(f"weights file '{where}': 'categories' must map category names to {{region: weight}}")
    default = data.get("default")
    return RegionWeights(
        names,
        uniform(len(names)) if default is None else _vector(default, names, f"weights file '{where}', default"),
        {str(c): _vector(w, names, f"weights file '{where}', category {c!r}") for c, w in categories.items()},
        _threshold(data.get("differs_below", DIFFERS_BELOW), where), where)


def _vector(weights: Any, regions: list[str], where: str) -> np.ndarray:
    if not isinstance(weights, Mapping):
        raise ConfigError(f"{where}: expected {{region: weight}} for the regions {', '.join(regions)}")
    unknown = [k for k in weights if k not in regions]
    missing = [r for r in regions if r not in weights]
    if unknown or missing:
        raise ConfigError(f"{where}: regions must be exactly {', '.join(regions)}"
                          + (f"; unknown: {', '.join(map(str, unknown))}" if unknown else "")
                          + (f"; missing: {', '.join(missing)}" if missing else ""))
    values = [weights[r] for r in regions]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f"{where}: every weight must be a number >= 0, got {values}")
    total = float(sum(values))
    if total <= 0:
        raise ConfigError(f"{where}: the weights sum to 0; give at least one region a positive weight")
    return (np.asarray(values, np.float64) / total).astype(np.float32)


def _threshold(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not -1.0 <= value <= 1.0:
        raise ConfigError(f"weights file '{where}': differs_below must be a cosine from -1 to 1, got {value!r}")
    return float(value)


def verdict(similarities: Mapping[str, float], differs_below: float = DIFFERS_BELOW) -> str:
    """A short verdict, e.g. ``"left sleeve differs, the rest matches"``. A partial copy changes
    a minority of regions (PS-Net: at most two of five); beyond half, the count is given instead."""
    differing = [region_label(r) for r, s in similarities.items() if s < differs_below]
    if not differing:
        return "every region matches"
    if len(differing) == len(similarities):
        return "every region differs"
    if 2 * len(differing) > len(similarities):
        return f"{len(differing)} of {len(similarities)} regions differ"
    listed = differing[0] if len(differing) == 1 else ", ".join(differing[:-1]) + " and " + differing[-1]
    return f"{listed} {'differs' if len(differing) == 1 else 'differ'}, the rest matches"
