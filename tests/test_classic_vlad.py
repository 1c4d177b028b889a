"""VLAD: residual sums, intra- and power-normalisation, PCA-whitening, on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from matchlens.classic.base import Ragged
from matchlens.classic.vlad import VLAD, DenseVLAD, residual_sums, vlad_vector
from matchlens.errors import ConfigError
from matchlens.local.features import LocalFeatures

CENTROIDS = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
DESCRIPTORS = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
WORDS = np.array([0, 1, 1])


def test_residual_sums_per_word():
    # word 0: (0,1)-(0,0) = (0,1); word 1: (1,1)-(1,0) + (2,0)-(1,0) = (0,1)+(1,0) = (1,1); word 2: empty
    assert residual_sums(DESCRIPTORS, WORDS, CENTROIDS) == pytest.approx(np.array([[0, 1], [1, 1], [0, 0]]))


def test_vlad_intra_then_power_then_l2():
    v = vlad_vector(DESCRIPTORS, WORDS, CENTROIDS, intra=True, alpha=0.5)
    # intra: (0,1), (1,1)/√2, (0,0) → power 0.5: (0,1), (2^-1/4, 2^-1/4), (0,0) → L2
    q = 2 ** -0.25
    expected = np.array([0, 1, q, q, 0, 0]) / math.sqrt(1 + 2 * q * q)
    assert v == pytest.approx(expected, abs=1e-6)
    assert np.linalg.norm(v) == pytest.approx(1.0)


def test_vlad_without_normalisations_is_the_l2_residual_sum():
    v = vlad_vector(DESCRIPTORS, WORDS, CENTROIDS, intra=False, alpha=1.0)
    assert v == pytest.approx(np.array([0, 1, 1, 1, 0, 0]) / math.sqrt(3), abs=1e-6)


def test_power_normalisation_damps_a_dominant_component():
    v = vlad_vector(np.array([[10.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), np.array([[0.0, 0.0], [0.0, 0.0]]),
                    intra=False, alpha=0.5)
    # sums (10,0),(0,1) → sign·√: (√10, 0, 0, 1) → L2
    assert v == pytest.approx(np.array([math.sqrt(10), 0, 0, 1]) / math.sqrt(11), abs=1e-6)


def test_an_image_without_features_gives_a_zero_vlad():
    v = vlad_vector(np.zeros((0, 2)), np.zeros(0, np.int64), CENTROIDS)
    assert v.shape == (6,) and not v.any()


def features(x: np.ndarray) -> LocalFeatures:
    n = len(x)
    return LocalFeatures(np.zeros((n, 2), np.float32), np.ones(n, np.float32), np.zeros(n, np.float32),
                         x.astype(np.float32), (10, 10))


def test_whitened_vlad_is_l2_normalised_and_query_matches_its_database_copy():
    rng = np.random.default_rng(0)
    vlad = VLAD(k=4, niter=5, dim=5)
    vlad.train(np.abs(rng.standard_normal((500, 128))).astype(np.float32))
    images = [features(np.abs(rng.standard_normal((30, 128)))) for _ in range(8)]
    codes = Ragged.pack([vlad.encode(f) for f in images], vlad.code_template())
    assert codes.arrays["vlad"].shape == (8, 4 * 128) and codes.arrays["vlad"].dtype == np.float16
    data = vlad.build(codes)
    assert data["vectors"].shape == (8, 5)
    assert np.linalg.norm(data["vectors"], axis=1) == pytest.approx(np.ones(8), abs=1e-5)
    scores = vlad.scores(codes, data, vlad.encode_query(images[3]))
    assert int(np.argmax(scores)) == 3 and scores[3] == pytest.approx(1.0, abs=1e-3)


def test_whitening_dimension_is_capped_by_the_number_of_images():
    rng = np.random.default_rng(1)
    vlad = VLAD(k=2, niter=3, dim=512)
    vlad.train(np.abs(rng.standard_normal((100, 128))).astype(np.float32))
    codes = Ragged.pack([vlad.encode(features(np.abs(rng.standard_normal((10, 128))))) for _ in range(4)],
                        vlad.code_template())
    assert vlad.build(codes)["vectors"].shape == (4, 3)  # rank of 4 centred vectors


def test_densevlad_preset_and_bad_parameters():
    dense = DenseVLAD()
    assert dense.feature_params.dense and dense.params["k"] == 128 and dense.params["alpha"] == 1.0
    assert dense.feature_params.dense_sizes == (16, 24, 32, 40)
    with pytest.raises(ConfigError, match="alpha"):
        VLAD(alpha=0)
    with pytest.raises(ConfigError, match="intra"):
        VLAD(intra=2)
