"""Class-aware samplers (BBN, P1k): which class an example or a training tuple is drawn from.

Each sampler turns per-class counts ``N_i`` into class probabilities ``P_i``; an example of the
chosen class is then drawn uniformly. The registry :data:`SAMPLERS` is the only list of names:

* ``uniform`` - every example equally likely, so ``P_i ∝ N_i`` (the data's own distribution);
* ``balanced`` - every class equally likely, ``P_i = 1/C`` (class-balanced re-sampling, "RS");
* ``reversed`` - BBN's reversed sampler, ``P_i ∝ w_i = N_max / N_i``: the rarer a class, the more
  often it is drawn.

``matchlens train --sampler reversed`` draws the tuples' queries this way, with the landmark
(group) as the class, so landmarks with few images are drawn more often.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from matchlens.errors import ConfigError
from matchlens.registry import Registry

__all__ = ["SAMPLERS", "class_probabilities", "draw", "example_probabilities"]

ClassWeights = Callable[[np.ndarray], np.ndarray]
SAMPLERS: Registry[ClassWeights] = Registry("sampler")


@SAMPLERS.register("uniform")
def _uniform(counts: np.ndarray) -> np.ndarray:
    """Every example equally likely (the data's own class distribution)."""
    return counts.astype(np.float64)


@SAMPLERS.register("balanced")
def _balanced(counts: np.ndarray) -> np.ndarray:
    """Every class equally likely (class-balanced re-sampling)."""
    return np.ones(len(counts), np.float64)


@SAMPLERS.register("reversed")
def _reversed(counts: np.ndarray) -> np.ndarray:
    """BBN's reversed sampler: P_i ∝ N_max / N_i (rare classes drawn most)."""
    counts = counts.astype(np.float64)
    return counts.max() / counts


def class_probabilities(counts: np.ndarray | list[int], sampler: str) -> np.ndarray:
    """``P_i`` for classes with ``counts`` (each at least 1) under ``sampler``; sums to 1."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or len(counts) == 0 or (counts < 1).any():
        raise ConfigError("class counts must be a non-empty list of positive numbers")
    weights = SAMPLERS.get(sampler)(counts)
    return weights / weights.sum()


def example_probabilities(labels: np.ndarray | list[int], sampler: str) -> np.ndarray:
    """Probability of drawing each example: its class's ``P_i`` shared equally by the class's
    examples. ``labels`` are any integers (a negative label is a class of its own example)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ConfigError("no examples to sample from")
    keys = np.where(labels < 0, -1 - np.arange(len(labels)) - (labels.max(initial=0) + 1), labels)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    per_class = class_probabilities(counts, sampler)
    return per_class[inverse] / counts[inverse]


def draw(labels: np.ndarray | list[int], size: int, sampler: str, rng: np.random.Generator) -> np.ndarray:
    """``size`` example indices drawn with replacement under ``sampler`` (``uniform``: as
    ``rng.choice(n, size)`` would)."""
    if sampler == "uniform":  # keep the plain draw, so existing seeds give the same sequence
        return rng.choice(len(labels), size, replace=True)
    return rng.choice(len(labels), size, replace=True, p=example_probabilities(labels, sampler))
