"""Late-fusion operators: combine the similarities of one candidate under several descriptors.

The operators of the Kapture localisation pipeline (P1c), after Csurka & Clinchant, "An empirical
study of fusion operators for multimodal image retrieval" (CBMI 2012). For descriptor i with
similarity s_i (normalised to [0, 1], see :mod:`matchlens.fusion.normalise`) and weights α_i
(Σα_i = 1, default α_i = 1/n):

    ghm         generalised harmonic mean  M = f⁻¹( Σ_i f(α_i·s_i) / n ),  f(x) = 1/(γ + x),  γ = 0.5
                (so M = 1 / (Σ_i 1/(γ + α_i·s_i) / n) − γ)
    mean_power  weighted mean and power    γ·Σ α_i·s_i + (1 − γ)·Π s_i^{α_i},  γ = 0.5
    min_max     min & max                  (1 − α)·max_i s_i + α·min_i s_i,   α = 0.5
    min, max    min_i s_i, max_i s_i
    mean        Σ α_i·s_i
    round_robin the first of every descriptor's ranking, then every second, ...: a candidate's
                score is 1 − p/(n·m), p = min_i (rank_i·n + i) over descriptors i (m candidates)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import numpy as np

from matchlens.components import Component, in_range, number, positive_float
from matchlens.errors import ConfigError
from matchlens.registry import Registry

__all__ = ["FUSIONS", "Fusion", "normalised_weights"]


def normalised_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """Weights α_i scaled to sum 1 (equal weights 1/n when none are given)."""
    if weights is None or len(weights) == 0:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, np.float64)
    if len(w) != n or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(f"fusion weights must be {n} non-negative numbers with a positive sum, got {list(weights)}")
    return w / w.sum()


class Fusion(Component, ABC):
    """An operator with validated parameters: ``fuse(S, weights)`` with S of shape (descriptors, candidates).

    Every parameter is a finite number (checked for all operators); :meth:`validate` adds ranges.
    """

    kind: ClassVar[str] = "fusion"

    def __init__(self, **params: Any) -> None:
        config = self.resolve(params)
        for key, value in config.items():
            number(value, f"{self.label()}: {key}")
        super().__init__(**params)

    def fuse(self, scores: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
        """Fused score (m,) of candidates whose per-descriptor scores are the columns of ``scores`` (n, m)."""
        scores = np.asarray(scores, np.float64)
        if scores.ndim != 2 or scores.shape[0] < 1:
            raise ValueError("fusion expects a (descriptors, candidates) score array")
        return self._fuse(scores, normalised_weights(weights, scores.shape[0]))

    @abstractmethod
    def _fuse(self, s: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        ...


FUSIONS: Registry[type[Fusion]] = Registry("fusion operator")


@FUSIONS.register("ghm")
class GeneralisedHarmonicMean(Fusion):
    defaults: ClassVar[dict[str, Any]] = {"gamma": 0.5}

    def validate(self) -> None:
        self.check("gamma", positive_float)

    def _fuse(self, s: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        gamma = self.params["gamma"]
        # Scores below -γ/α_i would make f negative or infinite: such a descriptor says "no match".
        x = np.maximum(alpha[:, None] * s, 0.0)
        return 1.0 / (1.0 / (gamma + x)).mean(axis=0) - gamma


@FUSIONS.register("mean_power")
class MeanAndPower(Fusion):
    defaults: ClassVar[dict[str, Any]] = {"gamma": 0.5}

    def validate(self) -> None:
        self.check("gamma", in_range, 0.0, 1.0)

    def _fuse(self, s: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        gamma = self.params["gamma"]
        power = np.prod(np.maximum(s, 0.0) ** alpha[:, None], axis=0)  # s^α needs s >= 0
        return gamma * (alpha[:, None] * s).sum(axis=0) + (1.0 - gamma) * power


@FUSIONS.register("min_max")
class MinAndMax(Fusion):
    defaults: ClassVar[dict[str, Any]] = {"alpha": 0.5}

    def validate(self) -> None:
        self.check("alpha", in_range, 0.0, 1.0)

    def _fuse(self, s: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        a = self.params["alpha"]
        return (1.0 - a) * s.max(axis=0) + a * s.min(axis=0)


@FUSIONS.register("min")
class Minimum(Fusion):
    def _fuse(self, s: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        return s.min(axis=0)


@FUSIONS.register("max")
class Maximum(Fusion):
    def _fuse(self, s: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        return s.max(axis=0)


@FUSIONS.register("mean")
class Mean(Fusion):
    def _fuse(self, s: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        return (alpha[:, None] * s).sum(axis=0)


@FUSIONS.register("round_robin")
class RoundRobin(Fusion):
    def _fuse(self, s: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        n, m = s.shape
        ranks = np.empty((n, m), np.int64)
        for i in range(n):  # rank of every candidate under descriptor i (ties: candidate order)
            ranks[i, np.argsort(-s[i], kind="stable")] = np.arange(m)
        position = (ranks * n + np.arange(n)[:, None]).min(axis=0)
        return 1.0 - position / (n * m)
