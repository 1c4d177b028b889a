"""Bag of visual words with tf-idf, square-root burstiness damping and an inverted file.

For an image with local descriptors x_t, each descriptor votes for its nearest visual word
(hard assignment) or for its ``soft`` nearest words with weights exp(-d²/2σ²) normalised to sum
1 (soft assignment, Philbin et al. CVPR 2008). The term frequency tf_c is the sum of the votes for
word c. The image vector has components

    v_c = damp(tf_c) · idf_c,   idf_c = log(N / n_c),   then v ← v / ||v||₂,

with N the number of images, n_c the number of images containing word c, and damp = √ (the
burstiness damping of Jégou et al. CVPR 2009: a repeated pattern cannot dominate) or the identity.
The score of a database image is the cosine v_qᵀ v_d. The collection is stored as a sparse
matrix in compressed-column form, which *is* the inverted file: column c lists the images that
contain word c and their weights, so memory is proportional to the number of (image, word)
pairs, never N × K.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.sparse

from matchlens.classic.base import ENCODINGS, Advance, Encoding, Ragged, SearchData
from matchlens.classic.codebook import train_codebook
from matchlens.components import non_negative_float, non_negative_int, one_of, positive_int
from matchlens.local.features import LocalFeatures

__all__ = ["BoW", "idf_weights", "soft_assignment_weights", "term_frequencies", "tfidf_vectors"]

BURSTINESS = ("sqrt", "none")


def soft_assignment_weights(sq_distances: np.ndarray, sigma: float) -> np.ndarray:
    """Votes (n, k) of each descriptor for its k nearest words: exp(-d²/2σ²), rows summing to 1.

    Subtracting each row's smallest d² first leaves the normalised weights unchanged and avoids
    underflow to 0/0 when every distance is large compared with σ.
    """
    d2 = np.asarray(sq_distances, np.float64)
    shifted = d2 - d2.min(axis=1, keepdims=True)
    w = np.exp(-shifted / (2.0 * sigma * sigma))
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def term_frequencies(words: np.ndarray, votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct words ascending, summed votes) of one image from its (n, k) assignments."""
    words, votes = np.asarray(words).ravel(), np.asarray(votes, np.float32).ravel()
    keep = words >= 0  # FAISS reports -1 when fewer than k words exist
    unique, inverse = np.unique(words[keep], return_inverse=True)
    return unique.astype(np.int32), np.bincount(inverse, weights=votes[keep], minlength=len(unique)).astype(np.float32)


def idf_weights(document_frequency: np.ndarray, n_images: int) -> np.ndarray:
    """idf_c = log(N / n_c); 0 for a word no image contains."""
    df = np.asarray(document_frequency, np.float64)
    out = np.zeros(len(df), np.float64)
    present = df > 0
    out[present] = np.log(n_images / df[present])
    return out.astype(np.float32)


def _damp(tf: np.ndarray, burstiness: str) -> np.ndarray:
    return np.sqrt(tf) if burstiness == "sqrt" else tf


def tfidf_vectors(codes: Ragged, idf: np.ndarray, burstiness: str = "sqrt") -> scipy.sparse.csr_matrix:
    """The L2-normalised tf-idf rows (N, K) of all images, as a sparse matrix."""
    words, tf = codes.arrays["words"], codes.arrays["tf"]
    values = (_damp(tf.astype(np.float64), burstiness) * idf[words]).astype(np.float64)
    matrix = scipy.sparse.csr_matrix((values, words, codes.offsets), shape=(len(codes), len(idf)))
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    scale = np.where(norms > 0, 1.0 / np.maximum(norms, 1e-30), 0.0)
    return scipy.sparse.diags(scale) @ matrix


@ENCODINGS.register("bow")
class BoW(Encoding):
    """RootSIFT bag of words with tf-idf and an inverted file.

    Parameters: ``k`` visual words, ``niter`` k-means iterations, ``sample`` descriptors to learn
    them from, ``seed``; ``soft`` words per descriptor (1 = hard assignment) with ``sigma``
    (0 = learn: the median distance of a descriptor to its nearest word); ``burstiness``
    (``sqrt`` or ``none``); local features ``max_keypoints``, ``max_side``.
    """

    search_params = frozenset({"burstiness"})
    defaults: ClassVar[dict[str, Any]] = {"k": 65536, "niter": 10, "sample": 1_000_000, "seed": 0, "nprobe": 2, "soft": 1,
                                          "sigma": 0.0,
                                          "burstiness": "sqrt"}

    def validate(self) -> None:
        super().validate()
        for key in ("k", "niter", "sample", "soft", "nprobe"):
            self.check(key, positive_int)
        self.check("seed", non_negative_int)
        self.check("sigma", non_negative_float)
        self.check("burstiness", one_of, BURSTINESS)

    def train(self, sample: np.ndarray, advance: Advance | None = None) -> dict[str, np.ndarray]:
        book = train_codebook(sample, self.params["k"], self.params["niter"], self.params["seed"], advance)
        sigma = float(self.params["sigma"])
        if sigma <= 0:  # a scale that matches the data: the typical distance to the nearest word
            d2, _ = book.assign(sample[: min(len(sample), 50_000)], 1)
            sigma = float(np.sqrt(max(np.median(d2), 1e-12)))
        self.model = {**book.arrays(), "sigma": np.array(sigma, np.float32)}
        self._codebook = book
        return self.model

    def encode(self, features: LocalFeatures) -> dict[str, np.ndarray]:
        d2, words = self.codebook.assign(features.descriptors, self.params["soft"])
        votes = np.ones_like(d2) if d2.shape[1] == 1 else soft_assignment_weights(d2, float(self.model["sigma"]))
        unique, tf = term_frequencies(words, votes)
        return {"words": unique, "tf": tf}

    def code_template(self) -> dict[str, np.ndarray]:
        return {"words": np.zeros(0, np.int32), "tf": np.zeros(0, np.float32)}

    def prepare(self, codes: Ragged, data: SearchData) -> SearchData:
        k = len(self.model["centroids"])
        idf = idf_weights(np.bincount(codes.arrays["words"], minlength=k), len(codes))
        inverted = tfidf_vectors(codes, idf, self.params["burstiness"]).tocsc()  # column c = postings of word c
        return {**data, "idf": idf, "inverted": inverted}

    def scores(self, codes: Ragged, data: SearchData, query: dict[str, np.ndarray]) -> np.ndarray:
        words, tf = query["words"], query["tf"]
        weights = _damp(tf.astype(np.float64), self.params["burstiness"]) * data["idf"][words]
        norm = np.linalg.norm(weights)
        if norm == 0 or len(codes) == 0:
            return np.zeros(len(codes), np.float32)
        return np.asarray(data["inverted"][:, words] @ (weights / norm)).ravel().astype(np.float32)
