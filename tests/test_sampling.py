"""BBN's samplers (matchlens.train.sampling) and the --sampler option of matchlens train."""

from __future__ import annotations

import numpy as np
import pytest

from matchlens.errors import ConfigError
from matchlens.train.config import TrainConfig
from matchlens.train.sampling import SAMPLERS, class_probabilities, draw, example_probabilities
from tests.conftest import run_cli


def test_registry_names_the_three_samplers():
    assert SAMPLERS.names() == ["balanced", "reversed", "uniform"]


def test_reversed_is_proportional_to_nmax_over_n():
    counts = np.array([100, 20, 5, 1])
    p = class_probabilities(counts, "reversed")
    expected = (100 / counts) / (100 / counts).sum()
    np.testing.assert_allclose(p, expected)
    assert p.argmax() == 3 and p.argmin() == 0  # the rarest class is drawn most
    np.testing.assert_allclose(class_probabilities(counts, "uniform"), counts / counts.sum())
    np.testing.assert_allclose(class_probabilities(counts, "balanced"), np.full(4, 0.25))


def test_example_probabilities_share_the_class_probability():
    labels = np.array([0] * 6 + [1] * 3 + [2])
    p = example_probabilities(labels, "reversed")
    assert p.sum() == pytest.approx(1.0)
    per_class = [p[labels == c].sum() for c in range(3)]
    np.testing.assert_allclose(per_class, class_probabilities([6, 3, 1], "reversed"))
    # a negative group (an image of its own) is a class of one
    q = example_probabilities(np.array([0, 0, -1, -1]), "reversed")
    np.testing.assert_allclose(q, np.array([1, 1, 4, 4]) / 10)


def test_draw_follows_the_sampler_and_uniform_keeps_the_plain_sequence():
    labels = np.array([0] * 90 + [1] * 9 + [2])
    picks = draw(labels, 30000, "reversed", np.random.default_rng(0))
    freq = np.bincount(labels[picks], minlength=3) / len(picks)
    np.testing.assert_allclose(freq, class_probabilities([90, 9, 1], "reversed"), atol=0.01)
    assert freq[2] > 0.8  # the single-image class: N_max/N_i = 90 of a total weight 101
    plain = np.random.default_rng(3).choice(len(labels), 50, replace=True)
    np.testing.assert_array_equal(draw(labels, 50, "uniform", np.random.default_rng(3)), plain)


def test_bad_counts_and_names_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown sampler 'rare'"):
        class_probabilities([1, 2], "rare")
    with pytest.raises(ConfigError, match="positive"):
        class_probabilities([3, 0], "reversed")
    with pytest.raises(ConfigError, match="unknown sampler"):
        TrainConfig(data=".", out="/tmp/never-written", sampler="rare")
    assert TrainConfig(data=".", out="/tmp/never-written", sampler="reversed").sampler == "reversed"


def test_train_cli_refuses_an_unknown_sampler(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", tmp_path, "--out", tmp_path / "run", "--sampler", "rare")
    assert code == 2 and "unknown sampler 'rare'" in err and "Traceback" not in err


def test_reversed_sampler_draws_small_landmarks_more_often_in_training_tuples(tmp_path):
    """The trainer's epoch tuples under --sampler reversed: a landmark with few query images gets
    as many tuples as one with many (per group sums equal), unlike the uniform draw."""
    from matchlens.train.positives import TrainingSet
    from matchlens.train.trainer import _Trainer

    groups = np.array([0] * 8 + [1] * 2)
    positives = {i: [j for j in range(10) if groups[j] == groups[i] and j != i] for i in range(10)}
    ts = TrainingSet([f"{i}.jpg" for i in range(10)], groups, positives, {}, list(range(10)), "test")
    counts = {}
    for sampler in ("uniform", "reversed"):
        trainer = object.__new__(_Trainer)  # only the tuple draw is exercised: no model, no images
        trainer.config = TrainConfig(data=".", out=str(tmp_path / sampler), tuples=4000, sampler=sampler)
        trainer.trainset = ts
        items = trainer._epoch_items(0)
        counts[sampler] = np.bincount(groups[[q for q, _ in items]], minlength=2) / len(items)
    assert counts["uniform"][1] == pytest.approx(0.2, abs=0.03)
    assert counts["reversed"][1] == pytest.approx(0.8, abs=0.03)  # weights 8/8 vs 8/2 per class
