"""Late fusion: each operator and normalisation on a hand-computed example, and the expression syntax."""

from __future__ import annotations

import math

import numpy as np
import pytest

from matchlens.errors import ConfigError
from matchlens.fusion import FUSIONS, normalise, normalised_weights, parse_fusion

# Two descriptors (rows) scoring two candidates (columns), already in [0, 1].
S = np.array([[0.8, 0.2],
              [0.4, 0.6]])


def fuse(name: str, weights=None, **params) -> np.ndarray:
    return FUSIONS.get(name)(**params).fuse(S, weights)


def test_generalised_harmonic_mean():
    # α = 1/2, γ = 0.5: x = α·s; M = 1 / mean(1/(γ + x)) − γ
    c0 = 1 / ((1 / 0.9 + 1 / 0.7) / 2) - 0.5   # x = 0.4, 0.2
    c1 = 1 / ((1 / 0.6 + 1 / 0.8) / 2) - 0.5   # x = 0.1, 0.3
    assert fuse("ghm") == pytest.approx([c0, c1])
    assert fuse("ghm") == pytest.approx([0.2875, 0.185714], abs=1e-6)
    # weights 0.75 / 0.25: x = (0.6, 0.1) and (0.15, 0.15)
    assert fuse("ghm", [3, 1]) == pytest.approx([1 / ((1 / 1.1 + 1 / 0.6) / 2) - 0.5, 0.15])


def test_weighted_mean_and_power():
    # γ·Σα_i s_i + (1−γ)·Π s_i^α_i with α = 1/2, γ = 0.5
    assert fuse("mean_power") == pytest.approx([0.5 * 0.6 + 0.5 * math.sqrt(0.32), 0.5 * 0.4 + 0.5 * math.sqrt(0.12)])
    assert fuse("mean_power", gamma=1.0) == pytest.approx([0.6, 0.4])       # the mean alone
    assert fuse("mean_power", gamma=0.0) == pytest.approx([math.sqrt(0.32), math.sqrt(0.12)])  # the power alone


def test_min_and_max_min_max_mean():
    assert fuse("min_max") == pytest.approx([0.5 * 0.8 + 0.5 * 0.4, 0.5 * 0.6 + 0.5 * 0.2])
    assert fuse("min_max", alpha=0.25) == pytest.approx([0.75 * 0.8 + 0.25 * 0.4, 0.75 * 0.6 + 0.25 * 0.2])
    assert fuse("min") == pytest.approx([0.4, 0.2])
    assert fuse("max") == pytest.approx([0.8, 0.6])
    assert fuse("mean") == pytest.approx([0.6, 0.4])
    assert fuse("mean", [1, 3]) == pytest.approx([0.5, 0.5])


def test_round_robin_interleaves_the_rankings():
    # descriptor 0 ranks c0 first, descriptor 1 ranks c1 first: order c0 (0·2+0), c1 (0·2+1)
    assert fuse("round_robin") == pytest.approx([1.0, 0.75])
    three = np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.9]])
    # interleaved: d0's first (c0), d1's first (c2), d0's second (c1)
    fused = FUSIONS.get("round_robin")().fuse(three)
    assert np.argsort(-fused).tolist() == [0, 2, 1]


def test_weights_are_normalised_and_checked():
    assert normalised_weights(None, 4) == pytest.approx([0.25] * 4)
    assert normalised_weights([2, 6], 2) == pytest.approx([0.25, 0.75])
    with pytest.raises(ConfigError):
        normalised_weights([1, -1], 2)
    with pytest.raises(ConfigError):
        normalised_weights([1], 2)


def test_operator_parameters_are_validated():
    with pytest.raises(ConfigError, match="gamma"):
        FUSIONS.get("mean_power")(gamma=2)
    with pytest.raises(ConfigError, match="no parameter"):
        FUSIONS.get("min")(alpha=1)
    with pytest.raises(ConfigError, match="unknown fusion operator"):
        FUSIONS.get("median")


def test_normalisations():
    s = np.array([0.2, 0.6, 0.4, -0.2])
    assert normalise(s, "minmax") == pytest.approx([0.5, 1.0, 0.75, 0.0])
    assert normalise(s, "max") == pytest.approx([1 / 3, 1.0, 2 / 3, 0.0])
    assert normalise(s, "rank") == pytest.approx([0.5, 1.0, 0.75, 0.25])
    assert normalise(s, "none") == pytest.approx([0.2, 0.6, 0.4, 0.0])
    assert normalise(np.array([0.3, 0.3]), "minmax") == pytest.approx([0.0, 0.0])  # no information


def test_fusion_expressions():
    spec = parse_fusion("cnn+asmk")
    assert spec.kinds == ["cnn", "asmk"] and spec.operator.name == "ghm" and spec.operator.params == {"gamma": 0.5}
    assert spec.norm == "minmax" and spec.depth == 100 and spec.weights is None
    spec = parse_fusion("cnn@3+bow@1:mean_power:gamma=0.7,norm=rank,depth=50")
    assert spec.weights == pytest.approx([0.75, 0.25]) and spec.operator.params == {"gamma": 0.7}
    assert spec.norm == "rank" and spec.depth == 50
    single = parse_fusion("asmk")
    assert single.kinds == ["asmk"] and single.operator is None
    for bad, message in [("cnn+cnn", "twice"), ("cnn@1+asmk", "every kind"), ("cnn+asmk:median", "unknown"),
                         ("cnn+asmk:ghm:depth=0", "depth"), ("cnn+asmk:ghm:norm=zscore", "normalisation"),
                         ("cnn@x+asmk@1", "weight"), ("", "empty"), ("cnn++asmk", "empty kind")]:
        with pytest.raises(ConfigError, match=message):
            parse_fusion(bad)
