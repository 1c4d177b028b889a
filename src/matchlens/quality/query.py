"""What ``matchlens search`` and the HTTP service do with a quality model: warn when a query's
predicted quality is low, and enhance it when asked (``--enhance``).

The model is the one given (``--quality MODEL``) or the index's own (``IDX/quality/model.pt``,
written by ``matchlens train-quality``); the enhancers are the ``denoise.pt`` / ``sr.pt`` files
beside it. Without a model and with ``--enhance none`` nothing here runs, so a plain search pays
nothing for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from matchlens.errors import ImageLoadError
from matchlens.pipeline import Index
from matchlens.quality.auto import Choice, choose
from matchlens.quality.dncnn import DnCNN
from matchlens.quality.predict import Assessment, assess
from matchlens.quality.store import ENHANCER_KINDS, QualityModel, find_model, load_enhancer

__all__ = ["SearchQuality", "load_enhancers", "open_model", "prepare_query"]


@dataclass
class SearchQuality:
    """The image to search with (None: the query as given), the assessment and the enhancement."""

    image: Image.Image | None
    assessment: Assessment | None
    choice: Choice | None

    @property
    def warning(self) -> str | None:
        return self.assessment.warning() if self.assessment is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {"assessment": self.assessment.to_dict() if self.assessment else None,
                "enhance": self.choice.to_dict() if self.choice else None, "warning": self.warning}


def open_model(index: Index, given: str | os.PathLike | None = None) -> tuple[QualityModel | None, Path | None]:
    """The quality model for ``index`` (refused if trained for another index) and its folder."""
    path = find_model(index, given)
    if path is None:
        return None, None
    return QualityModel.load(path, index), path.parent


def load_enhancers(index: Index, folder: Path | None) -> dict[str, DnCNN]:
    """The enhancers stored in ``folder`` (each refused if fine-tuned for another index)."""
    if folder is None:
        return {}
    return {kind: load_enhancer(folder / f"{kind}.pt", kind, index)
            for kind in ENHANCER_KINDS if (folder / f"{kind}.pt").is_file()}


def prepare_query(index: Index, source: Any, box: Sequence[float] | None, enhance: str = "none",
                  model_path: str | os.PathLike | None = None) -> SearchQuality:
    """Assess the query with the index's quality model (if any) and apply ``enhance``."""
    model, folder = open_model(index, model_path)
    if model is None and enhance == "none":
        return SearchQuality(None, None, None)
    image = index.pipeline.encoder.load(source, box)
    assessment = assess(image, model) if model is not None else None
    if enhance == "none":
        return SearchQuality(None, assessment, None)
    choice = choose(image, enhance, model, load_enhancers(index, folder))
    return SearchQuality(choice.image if choice.applied != "none" else None, assessment, choice)


_SERVED: dict[tuple, tuple[QualityModel, Path]] = {}


def service_quality(index: Index, source: Any, box: Sequence[float] | None) -> dict[str, Any] | None:
    """The HTTP service's quality check of an uploaded query: the assessment (with its warning) when
    the index has a quality model, else None. The model is loaded once per model file and index
    generation."""
    from matchlens.quality.store import default_model_path

    path = default_model_path(index)
    if not path.is_file():
        return None
    key = (str(path), path.stat().st_mtime_ns, index.generation)
    if key not in _SERVED:
        _SERVED.clear()
        _SERVED[key] = (QualityModel.load(path, index), path.parent)
    model, _ = _SERVED[key]
    image = index.pipeline.encoder.load(source, box)
    try:
        return assess(image, model).to_dict()
    except ImageLoadError as error:  # too small or blank for the quality net: the search itself went through
        return {"predicted_ap": None, "low": True, "issues": [str(error)], "warning": str(error)}
