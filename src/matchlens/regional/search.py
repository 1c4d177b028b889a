"""A regional search through the search pipeline, and what each result shows.

The ranking is the pipeline's own (``Index.searcher("regional")``: the stored kind's ranking as
the search step, exactly as ``--kind``/``--fuse`` rank); this module only sets the kind's λ on
that pipeline (:func:`weigh`) and, for the results, compares the query's regions with each
result's: per-region cosines, a verdict and the boxes to draw. The CLI, the API and the web
service call it with a pipeline they built; nothing here imports the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from matchlens.errors import ConfigError
from matchlens.regional.kind import RegionalKind, use_weights
from matchlens.regional.layouts import Box
from matchlens.regional.scoring import RegionWeights, verdict

__all__ = ["RegionalMatch", "RegionalPlan", "compare_results", "rows_of", "weigh"]


@dataclass
class RegionalPlan:
    """The weights a regional search ranks by (and the verdict threshold that goes with them)."""

    kind: RegionalKind
    weights: np.ndarray
    differs_below: float
    category: str | None = None
    source: str | None = None

    def describe(self) -> str:
        """E.g. ``regional garment5, λ collar=0.2 ... (lambdas.json, category tshirt)``."""
        lam = " ".join(f"{n}={w:.2f}" for n, w in zip(self.kind.names, self.weights.tolist()))
        where = self.source or "uniform"
        return f"{self.kind.name} ({self.kind.layout}), λ {lam} ({where}{', ' + self.category if self.category else ''})"


@dataclass
class RegionalMatch:
    """One result compared region by region with the query."""

    row: int
    similarities: dict[str, float]
    verdict: str
    boxes: list[Box]

    def to_dict(self) -> dict[str, Any]:
        return {"regions": {k: round(v, 4) for k, v in self.similarities.items()}, "verdict": self.verdict}


def weigh(searcher: Any, kind: RegionalKind, weights: RegionWeights, category: str | None = None) -> RegionalPlan:
    """Make ``searcher`` (a pipeline ranked by the regional kind, alone or in a fusion) rank by
    Σ λ_r cos with the weights of ``category``; one-line error when it has no regional kind."""
    lam = weights.for_category(category)
    if use_weights(searcher, lam) == 0:
        raise ConfigError(f"the ranking has no regional kind to weigh (regional kind: {kind.name!r})")
    return RegionalPlan(kind, lam, weights.differs_below, category, weights.source)


def rows_of(store: Any, ids: Sequence[int]) -> list[int]:
    """Index rows of results' metadata ids."""
    by_id = {e.id: e.row for e in store.entries if e.row is not None}
    return [int(by_id[i]) for i in ids]


def compare_results(plan: RegionalPlan, query_code: np.ndarray, rows: Sequence[int]) -> list[RegionalMatch]:
    """Per-region cosines, verdict and boxes of every result row."""
    matches = []
    for row in rows:
        sims = dict(zip(plan.kind.names, plan.kind.similarities(query_code, plan.kind.vectors(row)).tolist()))
        matches.append(RegionalMatch(row, sims, verdict(sims, plan.differs_below), plan.kind.boxes(row)))
    return matches
