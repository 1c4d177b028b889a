"""Model files of this package: a quality model (the head, and the index and pipeline it predicts
for) and enhancers (DnCNN / SR weights), each one ``torch.save`` file written atomically.

AP depends on the collection as much as on the query, so a quality model records its **target**:
the index pipeline's fingerprint (backbone, weights, pooling, scales, whitening) and a sample of the
content hashes of the images it was trained against. It is refused, in one line, for an index whose
pipeline differs or that shares fewer than half of those images (another collection). Enhancers
fine-tuned through a quality model carry its target too; generic ones carry none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matchlens.errors import WeightsError
from matchlens.fileio import atomic_path
from matchlens.pipeline import Index
from matchlens.quality.location import default_model_path, enhancer_path, find_model
from matchlens.quality.dncnn import DnCNN
from matchlens.quality.net import HEAD_WIDTHS, QualityHead, QualityNet

__all__ = ["ENHANCER_KINDS", "Target", "QualityModel", "default_model_path", "enhancer_path", "find_model",
           "load_enhancer", "load_state", "save_enhancer", "save_state", "target_of"]

FORMAT = "matchlens-quality"
VERSION = 1
SAMPLE = 256        # content hashes kept to recognise the collection
MIN_OVERLAP = 0.5   # share of them the index must still hold
ENHANCER_KINDS = ("denoise", "sr")


@dataclass(frozen=True)
class Target:
    """What a model predicts for: an index pipeline and (a sample of) its collection."""

    pipeline: str
    describe: str
    index: str
    images: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "describe": self.describe, "index": self.index, "images": list(self.images)}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "Target":
        return cls(str(value["pipeline"]), str(value["describe"]), str(value["index"]),
                   tuple(str(v) for v in value.get("images", ())))

    def check(self, index: Index, what: str) -> None:
        """Refuse ``index`` when its pipeline or collection is not this target's (one line)."""
        if index.spec.fingerprint() != self.pipeline:
            raise WeightsError(f"{what} was trained for pipeline '{self.describe}' (index {self.index}); "
                               f"this index uses '{index.spec.describe()}': train one for it with "
                               f"'matchlens train-quality'")
        if self.images:
            held = {e.sha256 for e in index.entries if e.status == "indexed"}
            share = sum(h in held for h in self.images) / len(self.images)
            if share < MIN_OVERLAP:
                raise WeightsError(f"{what} was trained on another collection (index {self.index}; only "
                                   f"{100 * share:.0f}% of its images are in {index.root.name}): train one for "
                                   f"this index with 'matchlens train-quality'")


def target_of(index: Index, seed: int = 0) -> Target:
    """The target of models trained against ``index``."""
    hashes = sorted(e.sha256 for e in index.entries if e.status == "indexed")
    if len(hashes) > SAMPLE:
        chosen = np.random.default_rng(seed).choice(len(hashes), SAMPLE, replace=False)
        hashes = [hashes[i] for i in sorted(chosen)]
    return Target(index.spec.fingerprint(), index.spec.describe(), index.root.name, tuple(hashes))


def save_state(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write a model file atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        torch.save(payload, tmp)
    return target


def load_state(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Read a model file of ``kind`` (``quality`` or ``enhancer``), one-line errors otherwise."""
    source = Path(path)
    if not source.is_file():
        raise WeightsError(f"no {kind} model at {source}")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a foreign or damaged file
        raise WeightsError(f"{source} is not a matchlens {kind} model ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != f"{FORMAT}-{kind}":
        raise WeightsError(f"{source} is not a matchlens {kind} model")
    if int(payload.get("version", 0)) > VERSION:
        raise WeightsError(f"{source} was written by a newer matchlens (format {payload.get('version')})")
    return payload


@dataclass
class QualityModel:
    """A trained quality head, its target, and the AP below which a query counts as low quality."""

    head: QualityHead
    target: Target
    low: float
    info: dict[str, Any] = field(default_factory=dict)
    net: QualityNet | None = None

    def network(self) -> QualityNet:
        """The full network (backbone loaded on first use)."""
        if self.net is None:
            self.net = QualityNet(self.head).eval()
        return self.net

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model file."""
        return save_state(path, {"format": f"{FORMAT}-quality", "version": VERSION, "head": self.head.state_dict(),
                                 "widths": list(HEAD_WIDTHS), "target": self.target.to_dict(), "low": float(self.low),
                                 "info": self.info})

    @classmethod
    def load(cls, path: str | os.PathLike, index: Index | None = None) -> "QualityModel":
        """Read a model file; with ``index``, refuse it if it was trained for another index or pipeline."""
        payload = load_state(path, "quality")
        head = QualityHead(widths=tuple(payload["widths"]))
        try:
            head.load_state_dict(payload["head"])
        except (RuntimeError, KeyError) as error:
            raise WeightsError(f"{path}: the quality head does not fit ({str(error).splitlines()[0]})") from None
        model = cls(head.eval(), Target.from_dict(payload["target"]), float(payload["low"]), dict(payload.get("info", {})))
        if index is not None:
            model.target.check(index, f"quality model {Path(path).name}")
        return model


def save_enhancer(path: str | os.PathLike, model: DnCNN, kind: str, target: Target | None,
                  info: dict[str, Any] | None = None) -> Path:
    """Write an enhancer (``target`` None: a generic one, usable with any index)."""
    return save_state(path, {"format": f"{FORMAT}-enhancer", "version": VERSION, "kind": kind, "config": model.config(),
                             "state": model.state_dict(), "target": target.to_dict() if target else None,
                             "info": info or {}})


def load_enhancer(path: str | os.PathLike, kind: str, index: Index | None = None) -> DnCNN:
    """Read an enhancer of ``kind``; with ``index``, refuse one fine-tuned for another index."""
    payload = load_state(path, "enhancer")
    if payload.get("kind") != kind:
        raise WeightsError(f"{path} is a {payload.get('kind')!r} enhancer, not {kind!r}")
    model = DnCNN(**{k: int(v) for k, v in payload["config"].items()})
    try:
        model.load_state_dict(payload["state"])
    except (RuntimeError, KeyError) as error:
        raise WeightsError(f"{path}: the enhancer weights do not fit ({str(error).splitlines()[0]})") from None
    if index is not None and payload.get("target"):
        Target.from_dict(payload["target"]).check(index, f"enhancer {Path(path).name}")
    return model.eval()
