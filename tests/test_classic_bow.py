"""Bag of words: tf-idf, burstiness damping, soft assignment and the inverted file on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from matchlens.classic.base import Ragged
from matchlens.classic.bow import BoW, idf_weights, soft_assignment_weights, term_frequencies, tfidf_vectors
from matchlens.errors import ConfigError
from matchlens.local.features import LocalFeatures


def ragged(*codes: tuple[list[int], list[float]]) -> Ragged:
    return Ragged.pack([{"words": np.array(w, np.int32), "tf": np.array(t, np.float32)} for w, t in codes],
                       {"words": np.zeros(0, np.int32), "tf": np.zeros(0, np.float32)})


def test_idf_is_log_of_images_over_images_containing_the_word():
    # N = 4 images; word 0 in 2 of them, word 1 in 1, word 2 in none, word 3 in all.
    assert idf_weights(np.array([2, 1, 0, 4]), 4) == pytest.approx([math.log(2), math.log(4), 0.0, 0.0])


def test_term_frequencies_sum_the_votes_per_word():
    words, tf = term_frequencies(np.array([[3], [1], [3], [3]]), np.ones((4, 1)))
    assert words.tolist() == [1, 3] and tf.tolist() == [1.0, 3.0]
    # soft votes: two words per descriptor
    words, tf = term_frequencies(np.array([[0, 2], [2, 1]]), np.array([[0.75, 0.25], [0.5, 0.5]]))
    assert words.tolist() == [0, 1, 2] and tf == pytest.approx([0.75, 0.5, 0.75])


def test_soft_assignment_weights_are_gaussian_and_sum_to_one():
    # d² = 0 and 2 with σ = 1: weights ∝ exp(0) and exp(-1)
    w = soft_assignment_weights(np.array([[0.0, 2.0]]), sigma=1.0)
    e = math.exp(-1.0)
    assert w[0] == pytest.approx([1 / (1 + e), e / (1 + e)])
    # far from every word: still finite and normalised (no 0/0)
    far = soft_assignment_weights(np.array([[1e4, 1e4 + 2.0]]), sigma=1.0)
    assert far[0] == pytest.approx([1 / (1 + e), e / (1 + e)])


def test_tfidf_with_sqrt_burstiness_on_a_hand_example():
    # 3 images over 3 words. Document frequencies: word0 1, word1 3, word2 2 → idf log3, 0, log1.5.
    codes = ragged(([0, 1], [4, 1]), ([1, 2], [1, 9]), ([1, 2], [1, 1]))
    idf = idf_weights(np.array([1, 3, 2]), 3)
    rows = tfidf_vectors(codes, idf, "sqrt").toarray()
    l3, l15 = math.log(3), math.log(1.5)
    # image 0: (√4·log3, √1·0, 0) → unit vector on word 0
    assert rows[0] == pytest.approx([1.0, 0.0, 0.0])
    # image 1: (0, 0, √9·log1.5) → unit vector on word 2; image 2 likewise
    assert rows[1] == pytest.approx([0.0, 0.0, 1.0])
    assert rows[2] == pytest.approx([0.0, 0.0, 1.0])
    # a query with words 0 and 2, tf 1 and 4: q = (log3, 0, 2·log1.5)/norm
    bow = BoW(k=3)
    bow.model = {"centroids": np.zeros((3, 128), np.float32)}
    data = bow.prepare(codes, {})
    assert data["idf"] == pytest.approx([l3, 0.0, l15])
    scores = bow.scores(codes, data, {"words": np.array([0, 2]), "tf": np.array([1.0, 4.0], np.float32)})
    norm = math.hypot(l3, 2 * l15)
    assert scores == pytest.approx([l3 / norm, 2 * l15 / norm, 2 * l15 / norm], rel=1e-5)


def test_burstiness_damping_is_the_square_root_of_tf():
    # one word shared by both images, one word each of its own: idf log2 on the own words, 0 on the shared one
    codes = ragged(([0, 2], [9, 1]), ([1, 2], [1, 1]))
    idf = np.array([math.log(2), math.log(2), 0.0], np.float32)
    damped = tfidf_vectors(codes, idf, "sqrt").toarray()[0]
    plain = tfidf_vectors(codes, idf, "none").toarray()[0]
    assert damped == pytest.approx([1.0, 0.0, 0.0])  # only word 0 survives idf; √9 = 3 before L2
    codes = ragged(([0, 1], [9, 1]), ([0, 1], [1, 1]))
    idf = np.array([math.log(2), math.log(2)], np.float32)
    damped = tfidf_vectors(codes, idf, "sqrt").toarray()[0]
    plain = tfidf_vectors(codes, idf, "none").toarray()[0]
    assert damped == pytest.approx(np.array([3.0, 1.0]) / math.sqrt(10))
    assert plain == pytest.approx(np.array([9.0, 1.0]) / math.sqrt(82))


def clustered_images(rng, centres: int = 64, per_image: int = 10, images: int = 4):
    """Training descriptors around ``centres`` points, and images each drawn from its own run of centres."""
    points = np.abs(rng.standard_normal((centres, 128))).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)

    def around(ids):
        x = points[ids] + 0.01 * rng.standard_normal((len(ids), 128)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    train = around(rng.integers(0, centres, 2000))
    feats = []
    for i in range(images):
        ids = rng.integers(i * per_image, (i + 1) * per_image + 3, 40) % centres  # a few shared with the next image
        n = len(ids)
        feats.append(LocalFeatures(np.zeros((n, 2), np.float32), np.ones(n, np.float32), np.zeros(n, np.float32),
                                   around(ids), (10, 10)))
    return train, feats


def test_inverted_file_is_sparse_and_ranks_the_duplicate_first():
    train, images = clustered_images(np.random.default_rng(0))
    bow = BoW(k=64, niter=5)
    bow.train(train)
    codes = Ragged.pack([bow.encode(f) for f in images], bow.code_template())
    data = bow.prepare(codes, bow.build(codes))
    assert data["inverted"].nnz <= sum(len(f) for f in images)  # memory follows the features, not N x K
    for i, image in enumerate(images):
        scores = bow.scores(codes, data, bow.encode_query(image))
        assert int(np.argmax(scores)) == i and scores[i] == pytest.approx(1.0, abs=1e-5)
        assert np.sort(scores)[-2] < 0.9


def test_soft_assignment_spreads_votes_over_nearby_words():
    train, images = clustered_images(np.random.default_rng(1))
    hard, soft = BoW(k=64, niter=5), BoW(k=64, niter=5, soft=3)
    hard.train(train)
    soft.train(train)
    h, s = hard.encode(images[0]), soft.encode(images[0])
    assert h["tf"].sum() == pytest.approx(40) and s["tf"].sum() == pytest.approx(40, rel=1e-5)  # one vote each
    assert len(s["words"]) >= len(h["words"])


def test_bad_bow_parameters_are_one_line_errors():
    with pytest.raises(ConfigError, match="burstiness"):
        BoW(burstiness="log")
    with pytest.raises(ConfigError, match="no parameter"):
        BoW(words=10)
    with pytest.raises(ConfigError, match="soft"):
        BoW(soft=0)
