"""Indicative re-ranking: re-score the top ``k`` of a global search with the evidence verifier.

Each (query, result) pair is scored by a verifier trained with ``matchlens train-verifier``
(:mod:`matchlens.evidence`). With ``prf=avg`` or ``prf=max`` (indicative pseudo-relevance
feedback, P0 §3.4) the query contribution maps of the ``prf_k`` best-scored results are pooled
into a mask that re-weights the query image, and the top ``k`` are scored again with it.

Scores: for a shortlist whose largest score is ``top``, a verified entry scores
``max(top, 1) + p`` with ``p`` the verifier's probability, so the re-scored top ``k`` (ordered by
``p``) stays ahead of the rest, which keeps its scores and order. Images that cannot be read
keep their score and follow the verified ones.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from matchlens.errors import ConfigError, MatchlensError
from matchlens.components import in_range, one_of, positive_int
from matchlens.rerank.base import RERANKERS, QueryInput, Reranker, RerankContext, Shortlist
from matchlens.evidence.pairs import load_small, shrink

__all__ = ["IndicativeReranker"]

log = logging.getLogger(__name__)
_PRF = ("none", "avg", "max")


@RERANKERS.register("indicative")
class IndicativeReranker(Reranker):
    """Re-score the top ``k`` by the indicative verifier.

    Parameters: ``k`` (entries to verify), ``model`` (checkpoint path, required), ``prf``
    (``none``, ``avg`` or ``max``), ``prf_k`` (results pooled for PRF), ``floor`` (weight left
    on unmatched query pixels by PRF), ``side`` (longest side images are decoded at).

    After :meth:`rerank`: ``last_scores`` maps each verified row to its probability and
    ``last_query_mask`` holds the PRF mask on the grid (None without PRF).
    """

    needs_image = True
    defaults = {"k": 20, "model": "", "prf": "none", "prf_k": 3, "floor": 0.2, "side": 256}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.last_scores: dict[int, float] = {}
        self.last_query_mask: np.ndarray | None = None

    def validate(self) -> None:
        """One-line ConfigError for any parameter out of range."""
        for key in ("k", "prf_k", "side"):
            self.check(key, positive_int)
        model = self.config["model"]
        if not isinstance(model, str) or not model:
            raise ConfigError("indicative: model=PATH is required (a checkpoint from 'matchlens train-verifier')")
        if not Path(model).expanduser().is_file():
            raise ConfigError(f"indicative: model {model} does not exist")
        self.check("prf", one_of, _PRF)
        self.check("floor", in_range, 0.0, 1.0)

    @property
    def model(self):
        """The loaded evidence model (memoised by checkpoint path and mtime)."""
        from matchlens.evidence.model import load_model

        return load_model(self.config["model"])

    def rerank(self, query: QueryInput, shortlist: Shortlist, ctx: RerankContext) -> Shortlist:
        """Verify the first ``k`` entries and reorder them; the rest is returned unchanged."""
        self.last_scores, self.last_query_mask = {}, None
        if query.image is None or len(shortlist) == 0:
            if query.image is None:
                log.warning("indicative re-ranking skipped: the query has no image")
            return shortlist
        head = shortlist.head(self.config["k"])
        rows, images = self._targets(ctx, head.rows.tolist())
        if rows:
            probs = self.score_images(query.image, images)
            self.last_scores = dict(zip(rows, probs.tolist()))
        return self._reorder(shortlist, len(head))

    def score_images(self, query: Image.Image, targets: list[Image.Image]) -> np.ndarray:
        """Verifier probabilities of ``query`` against each target, with PRF when configured."""
        from matchlens.evidence.prf import pool_query_maps, reweight_query  # deferred: torch

        model, side = self.model, self.config["side"]
        query = shrink(query, side)
        probs = model.score([query] * len(targets), targets)
        if self.config["prf"] == "none":
            return probs
        best = np.argsort(-probs, kind="stable")[: self.config["prf_k"]]
        _, c_q, _, _ = model.explain_grids([query] * len(best), [targets[i] for i in best])
        self.last_query_mask = pool_query_maps(list(c_q), self.config["prf"])
        refined = reweight_query(query, self.last_query_mask, float(self.config["floor"]))
        return model.score([refined] * len(targets), targets)

    def _targets(self, ctx: RerankContext, rows: list[int]) -> tuple[list[int], list[Image.Image]]:
        """The readable database images among ``rows`` (unreadable ones are logged and left out)."""
        kept, images = [], []
        for row in rows:
            try:
                images.append(load_small(ctx.image_path(row), self.config["side"]))
                kept.append(row)
            except (MatchlensError, OSError) as error:
                log.warning("indicative re-ranking skips database row %d: %s", row, error)
        return kept, images

    def _reorder(self, shortlist: Shortlist, k: int) -> Shortlist:
        rows, scores = shortlist.rows, shortlist.scores.astype(np.float64)
        verified = np.array([int(r) in self.last_scores for r in rows[:k]], bool)
        probs = np.array([self.last_scores.get(int(r), 0.0) for r in rows[:k]])
        order = np.flatnonzero(verified)[np.argsort(-probs[verified], kind="stable")]
        base = max(1.0, float(scores.max()))
        new_rows = np.concatenate([rows[order], rows[:k][~verified], rows[k:]])
        new_scores = np.concatenate([base + probs[order], scores[:k][~verified], scores[k:]])
        return Shortlist(new_rows, new_scores.astype(np.float32))
