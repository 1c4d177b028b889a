"""A trained recognizer on disk (``rec.pt``) and its predictions.

The file records the classes, the backbone (name and weights id), the input size, the method,
whether the trunk was trained, and the weights of what was trained (the trunk's only when it was:
otherwise the backbone's own weights rebuild it). It is read with ``torch.load(weights_only=True)``:
no code runs. A recognizer built for one backbone is refused where another is in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from matchlens.errors import ConfigError, WeightsError
from matchlens.fileio import atomic_path
from matchlens.models import load_backbone
from matchlens.recognize.network import RecognitionNet, image_batch

__all__ = ["FORMAT", "Prediction", "Recognizer", "check_backbone", "load_recognizer", "save_recognizer"]

FORMAT = "matchlens-recognizer/1"


@dataclass
class Prediction:
    """The predicted class, its probability, the runner-up classes, and whether the confidence
    is below the recognizer's threshold (an image of a class it was not trained on lands here)."""

    label: str
    confidence: float
    top: list[tuple[str, float]]
    uncertain: bool
    source: str = "recognizer"

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "confidence": round(self.confidence, 4), "uncertain": self.uncertain,
                "source": self.source, "top": [{"label": c, "confidence": round(p, 4)} for c, p in self.top]}


@dataclass
class Recognizer:
    """A recognition network with what it was trained for."""

    net: RecognitionNet
    classes: list[str]
    backbone: str
    weights_id: str
    method: str
    size: int
    trunk_trained: bool
    threshold: float = 0.5
    info: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def predict(self, sources: Sequence, boxes: Sequence | None = None, top: int = 3) -> list[Prediction]:
        """Predictions for images (paths, bytes, PIL images or arrays), each cropped to its box."""
        self.net.eval()
        probabilities = self.net(image_batch(sources, self.size, boxes)).cpu()
        return [self._prediction(row, top) for row in probabilities]

    @torch.no_grad()
    def predict_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C) of precomputed trunk feature maps (benchmarks)."""
        self.net.eval()
        return F.softmax(self.net.logits(maps.to(self.net.mean.device)), dim=1).cpu()

    def _prediction(self, row: torch.Tensor, top: int) -> Prediction:
        values, order = row.topk(min(top, len(self.classes)))
        ranked = [(self.classes[int(i)], float(v)) for v, i in zip(values, order)]
        return Prediction(ranked[0][0], ranked[0][1], ranked, ranked[0][1] < self.threshold)


def save_recognizer(rec: Recognizer, path: str | Path) -> Path:
    """Write ``rec`` atomically; returns the path."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in rec.net.state_dict().items()
             if rec.trunk_trained or not k.startswith("trunk.")}
    payload = {"format": FORMAT, "classes": list(rec.classes), "backbone": rec.backbone, "weights_id": rec.weights_id,
               "method": rec.method, "size": rec.size, "trunk_trained": rec.trunk_trained,
               "branches": len(rec.net.branches), "threshold": rec.threshold, "info": rec.info, "state": state}
    with atomic_path(path, suffix=".pt.tmp") as tmp:
        torch.save(payload, tmp)
    return path


def load_recognizer(path: str | Path, backbone: str | None = None, weights: str | None = None) -> Recognizer:
    """Read a recognizer; with ``backbone``, refuse one trained for another backbone."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"recognizer '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of every kind: not a file we wrote
        raise WeightsError(f"{path} is not a recognizer file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a recognizer file (train one with 'matchlens train-recognizer')")
    if backbone is not None:
        check_backbone(payload["backbone"], backbone, path)
    model = load_backbone(payload["backbone"], weights)
    if model.weights_id != payload["weights_id"] and not payload["trunk_trained"]:
        raise WeightsError(f"{path} was trained on {payload['backbone']} weights {payload['weights_id']}, "
                           f"these are {model.weights_id}")
    net = RecognitionNet(model, len(payload["classes"]), int(payload["branches"]))
    missing, unexpected = net.load_state_dict(payload["state"], strict=False)
    if unexpected or any(not k.startswith("trunk.") for k in missing):
        raise WeightsError(f"{path} does not fit the {payload['backbone']} recognition network")
    net.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return Recognizer(net, list(payload["classes"]), payload["backbone"], payload["weights_id"], payload["method"],
                      int(payload["size"]), bool(payload["trunk_trained"]), float(payload["threshold"]),
                      dict(payload["info"]))


def check_backbone(trained_for: str, in_use: str, path: str | Path = "the recognizer") -> None:
    """Refuse, in one line, a recognizer trained for another backbone than the one in use."""
    if trained_for != in_use:
        raise ConfigError(f"{path} was trained for backbone {trained_for!r}, but this index uses {in_use!r}; "
                          f"train one with 'matchlens train-recognizer ... --backbone {in_use}'")
