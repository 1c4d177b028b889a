"""Region weights λ per category by PS-Net's coordinate ascent on the plagiarism loss (P1d, §3.2).

For a triplet (I, I⁺, I⁻) — a query, a copy of it (the positive) and an image that is not (the
negative) — with region descriptors f_r (L2-normalised) and D_r^{I,J} = ‖f_r(I) − f_r(J)‖₂:

    L'_tri(I, I⁺, I⁻) = Σ_r max(D_r^{I,I⁺} − D_r^{I,I⁻} + m, 0) · λ_r                 (eq. 4)
    α_tri            = avg_r D_r^{I,I⁺} / max_r D_r^{I,I⁺}                           (eq. 5)
    L_pla            = Σ_n L'_tri(I_n, I_n⁺, I_n⁻) · α_tri,n                          (eq. 6)

α_tri is small when the positive differs from the query in one region only (the copy's edited
region) and close to 1 when it differs evenly, so edited-region copies weigh less (the paper:
"the loss of samples with large feature difference in a single region and small difference in
other regions will be lower"). A positive identical to its query (max = 0) gets α = 1.

Coordinate ascent (the paper's schedule): every λ_r starts at 1, normalised to sum 1; an epoch
visits the regions in order and tries λ_r + Δ and λ_r − Δ (clipped at 0), each followed by
normalisation to sum 1, keeping the better one when it lowers L_pla; Δ = 0.1 for epochs 1–40,
0.05 for 41–60, 0.01 for 61–80. Categories are fitted separately (and ``default`` on all
triplets). The margin m is not given in the paper; 0.1 here (descriptor distances lie in [0, 2]).

Objectives (``OBJECTIVES``; ``fit-regions --objective``):

* ``paper`` (default): eq. 4 as printed, one hinge per region. L_pla is then *linear* in λ, so
  its minimum over the simplex is a vertex: with enough epochs λ concentrates on the single
  region whose hinge terms are smallest (one-hot), and the ranking then rests on that region
  alone. Measured in benchmarks/copies.py (a).
* ``pooled``: the hinge on the λ-weighted distances, max(Σ_r λ_r (D_r^{I,I⁺} − D_r^{I,I⁻}) + m, 0),
  still α_tri-weighted and fitted by the same coordinate ascent. Piecewise linear and convex:
  a triplet stops counting once the weighted distances separate it by m, so λ spreads over the
  regions that separate copies from non-copies instead of collapsing onto one.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from matchlens.errors import ConfigError, SourceError
from matchlens.registry import Registry
from matchlens.regional.kind import RegionalKind
from matchlens.regional.scoring import DIFFERS_BELOW, uniform

__all__ = ["FitResult", "OBJECTIVES", "Triplets", "alpha_tri", "coordinate_ascent", "fit_regions", "hinge_terms",
           "plagiarism_loss", "pooled_loss", "read_pairs", "STEP_SCHEDULE"]

STEP_SCHEDULE = ((0, 0.1), (40, 0.05), (60, 0.01))  # (first epoch, Δλ): the paper's 0.1 → 0.05 → 0.01
EPOCHS = 80
MARGIN = 0.1
COLUMNS = ("query", "positive", "negative")


@dataclass
class Triplets:
    """Region descriptors of triplets: each (N, R, d), and each triplet's category."""

    query: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    categories: list[str | None]

    def select(self, category: str | None) -> "Triplets":
        """The triplets of one category (None: all)."""
        if category is None:
            return self
        keep = [i for i, c in enumerate(self.categories) if c == category]
        return Triplets(self.query[keep], self.positive[keep], self.negative[keep], [category] * len(keep))


def hinge_terms(t: Triplets, margin: float = MARGIN) -> np.ndarray:
    """(N, R): max(D_r^{I,I⁺} − D_r^{I,I⁻} + m, 0) per triplet and region (eq. 2 and 4)."""
    d_pos = np.linalg.norm(t.query - t.positive, axis=-1)
    d_neg = np.linalg.norm(t.query - t.negative, axis=-1)
    return np.maximum(d_pos - d_neg + margin, 0.0)


def alpha_tri(t: Triplets) -> np.ndarray:
    """(N,): avg_r D_r^{I,I⁺} / max_r D_r^{I,I⁺} (eq. 5); 1 where the positive equals the query."""
    d_pos = np.linalg.norm(t.query - t.positive, axis=-1)
    top = d_pos.max(axis=1)
    return np.divide(d_pos.mean(axis=1), top, out=np.ones(len(top)), where=top > 0)


