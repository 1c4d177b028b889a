"""Where an index's quality model and enhancers live, without importing PyTorch.

``matchlens search`` and the HTTP service ask on every query whether the index has a quality
model; answering that must not load torch (1–3 s) when it has none, so these paths live apart
from :mod:`matchlens.quality.store`, which loads and saves the models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["FOLDER", "default_model_path", "enhancer_path", "find_model", "quality_applies"]

FOLDER = "quality"  # inside the index folder


def default_model_path(index: Any) -> Path:
    """Where ``matchlens train-quality`` stores an index's quality model."""
    return Path(index.root) / FOLDER / "model.pt"


def enhancer_path(index: Any, kind: str) -> Path:
    """Where ``matchlens train-quality --enhancers`` stores an index's enhancer of ``kind``."""
    return Path(index.root) / FOLDER / f"{kind}.pt"


def find_model(index: Any, given: str | os.PathLike | None = None) -> Path | None:
    """The quality model to use: ``given``, else the index's own if it has one, else None."""
    if given is not None:
        return Path(given)
    path = default_model_path(index)
    return path if path.is_file() else None


def quality_applies(index: Any, enhance: str = "none", given: str | os.PathLike | None = None) -> bool:
    """Whether a query needs the quality step: an enhancement was asked for or a model is there."""
    return enhance != "none" or find_model(index, given) is not None
