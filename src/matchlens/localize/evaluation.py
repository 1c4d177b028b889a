"""Localisation accuracy: the share of queries within (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°) and the
median errors, for matchlens's poses and for the baseline "pose of the top-1 retrieved map image".

A failed query counts as outside every threshold, and as an infinite error in the medians (so a
method that fails on more than half of the queries has an infinite median): failures are never
hidden by averaging over successes only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matchlens.index.writer import ProgressFactory
from matchlens.localize.cameras import PosedCamera, pose_errors
from matchlens.localize.localizer import Localization, Localizer

__all__ = ["THRESHOLDS", "LocEvaluation", "QueryOutcome", "evaluate_localization", "summarise"]

#: (metres, degrees): the paper's three accuracy bins.
THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


@dataclass
class QueryOutcome:
    """One evaluated query: matchlens's result and errors, and the top-1 baseline's errors."""

    result: Localization
    position_error: float   # inf when failed
    rotation_error: float
    baseline_position_error: float
    baseline_rotation_error: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form (inf written as null)."""
        def finite(v: float) -> float | None:
            return None if not math.isfinite(v) else round(v, 5)

        return {**self.result.to_dict(), "position_error": finite(self.position_error),
                "rotation_error": finite(self.rotation_error),
                "baseline_position_error": finite(self.baseline_position_error),
                "baseline_rotation_error": finite(self.baseline_rotation_error)}


@dataclass
class LocEvaluation:
    """Every query's outcome and the two summaries."""

    outcomes: list[QueryOutcome]
    summary: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"summary": self.summary, "queries": [o.to_dict() for o in self.outcomes]}


def summarise(position: Sequence[float], rotation: Sequence[float]) -> dict[str, float]:
    """Percentages within each threshold and the median errors (inf for failures)."""
    pos, rot = np.asarray(position, np.float64), np.asarray(rotation, np.float64)
    out = {f"{m}m,{d}deg": 100.0 * float(np.mean((pos <= m) & (rot <= d))) if len(pos) else 0.0
           for m, d in THRESHOLDS}
    out["median_position"] = float(np.median(pos)) if len(pos) else math.inf
    out["median_rotation"] = float(np.median(rot)) if len(rot) else math.inf
    out["localised"] = float(np.isfinite(pos).sum())
    out["queries"] = float(len(pos))
    return out


def _outcome(result: Localization, truth: PosedCamera, map_cameras: dict[str, PosedCamera]) -> QueryOutcome:
    if result.ok and result.R is not None and result.C is not None:
        position, rotation = pose_errors(result.R, result.C, truth)
    else:
        position, rotation = math.inf, math.inf
    if result.retrieved:
        top = map_cameras[result.retrieved[0]]
        base_position, base_rotation = pose_errors(top.R, top.C, truth)
    else:
        base_position, base_rotation = math.inf, math.inf
    return QueryOutcome(result, position, rotation, base_position, base_rotation)


def evaluate_localization(localizer: Localizer, queries: Sequence[tuple[str, str | os.PathLike]],
                          truth: dict[str, PosedCamera], known_intrinsics: bool = True,
                          progress: ProgressFactory | None = None) -> LocEvaluation:
    """Localise every (name, path) query and score it against ``truth[name]``."""
    advance = progress(len(queries), "localising") if progress else (lambda n=1: None)
    outcomes = []
    for name, path in queries:
        camera = truth[name].camera if known_intrinsics else None
        outcomes.append(_outcome(localizer.localize(path, camera, name=name), truth[name], localizer.map.cameras))
        advance(1)
    evaluation = LocEvaluation(outcomes)
    evaluation.summary = {
        "matchlens": summarise([o.position_error for o in outcomes], [o.rotation_error for o in outcomes]),
        "top-1 retrieved pose": summarise([o.baseline_position_error for o in outcomes],
                                          [o.baseline_rotation_error for o in outcomes]),
    }
    return evaluation
