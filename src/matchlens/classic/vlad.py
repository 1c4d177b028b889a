"""VLAD (Jégou et al. CVPR 2010) with intra- and power-normalisation, PCA-whitened, and DenseVLAD.

For a codebook c_1..c_K and descriptors x_t assigned to their nearest word q(x_t):

    V_k = Σ_{t: q(x_t)=k} (x_t − c_k)                       residual sum per word, d each
    V_k ← V_k / ||V_k||₂          (intra-normalisation, Arandjelović & Zisserman CVPR 2013;
                                   an empty word stays 0)
    v   ← sign(v)·|v|^α           (power normalisation, α = 0.5; α = 1 turns it off)
    v   ← v / ||v||₂
    v'  = PCA-whitening(v)        (learned on the collection's own VLADs, keep ``dim``), then L2:
                                  x' = diag(λ^-p) Uᵀ(x − μ), p = ``power``

Whitening defaults to p = 0.25 (half-way between a plain PCA rotation, p = 0, and full
whitening, p = 0.5) at 128 dimensions. Learned on oxford5k_subset's own 1,009 VLADs, full
whitening amplifies the noise of the smallest of the kept components: whole-image mAP fell
from 30.9 (p = 0, 512-d) to 11.7 (p = 0.5, 512-d); 128-d with p = 0.25 gave 31.1 (README,
"Classic retrieval"). Published VLAD whitening is learned on a large independent image set.

The 1/T factor of the textbook definition disappears in the normalisations. The dimension before
whitening is K·d (64 × 128 = 8,192 by default). DenseVLAD (Torii et al. CVPR 2015) is the same
aggregation of RootSIFT computed on a dense multi-scale grid, intra-normalised, PCA-whitened
and L2-normalised (preset ``densevlad``: K = 128, α = 1).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from matchlens.classic.base import ENCODINGS, Advance, Encoding, Ragged, SearchData
from matchlens.classic.codebook import aggregate_residuals, train_codebook
from matchlens.components import in_range, non_negative_int, one_of, positive_int
from matchlens.linalg import l2_normalize
from matchlens.local.features import DESCRIPTOR_DIM, LocalFeatures
from matchlens.whitening import PCAWhitening

__all__ = ["VLAD", "DenseVLAD", "residual_sums", "vlad_vector"]


def residual_sums(descriptors: np.ndarray, words: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Σ (x_t − c_k) over the descriptors assigned to each word k: (K, d) float64."""
    sums = np.zeros(centroids.shape, np.float64)
    if len(words):
        unique, partial, _ = aggregate_residuals(descriptors, words, centroids)
        sums[unique] = partial
    return sums


def vlad_vector(descriptors: np.ndarray, words: np.ndarray, centroids: np.ndarray, intra: bool = True,
                alpha: float = 0.5) -> np.ndarray:
    """The normalised VLAD (K·d,) float32 of one image (all zeros when it has no descriptor)."""
    sums = residual_sums(descriptors, words, centroids)
    if intra:
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        sums = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)
    v = sums.ravel()
    if alpha != 1.0:
        v = np.sign(v) * np.abs(v) ** alpha
    return l2_normalize(v)


@ENCODINGS.register("vlad")
class VLAD(Encoding):
    """VLAD of RootSIFT.

    Parameters: ``k`` words (64), ``niter``, ``sample``, ``seed``; ``intra`` (1/0) and ``alpha``
    (power); whitening ``dim`` (128; at most the number of images − 1), ``power`` (0.25; 0.5 = full
    whitening), ``shrinkage`` (eigenvalue shrinkage against a small training set, 0..1); local
    features ``max_keypoints``, ``max_side`` (and for the dense variant ``dense_step``,
    ``dense_sizes`` as ``16/24/32/40``).
    """

    search_params = frozenset({"dim", "power", "shrinkage"})
    defaults: ClassVar[dict[str, Any]] = {"k": 64, "niter": 20, "sample": 200_000, "seed": 0, "intra": 1, "alpha": 0.5,
                                          "dim": 128, "power": 0.25, "shrinkage": 0.0}

    def validate(self) -> None:
        super().validate()
        for key in ("k", "niter", "sample", "dim"):
            self.check(key, positive_int)
        self.check("seed", non_negative_int)
        self.check("alpha", in_range, 0.0, 1.0, low_open=True)
        self.check("power", in_range, 0.0, 0.5)
        self.check("shrinkage", in_range, 0.0, 1.0)
        self.check("intra", one_of, (0, 1))  # 1/0 (True/False compare equal)

    def train(self, sample: np.ndarray, advance: Advance | None = None) -> dict[str, np.ndarray]:
        book = train_codebook(sample, self.params["k"], self.params["niter"], self.params["seed"], advance)
        self.model = book.arrays()
        self._codebook = book
        return self.model

    def encode(self, features: LocalFeatures) -> dict[str, np.ndarray]:
        _, words = self.codebook.assign(features.descriptors, 1)
        v = vlad_vector(features.descriptors, words[:, 0], self.codebook.centroids, bool(self.params["intra"]),
                        float(self.params["alpha"]))
        # float16 halves the stored size; the rounding (1e-3 relative) is far below what whitening keeps.
        return {"vlad": v[None, :].astype(np.float16)}

    def code_template(self) -> dict[str, np.ndarray]:
        return {"vlad": np.zeros((0, self.params["k"] * DESCRIPTOR_DIM), np.float16)}

    def build(self, codes: Ragged) -> SearchData:
        raw = codes.arrays["vlad"].astype(np.float32)
        dim = min(self.params["dim"], len(raw) - 1, raw.shape[1])
        if dim < 1:  # one image: nothing to learn a whitening from; plain L2 VLAD
            return {"vectors": raw}
        model = PCAWhitening(dim=dim, power=self.params["power"], shrinkage=self.params["shrinkage"]).fit(raw)
        assert model.mean_ is not None and model.projection_ is not None  # set by fit()
        return {"vectors": model.transform(raw), "pca_mean": model.mean_.astype(np.float32),
                "pca_projection": model.projection_.astype(np.float32)}

    def query_vector(self, data: SearchData, query: dict[str, np.ndarray]) -> np.ndarray:
        """The whitened, L2-normalised query vector."""
        raw = query["vlad"].astype(np.float64)
        if "pca_projection" not in data:
            return raw[0].astype(np.float32)
        v = (raw[0] - data["pca_mean"]) @ np.asarray(data["pca_projection"]).T
        return l2_normalize(v)

    def scores(self, codes: Ragged, data: SearchData, query: dict[str, np.ndarray]) -> np.ndarray:
        return (np.asarray(data["vectors"], np.float32) @ self.query_vector(data, query)).astype(np.float32)


@ENCODINGS.register("densevlad")
class DenseVLAD(VLAD):
    """DenseVLAD: RootSIFT on a dense multi-scale grid (step 8 px, patch sizes 16/24/32/40 at a
    working side of 640 px), K = 128, intra-normalisation without power normalisation, PCA-whitened."""

    feature_defaults: ClassVar[dict[str, Any]] = {"max_side": 640, "dense": 1, "dense_step": 8, "dense_sizes": "16/24/32/40"}
    defaults: ClassVar[dict[str, Any]] = {**VLAD.defaults, "k": 128, "alpha": 1.0, "sample": 300_000}
