"""Predict a query's quality (its AP with one index) and say what looks wrong with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from matchlens.quality.features import Diagnosis, diagnose
from matchlens.quality.net import QualityNet, to_tensor
from matchlens.quality.patches import MAX_SIDE, PATCH, check_usable, grid_patches, working_image
from matchlens.quality.store import QualityModel

__all__ = ["Assessment", "assess", "predict_ap"]


@torch.no_grad()
def predict_ap(net: QualityNet, image: Image.Image, patch: int = PATCH, max_side: int = MAX_SIDE) -> float:
    """Predicted AP of a query: the mean of its grid patches' predictions."""
    work = working_image(image, max_side)
    return float(net(to_tensor(grid_patches(work, patch))).mean())


@dataclass
class Assessment:
    """A query's predicted AP (None without a model), whether it is low, and the diagnosis."""

    predicted_ap: float | None
    low: bool
    threshold: float | None
    diagnosis: Diagnosis

    def warning(self) -> str | None:
        """One line for the user when the predicted quality is low, else None."""
        if not self.low or self.predicted_ap is None:
            return None
        why = "; ".join(self.diagnosis.issues) or "no single cause found"
        return (f"low query quality for this index: predicted AP {self.predicted_ap:.2f} "
                f"(low below {self.threshold:.2f}); {why}; try --enhance auto")

    def to_dict(self) -> dict[str, Any]:
        return {"predicted_ap": None if self.predicted_ap is None else round(self.predicted_ap, 4),
                "low": self.low, "threshold": self.threshold, "issues": list(self.diagnosis.issues),
                "estimates": self.diagnosis.to_dict(), "warning": self.warning()}


def assess(image: Image.Image, model: QualityModel | None) -> Assessment:
    """Diagnose ``image`` and, with a model, predict its AP (one-line errors for a tiny or blank query)."""
    diagnosis = diagnose(image)
    check_usable(working_image(image))
    if model is None:
        return Assessment(None, False, None, diagnosis)
    ap = predict_ap(model.network(), image)
    return Assessment(ap, ap < model.low, model.low, diagnosis)
