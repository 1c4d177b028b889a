"""``--enhance auto|denoise|sr|none``: enhance a query before searching, and decide when.

``auto`` enhances only when the quality model predicts the query's AP below its threshold **and**
predicts the enhanced query better (by at least :data:`MARGIN`); it tries each enhancer the index
has and keeps the best. ``denoise`` / ``sr`` always apply that enhancer. A clean query is
predicted above the threshold and left untouched, which is what keeps clean-query mAP unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from matchlens.errors import ConfigError
from matchlens.quality.dncnn import DnCNN, enhance_image
from matchlens.quality.predict import predict_ap
from matchlens.quality.store import ENHANCER_KINDS, QualityModel

__all__ = ["ENHANCE_MODES", "Choice", "choose"]

ENHANCE_MODES = ("none", "auto") + ENHANCER_KINDS
MARGIN = 0.02  # predicted-AP gain an enhancement must show before auto uses it


@dataclass
class Choice:
    """The query to search with, what was applied, and the predictions behind the decision."""

    image: Image.Image
    applied: str
    reason: str
    predicted: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "reason": self.reason,
                "predicted_ap": {k: round(v, 4) for k, v in self.predicted.items()}}


def _need(enhancers: dict[str, DnCNN], kind: str) -> DnCNN:
    if kind not in enhancers:
        raise ConfigError(f"--enhance {kind}: this index has no {kind} model; train one with "
                          f"'matchlens train-quality ... --enhancers' (or give --quality with a folder that has it)")
    return enhancers[kind]


def choose(image: Image.Image, mode: str, model: QualityModel | None, enhancers: dict[str, DnCNN]) -> Choice:
    """Apply ``mode`` to ``image`` (see the module docstring)."""
    if mode not in ENHANCE_MODES:
        raise ConfigError(f"--enhance must be one of {', '.join(ENHANCE_MODES)}, got {mode!r}")
    if mode == "none":
        return Choice(image, "none", "not asked")
    if mode != "auto":
        enhanced = enhance_image(_need(enhancers, mode), image)
        predicted = ({"none": predict_ap(model.network(), image), mode: predict_ap(model.network(), enhanced)}
                     if model is not None else {})
        return Choice(enhanced, mode, "asked", predicted)
    if model is None:
        raise ConfigError("--enhance auto needs a quality model: run 'matchlens train-quality' or give --quality MODEL")
    if not enhancers:
        raise ConfigError("--enhance auto: this index has no enhancers; train them with 'matchlens train-quality ... --enhancers'")
    net = model.network()
    predicted = {"none": predict_ap(net, image)}
    if predicted["none"] >= model.low:
        return Choice(image, "none", f"predicted AP {predicted['none']:.2f} is not low (threshold {model.low:.2f})", predicted)
    candidates = {kind: enhance_image(e, image) for kind, e in enhancers.items()}
    predicted.update({kind: predict_ap(net, im) for kind, im in candidates.items()})
    best = max(candidates, key=lambda kind: predicted[kind])
    if predicted[best] < predicted["none"] + MARGIN:
        return Choice(image, "none", f"no enhancer is predicted to help (best: {best} {predicted[best]:.2f})", predicted)
    return Choice(candidates[best], best, f"predicted AP {predicted['none']:.2f} → {predicted[best]:.2f}", predicted)