def plagiarism_loss(weights: np.ndarray, hinge: np.ndarray, alpha: np.ndarray) -> float:
    """L_pla (eq. 6) for λ = ``weights``."""
    return float(alpha @ (hinge @ weights))


def pooled_loss(weights: np.ndarray, gaps: np.ndarray, alpha: np.ndarray, margin: float = MARGIN) -> float:
    """Σ_n α_n · max(Σ_r λ_r (D_r^{I,I⁺} − D_r^{I,I⁻}) + m, 0): ``gaps`` is (N, R) of D⁺ − D⁻."""
    return float(alpha @ np.maximum(gaps @ weights + margin, 0.0))


def distance_gaps(t: Triplets) -> np.ndarray:
    """(N, R): D_r^{I,I⁺} − D_r^{I,I⁻} per triplet and region."""
    return np.linalg.norm(t.query - t.positive, axis=-1) - np.linalg.norm(t.query - t.negative, axis=-1)


Loss = Callable[[np.ndarray], float]
#: objective name → (triplets, margin) → L(λ); ``fit-regions --objective`` names one
OBJECTIVES: Registry[Callable[[Triplets, float], Loss]] = Registry("region-weight objective")


@OBJECTIVES.register("paper")
def paper_objective(t: Triplets, margin: float) -> Loss:
    """PS-Net eq. 4–6: one hinge per region, weighted by λ_r (linear in λ)."""
    hinge, alpha = hinge_terms(t, margin), alpha_tri(t)
    return lambda weights: plagiarism_loss(weights, hinge, alpha)


@OBJECTIVES.register("pooled")
def pooled_objective(t: Triplets, margin: float) -> Loss:
    """One hinge on the λ-weighted distances (convex, piecewise linear in λ), α_tri-weighted."""
    gaps, alpha = distance_gaps(t), alpha_tri(t)
    return lambda weights: pooled_loss(weights, gaps, alpha, margin)


def _step(epoch: int) -> float:
    return [delta for start, delta in STEP_SCHEDULE if epoch >= start][-1]


def coordinate_ascent(hinge: np.ndarray, alpha: np.ndarray, epochs: int = EPOCHS,
                      loss_of: Loss | None = None) -> tuple[np.ndarray, list[float]]:
    """λ minimising L_pla (eq. 6 on ``hinge``/``alpha``, or ``loss_of`` when given) by the paper's
    coordinate ascent; returns λ and the loss after each epoch."""
    regions = hinge.shape[1]
    loss_fn: Loss = loss_of or (lambda weights: plagiarism_loss(weights, hinge, alpha))
    lam = uniform(regions).astype(np.float64)
    loss = loss_fn(lam)
    history = []
    for epoch in range(epochs):
        delta = _step(epoch)
        for r in range(regions):
            best, best_loss = lam, loss
            for sign in (1.0, -1.0):
                trial = lam.copy()
                trial[r] = max(trial[r] + sign * delta, 0.0)
                if trial.sum() <= 0:
                    continue
                trial /= trial.sum()
                trial_loss = loss_fn(trial)
                if trial_loss < best_loss - 1e-12:
                    best, best_loss = trial, trial_loss
            lam, loss = best, best_loss
        history.append(loss)
    return lam, history


