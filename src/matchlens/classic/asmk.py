"""ASMK*: the aggregated selective match kernel with binarised residuals (Tolias, Avrithis &
Jégou, ICCV 2013), on RootSIFT, with an inverted file of Hamming-embedded codes.

Descriptors are assigned to their nearest visual word. Residuals are embedded as in Hamming
Embedding (Jégou et al. ECCV 2008): projected with P, the first ``bits`` rows of a random
orthogonal matrix (QR of a Gaussian matrix), and compared with per-word thresholds τ_c, the
median of each projected dimension over the training residuals of word c. For the descriptors
X_c of one image in word c, the aggregated binary code is

    b(X_c) = [ Σ_{x ∈ X_c} (P(x − c) − τ_c) > 0 ]                   (bits bits, packed)

and two codes are compared by their normalised Hamming similarity u = 1 − 2·h(b, b')/bits ∈ [−1, 1].
The selectivity function keeps only confident matches and sharpens them:

    σ_α(u) = sign(u)·|u|^α  if u > τ,  else 0          (α = 3, τ = 0)

and the image similarity is

    K(X, Y) = γ(X) γ(Y) Σ_{c ∈ X ∩ Y} idf_c² · σ_α(u(b(X_c), b(Y_c))),
    γ(X) = (Σ_{c ∈ X} idf_c²)^(-1/2),

idf_c = log(N / n_c) with n_c the images containing word c (γ normalises the self-similarity,
σ_α(1) = 1, to 1). One code per (image, word) pair is stored: memory proportional to the
number of features, ``bits``/8 + 4 bytes each.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from matchlens.classic.base import ENCODINGS, Advance, Encoding, Ragged, SearchData
from matchlens.classic.bow import idf_weights
from matchlens.classic.codebook import aggregate_residuals, train_codebook
from matchlens.components import in_range, non_negative_float, non_negative_int, positive_int
from matchlens.errors import ConfigError
from matchlens.local.features import DESCRIPTOR_DIM, LocalFeatures

__all__ = ["ASMK", "binary_codes", "hamming_similarity", "he_projection", "learn_thresholds", "selectivity"]

_MIN_TRAINING_PER_WORD = 5  # fewer training residuals give no stable median: threshold 0 (the centroid)


def he_projection(dim: int, bits: int, seed: int = 0) -> np.ndarray:
    """(bits, dim) rows of a random orthogonal matrix: Q of the QR decomposition of a Gaussian matrix."""
    if bits > dim:
        raise ConfigError(f"asmk: bits ({bits}) cannot exceed the descriptor dimension ({dim})")
    gaussian = np.random.default_rng(seed).standard_normal((dim, dim))
    q, r = np.linalg.qr(gaussian)
    q *= np.sign(np.diag(r))  # sign convention: the result is uniformly distributed (Haar)
    return q[:bits].astype(np.float32)


def learn_thresholds(projected: np.ndarray, words: np.ndarray, k: int,
                     min_count: int = _MIN_TRAINING_PER_WORD) -> np.ndarray:
    """τ (k, bits): per word, the median of each projected residual dimension over its training
    residuals; 0 for words with fewer than ``min_count`` of them."""
    projected = np.asarray(projected, np.float32)
    thresholds = np.zeros((k, projected.shape[1]), np.float32)
    order = np.argsort(words, kind="stable")
    sorted_words = np.asarray(words)[order]
    bounds = np.searchsorted(sorted_words, np.arange(k + 1))
    for word in np.flatnonzero(np.diff(bounds) >= min_count):
        thresholds[word] = np.median(projected[order[bounds[word]:bounds[word + 1]]], axis=0)
    return thresholds


def binary_codes(descriptors: np.ndarray, words: np.ndarray, centroids: np.ndarray, projection: np.ndarray,
                 thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct words (m,) int32, packed codes (m, bits/8) uint8) of one image:
    b(X_c) = [P·Σ(x − c) − |X_c|·τ_c > 0]."""
    bytes_per_code = projection.shape[0] // 8
    if len(words) == 0:
        return np.zeros(0, np.int32), np.zeros((0, bytes_per_code), np.uint8)
    unique, sums, counts = aggregate_residuals(descriptors, words, centroids)
    aggregated = sums @ projection.T.astype(np.float64) - counts[:, None] * thresholds[unique]
    return unique.astype(np.int32), np.packbits(aggregated > 0, axis=1)


def hamming_similarity(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """u = 1 − 2·h/bits for row-aligned packed codes ``a`` and ``b`` (n, bits/8)."""
    distance = np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int64)
    return (1.0 - 2.0 * distance / bits).astype(np.float32)


def selectivity(u: np.ndarray, alpha: float = 3.0, tau: float = 0.0) -> np.ndarray:
    """σ_α(u) = sign(u)·|u|^α where u > τ, else 0."""
    u = np.asarray(u, np.float64)
    return np.where(u > tau, np.sign(u) * np.abs(u) ** alpha, 0.0).astype(np.float32)


