"""The evidence a product shows for a (query, result) pair, from one of two methods.

- ``indicative``: the trained verifier (:mod:`matchlens.evidence.model`): a relevance probability
  and Grad-CAM contribution maps drawn as heatmaps on both images.
- ``spatial``: spatial verification (:mod:`matchlens.evidence.local`): RootSIFT + MAGSAC++ inliers,
  their density as heatmaps and the match lines. It needs no training, so it is the fallback.

``matchlens search --explain`` and the service's ``POST /explain`` both call
:func:`make_explainer` once and then :meth:`Explainer.explain` per pair.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from matchlens.evidence import local
from matchlens.evidence.model import EvidenceModel, explain_pair as verifier_explain_pair, load_model
from matchlens.io.images import crop_to_box

#: Longest side the images are decoded at for evidence (local features are detected at this size).
MAX_SIDE = local.MAX_SIDE


@dataclass(frozen=True)
class PairView:
    """A pair's evidence, ready to show.

    Attributes:
        png: the side-by-side overlay (query left, result right).
        score: the verifier's probability (indicative) or the number of inliers (spatial).
        caption: the score in words, e.g. ``verifier score 0.913`` or ``34 inliers of 120 tentative matches``.
        inliers, tentative: the spatial counts (None for the verifier).
    """

    png: bytes
    score: float
    caption: str
    inliers: int | None = None
    tentative: int | None = None


class Explainer:
    """Renders the evidence of (query, result) pairs with one method (see the module docstring)."""

    kind = ""
    #: Whether :meth:`explain` uses cached RootSIFT of the result (the sv reranker's cache).
    uses_local_features = False
    #: The checkpoint the evidence model came from, if any.
    source: str | None = None

    @property
    def description(self) -> str:
        """The method in a few words, for pages and ``GET /index``."""
        raise NotImplementedError

    def explain(self, query: Image.Image, target: Image.Image, box: Sequence[float] | None = None,
                target_features=None, title: str = "") -> PairView:
        """Evidence that ``target`` shows what ``query`` shows inside ``box`` (pixels of ``query``)."""
        raise NotImplementedError


class SpatialExplainer(Explainer):
    """Spatial-verification evidence: no model needed."""

    kind = "spatial"
    uses_local_features = True

    @property
    def description(self) -> str:
        return "spatial verification: RootSIFT + ratio test + MAGSAC++ homography inliers"

    def explain(self, query: Image.Image, target: Image.Image, box: Sequence[float] | None = None,
                target_features=None, title: str = "") -> PairView:
        result = local.explain_pair(query, target, box, target_features, title)
        inliers, tentative = int(result.evidence.score), result.evidence.tentative
        return PairView(result.png, float(inliers), f"{inliers} inliers of {tentative} tentative matches",
                        inliers, tentative)


class IndicativeExplainer(Explainer):
    """The trained verifier's evidence on the query box (the verifier sees only the box's crop)."""

    kind = "indicative"

    def __init__(self, model: EvidenceModel, source: str | None = None) -> None:
        self.model = model
        self.source = source
        # One pair at a time: Grad-CAM runs backward passes through one shared network, and the
        # network already uses every core for one pair.
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        c = self.model.config
        name = f" {Path(self.source).name}" if self.source else ""
        return f"indicative verifier{name} ({c.arch}, grid {c.rows}x{c.cols}, {c.source} patches)"

    def explain(self, query: Image.Image, target: Image.Image, box: Sequence[float] | None = None,
                target_features=None, title: str = "") -> PairView:
        crop = crop_to_box(query, box) if box is not None else query
        with self._lock:
            explanation = verifier_explain_pair(crop, target, self.model, max_side=MAX_SIDE)
            png = explanation.png_bytes()
        return PairView(png, float(explanation.score), f"verifier score {explanation.score:.3f}")


def make_explainer(model: EvidenceModel | str | os.PathLike | None = None) -> Explainer:
    """The verifier's explainer when ``model`` (a model or a checkpoint path) is given, else the
    spatial one. A bad checkpoint raises :class:`~matchlens.errors.WeightsError` (one line) now."""
    if model is None:
        return SpatialExplainer()
    source = None if isinstance(model, EvidenceModel) else str(model)
    return IndicativeExplainer(load_model(model), source)
