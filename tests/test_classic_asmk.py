"""ASMK*: Hamming embedding, aggregated binary codes, selectivity and the kernel, on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from matchlens.classic.asmk import ASMK, binary_codes, hamming_similarity, he_projection, learn_thresholds, selectivity
from matchlens.classic.base import Ragged
from matchlens.errors import ConfigError
from tests.test_classic_bow import clustered_images


def test_selectivity_keeps_confident_matches_and_cubes_them():
    u = np.array([-0.5, 0.0, 0.5, 1.0])
    assert selectivity(u, alpha=3, tau=0) == pytest.approx([0.0, 0.0, 0.125, 1.0])
    assert selectivity(np.array([0.2, 0.3]), alpha=3, tau=0.25) == pytest.approx([0.0, 0.027])
    assert selectivity(np.array([-0.5, 0.6]), alpha=1, tau=-1) == pytest.approx([-0.5, 0.6])  # sign(u)|u|^α


def test_hamming_similarity_is_one_minus_twice_the_normalised_distance():
    a = np.array([[0b11110000, 0xFF]], np.uint8)
    b = np.array([[0b11000000, 0xFF]], np.uint8)
    assert hamming_similarity(a, b, 16) == pytest.approx([1 - 2 * 2 / 16])
    assert hamming_similarity(a, a, 16) == pytest.approx([1.0])
    assert hamming_similarity(a, ~a, 16) == pytest.approx([-1.0])


def test_he_projection_rows_are_orthonormal():
    p = he_projection(128, 64, seed=3)
    assert p.shape == (64, 128)
    assert p @ p.T == pytest.approx(np.eye(64), abs=1e-5)
    assert not np.allclose(he_projection(128, 64, seed=4), p)
    with pytest.raises(ConfigError, match="bits"):
        he_projection(8, 16)


def test_thresholds_are_per_word_medians_with_enough_training_residuals():
    projected = np.array([[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [100, 100], [200, 200]], np.float32)
    words = np.array([0, 0, 0, 0, 0, 1, 1])
    tau = learn_thresholds(projected, words, k=3, min_count=5)
    assert tau.tolist() == [[5, 6], [0, 0], [0, 0]]  # word 1 has only 2 residuals, word 2 none


def test_binary_code_of_an_aggregated_residual_on_a_hand_example():
    centroids = np.array([np.zeros(8), np.full(8, 0.5)])
    descriptors = np.array([[1, -1, 2, -2, 0.5, -0.5, 0, 0],     # word 0
                            [-2, 2, 1, -1, 0.5, 0.5, 0, 1],      # word 0
                            [1, 0, 0, 1, 1, 0, 0, 1]], float)     # word 1
    thresholds = np.zeros((2, 8))
    thresholds[0, 5] = 0.5
    words, codes = binary_codes(descriptors, np.array([0, 0, 1]), centroids, np.eye(8), thresholds)
    # word 0: Σ residuals (-1, 1, 3, -3, 1, 0, 0, 1) - 2·τ0 = (-1, 1, 3, -3, 1, -1, 0, 1) → bits 01101001
    # word 1: residual (.5, -.5, -.5, .5, .5, -.5, -.5, .5) → bits 10011001
    assert words.tolist() == [0, 1]
    assert codes[:, 0].tolist() == [0b01101001, 0b10011001]
    assert hamming_similarity(codes[:1], codes[1:], 8) == pytest.approx([1 - 2 * 4 / 8])


def test_asmk_kernel_on_a_hand_example():
    asmk = ASMK(k=3, bits=8)
    asmk.model = {"centroids": np.zeros((3, 8), np.float32)}
    codes = Ragged.pack([{"words": np.array([0, 1]), "codes": np.array([[0b11111111], [0b00000000]])},
                         {"words": np.array([1, 2]), "codes": np.array([[0b00001111], [0b10101010]])},
                         {"words": np.array([2]), "codes": np.array([[0b00000000]])}], asmk.code_template())
    data = asmk.prepare(codes, {})
    l3, l15 = math.log(3), math.log(1.5)  # idf: word 0 in 1 of 3 images, words 1 and 2 in 2 of 3
    assert data["idf"] == pytest.approx([l3, l15, l15])
    query = {"words": np.array([0, 1, 2]), "codes": np.array([[0b11111110], [0b00000011], [0b10101010]], np.uint8)}
    scores = asmk.scores(codes, data, query)
    q_norm = l3 ** 2 + 2 * l15 ** 2
    # image 0: word 0 h=1 → u=.75 → σ=.421875; word 1 h=2 → u=.5 → σ=.125
    s0 = (0.421875 * l3 ** 2 + 0.125 * l15 ** 2) / math.sqrt((l3 ** 2 + l15 ** 2) * q_norm)
    # image 1: word 1 h=2 → .125; word 2 h=0 → 1
    s1 = (0.125 * l15 ** 2 + 1.0 * l15 ** 2) / math.sqrt(2 * l15 ** 2 * q_norm)
    # image 2: word 2 h=4 → u=0, not above τ=0 → no vote
    assert scores == pytest.approx([s0, s1, 0.0], rel=1e-5)


def test_an_image_matches_itself_with_similarity_one():
    train, images = clustered_images(np.random.default_rng(2))
    asmk = ASMK(k=64, niter=5)
    asmk.train(train)
    assert asmk.model["thresholds"].shape == (64, 128) and asmk.model["projection"].shape == (128, 128)
    codes = Ragged.pack([asmk.encode(f) for f in images], asmk.code_template())
    assert codes.arrays["codes"].dtype == np.uint8 and codes.arrays["codes"].shape[1] == 16  # 128 bits
    data = asmk.prepare(codes, asmk.build(codes))
    for i, image in enumerate(images):
        scores = asmk.scores(codes, data, asmk.encode_query(image))
        assert int(np.argmax(scores)) == i and scores[i] == pytest.approx(1.0, abs=1e-5)


def test_query_multiple_assignment_adds_words():
    train, images = clustered_images(np.random.default_rng(3))
    single, multiple = ASMK(k=64, niter=5), ASMK(k=64, niter=5, query_ma=3)
    single.train(train)
    multiple.load_model(single.model)
    assert len(multiple.encode_query(images[0])["words"]) > len(single.encode_query(images[0])["words"])
    assert multiple.encode(images[0])["words"].tolist() == single.encode(images[0])["words"].tolist()


def test_bad_asmk_parameters():
    with pytest.raises(ConfigError, match="multiple of 8"):
        ASMK(bits=100)
    with pytest.raises(ConfigError, match="tau"):
        ASMK(tau=2)
