"""The outcome of an evaluation: per-query rankings, metrics and the summary, ready to print or report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from matchlens.io.datasets import Query


@dataclass
class QueryOutcome:
    """One query's ranking and scores under one protocol."""

    query: Query
    ranking: list[str]            # database image names, best first (the query itself included if indexed)
    scores: list[float]           # the search score of each ranked image
    metrics: dict[str, float]     # e.g. {"AP": 0.53, "P@1": 1.0, "P@5": 0.6, "AP@10": 0.4, "R@1": 1.0}
    query_label: str = ""         # how the query was made, e.g. "cropped to box" / "full image"

    @property
    def ap(self) -> float:
        """Average precision of this query (NaN when it has no positives)."""
        return self.metrics.get("AP", math.nan)

    def verdict(self, name: str) -> str:
        """Why a ranked image counts as the metric counts it: ``junk`` or ``query`` (both ignored),
        ``positive`` or ``negative``. Junk wins over positive, and the query image is a positive only
        where the ground truth lists it as one (classic Oxford/Paris)."""
        if name in self.query.junk:
            return "junk"
        if name in self.query.positives:
            return "positive"
        return "query" if name == self.query.image else "negative"


@dataclass
class Evaluation:
    """All queries of one dataset under one protocol, and their summary metrics."""

    dataset: str                  # e.g. "oxford5k_subset"
    protocol: str                 # e.g. "cropped queries (standard)", "full-image queries", "Medium"
    pipeline: str                 # PipelineSpec.describe() of the index
    image_root: str               # folder the image names are relative to (for thumbnails)
    outcomes: list[QueryOutcome]
    summary: dict[str, float]     # e.g. {"mAP": 54.9, "mP@1": ..., "mP@5": ..., "mAP@10": ..., "R@1": ...} in %
    notes: list[str] = field(default_factory=list)  # definitions and caveats to print with the table

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``matchlens eval --json``)."""
        return {
            "dataset": self.dataset, "protocol": self.protocol, "pipeline": self.pipeline,
            "summary": self.summary, "notes": self.notes,
            "queries": [
                {"query": o.query.image, "group": o.query.group, "query_label": o.query_label,
                 **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in o.metrics.items()}}
                for o in self.outcomes
            ],
        }