@dataclass
class FitResult:
    """Fitted λ per category (``default``: all triplets) with the losses before and after."""

    regions: list[str]
    layout: str
    kind: str
    weights: dict[str, np.ndarray]
    loss_uniform: dict[str, float]
    loss_fitted: dict[str, float]
    triplets: dict[str, int]
    margin: float = MARGIN
    epochs: int = EPOCHS
    objective: str = "paper"
    unresolved: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The weights file (``lambdas.json``) ``--weights`` reads."""
        def named(w: np.ndarray) -> dict[str, float]:
            return {r: round(float(v), 6) for r, v in zip(self.regions, w)}

        return {
            "layout": self.layout, "kind": self.kind, "default": named(self.weights["default"]),
            "categories": {c: named(w) for c, w in self.weights.items() if c != "default"},
            "differs_below": DIFFERS_BELOW,
            "fit": {"method": "PS-Net coordinate ascent on L_pla (alpha_tri-weighted)", "objective": self.objective,
                    "margin": self.margin,
                    "epochs": self.epochs, "steps": [list(s) for s in STEP_SCHEDULE], "triplets": self.triplets,
                    "loss_uniform": {c: round(v, 6) for c, v in self.loss_uniform.items()},
                    "loss_fitted": {c: round(v, 6) for c, v in self.loss_fitted.items()}},
        }


def fit_regions(kind: RegionalKind, triplets: Triplets, margin: float = MARGIN, epochs: int = EPOCHS,
                objective: str = "paper") -> FitResult:
    """λ for all triplets (``default``) and for each category they name, minimising ``objective``."""
    make_loss = OBJECTIVES.get(objective)
    groups: list[str | None] = [None, *sorted({c for c in triplets.categories if c is not None})]
    result = FitResult(kind.names, kind.layout, kind.name, {}, {}, {}, {}, margin, epochs, objective)
    for group in groups:
        subset = triplets.select(group)
        loss_of = make_loss(subset, margin)
        lam, _ = coordinate_ascent(hinge_terms(subset, margin), alpha_tri(subset), epochs, loss_of)
        key = group or "default"
        result.weights[key] = lam
        result.loss_uniform[key] = loss_of(uniform(len(kind.names)).astype(np.float64))
        result.loss_fitted[key] = loss_of(lam)
        result.triplets[key] = len(subset.categories)
    return result


def read_pairs(kind: RegionalKind, path: str | os.PathLike, category_column: str | None = None,
               progress: Callable[[int, str], Callable[[int], None]] | None = None) -> Triplets:
    """Triplets of a CSV with columns query, positive, negative (and ``category_column``).

    A path is an indexed image (its stored descriptors) when the index holds it — as written,
    relative to the CSV's folder, or by file name when that is unique — else any image file
    (described now). One-line errors for a missing column, an empty file or a missing image.
    ``progress``: a factory ``(total, label) → advance`` (a progress bar), opened once the file is read."""
    rows = _csv_rows(path, category_column)
    resolve = _Resolver(kind, Path(path).resolve().parent)
    advance = progress(len(rows), "triplets") if progress else None
    parts: list[list[np.ndarray]] = [[], [], []]
    categories: list[str | None] = []
    for line, row in rows:
        for column, part in zip(COLUMNS, parts):
            part.append(resolve(row[column], f"{os.fspath(path)}, line {line}, {column}"))
        categories.append(row[category_column].strip() or None if category_column else None)
        if advance:
            advance(1)
    stacked = [np.stack(p) for p in parts]
    return Triplets(stacked[0], stacked[1], stacked[2], categories)


def _csv_rows(path: str | os.PathLike, category_column: str | None) -> list[tuple[int, dict[str, str]]]:
    where = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or []]
            reader.fieldnames = header
            rows = [(i + 2, {k: (v or "") for k, v in row.items() if k is not None}) for i, row in enumerate(reader)]
    except OSError as exc:
        raise SourceError(f"cannot read pairs file '{where}': {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"pairs file '{where}' is not a readable CSV: {exc}") from None
    wanted = [*COLUMNS, *([category_column] if category_column else [])]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ConfigError(f"pairs file '{where}' lacks column(s) {', '.join(missing)} (it has: {', '.join(header) or 'none'})")
    if not rows:
        raise SourceError(f"pairs file '{where}' has no triplets")
    return rows


class _Resolver:
    """Path text → (R, d): stored descriptors of indexed images, else described from the file."""

    def __init__(self, kind: RegionalKind, base: Path) -> None:
        self.kind, self.base = kind, base
        self.rows: dict[str, int] = {}
        names: dict[str, list[int]] = {}
        for entry in kind.store.entries:
            if entry.row is not None:
                self.rows[entry.path] = entry.row
                names.setdefault(os.path.basename(entry.path), []).append(entry.row)
        self.unique = {name: rows[0] for name, rows in names.items() if len(rows) == 1}

    def __call__(self, text: str, where: str) -> np.ndarray:
        text = text.strip()
        if not text:
            raise ConfigError(f"{where}: empty path")
        for candidate in _candidates(text, self.base):
            if candidate in self.rows:
                return self.kind.vectors(self.rows[candidate])
        if os.path.basename(text) == text and text in self.unique:
            return self.kind.vectors(self.unique[text])
        for candidate in _candidates(text, self.base):
            if os.path.isfile(candidate):
                return self.kind.query_code(candidate)
        raise SourceError(f"{where}: '{text}' is neither an indexed image nor a file")


def _candidates(text: str, base: Path) -> Sequence[str]:
    expanded = os.path.expanduser(text)
    if os.path.isabs(expanded):
        return [expanded, os.path.realpath(expanded)]
    return [os.path.abspath(expanded), str(base / expanded), os.path.realpath(base / expanded)]
