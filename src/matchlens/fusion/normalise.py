"""Per-query score normalisation before fusion: the descriptors' raw similarities live on
different scales (a CNN cosine of a true match is often 0.6-0.8, a BoW cosine 0.05-0.3, an ASMK
similarity lower still), so each descriptor's scores over the fused candidate set are mapped to
[0, 1] first.

    minmax  (s − min) / (max − min) over the candidates (default; all 0 when max = min)
    max     max(s, 0) / max over the candidates (keeps 0 as "no similarity")
    rank    1 − r / m for the candidate ranked r (0-based) of m: only the order counts
    none    max(s, 0): the raw similarities, clipped at 0 so every operator is defined
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from matchlens.registry import Registry

__all__ = ["NORMALISERS", "normalise"]

Normaliser = Callable[[np.ndarray], np.ndarray]
NORMALISERS: Registry[Normaliser] = Registry("score normalisation")


@NORMALISERS.register("minmax")
def minmax(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    low, high = (s.min(), s.max()) if len(s) else (0.0, 0.0)
    return (s - low) / (high - low) if high > low else np.zeros_like(s)


@NORMALISERS.register("max")
def by_max(scores: np.ndarray) -> np.ndarray:
    s = np.maximum(np.asarray(scores, np.float64), 0.0)
    top = s.max() if len(s) else 0.0
    return s / top if top > 0 else np.zeros_like(s)


@NORMALISERS.register("rank")
def by_rank(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    out = np.empty_like(s)
    out[np.argsort(-s, kind="stable")] = 1.0 - np.arange(len(s)) / max(len(s), 1)
    return out


@NORMALISERS.register("none")
def raw(scores: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(scores, np.float64), 0.0)


def normalise(scores: np.ndarray, method: str = "minmax") -> np.ndarray:
    """``scores`` (m,) of one descriptor over the candidates, mapped by ``method``."""
    return NORMALISERS.get(method)(scores)