@ENCODINGS.register("asmk")
class ASMK(Encoding):
    """ASMK* on RootSIFT with Hamming-embedded aggregated residuals.

    Parameters: ``k`` visual words, ``niter``, ``sample``, ``seed``; ``bits`` per code (128, a
    multiple of 8, at most 128); selectivity ``alpha`` (3) and ``tau`` (0); ``query_ma`` words
    per query descriptor (multiple assignment on the query side; 1 = off); local features
    ``max_keypoints``, ``max_side``.
    """

    search_params = frozenset({"alpha", "tau", "query_ma"})
    defaults: ClassVar[dict[str, Any]] = {"k": 65536, "niter": 10, "sample": 1_000_000, "seed": 0, "nprobe": 2, "bits": 128,
                                          "alpha": 3.0,
                                          "tau": 0.0, "query_ma": 1}

    def validate(self) -> None:
        super().validate()
        for key in ("k", "niter", "sample", "bits", "query_ma", "nprobe"):
            self.check(key, positive_int)
        self.check("seed", non_negative_int)
        if self.params["bits"] % 8 or self.params["bits"] > DESCRIPTOR_DIM:
            raise ConfigError(f"{self.label()}: bits must be a multiple of 8 and at most {DESCRIPTOR_DIM}, "
                              f"got {self.params['bits']}")
        self.check("alpha", non_negative_float)
        self.check("tau", in_range, -1.0, 1.0)

    def train(self, sample: np.ndarray, advance: Advance | None = None) -> dict[str, np.ndarray]:
        book = train_codebook(sample, self.params["k"], self.params["niter"], self.params["seed"], advance)
        projection = he_projection(sample.shape[1], self.params["bits"], self.params["seed"])
        _, words = book.assign(sample, 1)
        residuals = sample - book.centroids[words[:, 0]]
        thresholds = learn_thresholds(residuals @ projection.T, words[:, 0], book.size)
        self.model = {**book.arrays(), "projection": projection, "thresholds": thresholds}
        self._codebook = book
        return self.model

    def _codes(self, features: LocalFeatures, assignments: int) -> dict[str, np.ndarray]:
        _, words = self.codebook.assign(features.descriptors, assignments)
        descriptors = np.repeat(features.descriptors, words.shape[1], axis=0)  # row i·m + j ↔ words[i, j]
        flat = words.ravel()
        keep = flat >= 0
        unique, codes = binary_codes(descriptors[keep], flat[keep], self.codebook.centroids,
                                     self.model["projection"], self.model["thresholds"])
        return {"words": unique, "codes": codes}

    def encode(self, features: LocalFeatures) -> dict[str, np.ndarray]:
        return self._codes(features, 1)

    def encode_query(self, features: LocalFeatures) -> dict[str, np.ndarray]:
        return self._codes(features, self.params["query_ma"])

    def code_template(self) -> dict[str, np.ndarray]:
        return {"words": np.zeros(0, np.int32), "codes": np.zeros((0, self.params["bits"] // 8), np.uint8)}

    def prepare(self, codes: Ragged, data: SearchData) -> SearchData:
        k, n = len(self.model["centroids"]), len(codes)
        words = codes.arrays["words"]
        order = np.argsort(words, kind="stable")  # postings grouped by word = the inverted file
        idf = idf_weights(np.bincount(words, minlength=k), n)
        image = codes.image_of_row()
        return {**data, "idf": idf, "word_start": np.searchsorted(words[order], np.arange(k + 1)),
                "post_image": image[order].astype(np.int32),
                "post_codes": np.ascontiguousarray(codes.arrays["codes"][order]),
                "image_norm": np.bincount(image, weights=idf[words].astype(np.float64) ** 2, minlength=n)}

    def scores(self, codes: Ragged, data: SearchData, query: dict[str, np.ndarray]) -> np.ndarray:
        n = len(codes)
        words, qcodes = query["words"], query["codes"]
        idf2 = data["idf"][words].astype(np.float64) ** 2
        query_norm = idf2.sum()
        if query_norm == 0 or n == 0:
            return np.zeros(n, np.float32)
        start, stop = data["word_start"][words], data["word_start"][words + 1]
        lengths = stop - start
        # Concatenated posting ranges of the query's words, and which query word each came from.
        owner = np.repeat(np.arange(len(words)), lengths)
        offsets = np.repeat(start - (np.cumsum(lengths) - lengths), lengths)
        postings = np.arange(lengths.sum()) + offsets
        u = hamming_similarity(data["post_codes"][postings], qcodes[owner], self.params["bits"])
        votes = selectivity(u, self.params["alpha"], self.params["tau"]) * idf2[owner]
        total = np.bincount(data["post_image"][postings], weights=votes, minlength=n)
        norm = np.sqrt(np.maximum(data["image_norm"], 1e-30) * query_norm)
        return np.where(data["image_norm"] > 0, total / norm, 0.0).astype(np.float32)
