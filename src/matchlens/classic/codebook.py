"""Visual-word codebooks: FAISS k-means on a sample of local descriptors, and assignment to words.

Small codebooks (VLAD: 64-256 words) are learned by plain k-means and assign exhaustively. Large
ones (BoW, ASMK: thousands to 65k words) are learned by two-level k-means, the vocabulary-tree
idea of Nistér & Stewénius (CVPR 2006) as FAISS does it (``faiss.contrib.clustering
.two_level_clustering``): √K coarse clusters, then each coarse cluster split into a number of words
proportional to its population. Words are assigned through an inverted file over the words
(FAISS ``IndexIVFFlat`` whose lists are the coarse clusters, searched ``nprobe`` lists deep):
on 2 cores an exhaustive assignment of 10^6 descriptors to 65,536 words takes many minutes per
pass, the tree seconds, and approximate assignment is what large-vocabulary retrieval has always
used (Philbin et al. CVPR 2007, approximate k-means).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import numpy as np

from matchlens.errors import ConfigError

__all__ = ["Codebook", "aggregate_residuals", "codebook_steps", "train_codebook", "TWO_LEVEL_FROM"]

TWO_LEVEL_FROM = 4096  # codebooks at least this large are learned and searched as a two-level tree
DEFAULT_NPROBE = 2      # coarse clusters searched per descriptor (exact search within them)


@contextlib.contextmanager
def single_threaded_faiss() -> Iterator[None]:
    """Run FAISS on one OpenMP thread inside the block (then restore the setting).

    The calls here are many and small (sub-clusterings, per-image assignments) and run beside
    other work; measured on a shared 2-core machine, OpenMP's spinning threads made a 4,096-word
    k-means 20x slower with 2 threads (167 s) than with 1 (8 s).
    """
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class Codebook:
    """``k`` words (k, d) float32 with nearest-word assignment.

    With ``coarse`` centroids (c, d) and ``parents`` (k,) — the coarse cluster of each word — the
    assignment searches the words of the ``nprobe`` nearest coarse clusters only; otherwise it is
    exhaustive.
    """

    def __init__(self, centroids: np.ndarray, coarse: np.ndarray | None = None, parents: np.ndarray | None = None,
                 nprobe: int = DEFAULT_NPROBE) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        if self.centroids.ndim != 2 or len(self.centroids) < 1:
            raise ConfigError(f"a codebook needs a (k, d) centroid array, got shape {self.centroids.shape}")
        self.coarse = None if coarse is None else np.ascontiguousarray(coarse, dtype=np.float32)
        self.parents = None if parents is None else np.asarray(parents, np.int64)
        self.nprobe = nprobe
        self._index = None

    @property
    def size(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        """What a model stores of this codebook."""
        out: dict[str, np.ndarray] = {"centroids": self.centroids}
        if self.coarse is not None:
            assert self.parents is not None  # coarse centroids come with the parents of the words
            out.update(coarse=self.coarse, parents=self.parents)
        return out

    def assign(self, x: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(squared L2 distances, word ids), each (n, k), nearest first (id -1: fewer than k found)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        k = min(k, self.size)
        if len(x) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        with single_threaded_faiss():
            return self._search_index().search(x, k)

    def _search_index(self):
        import faiss

        if self._index is None:
            if self.coarse is None:
                self._index = faiss.IndexFlatL2(self.dim)
                self._index.add(self.centroids)
            else:
                from faiss.contrib.ivf_tools import add_preassigned

                quantizer = faiss.IndexFlatL2(self.dim)
                quantizer.add(self.coarse)
                index = faiss.IndexIVFFlat(quantizer, self.dim, len(self.coarse))
                index.is_trained = True
                # Each word goes to its own coarse cluster (not to the nearest coarse centroid).
                add_preassigned(index, self.centroids, self.parents)
                index.nprobe = min(self.nprobe, len(self.coarse))
                self._index = index
        return self._index


def codebook_steps(k: int, niter: int) -> int:
    """Progress steps of :func:`train_codebook`."""
    return 1 + _coarse_size(k) if k >= TWO_LEVEL_FROM else niter


def _coarse_size(k: int) -> int:
    return max(2, round(math.sqrt(k)))


def train_codebook(sample: np.ndarray, k: int, niter: int = 20, seed: int = 0,
                   advance: Callable[[int], None] | None = None) -> Codebook:
    """Learn ``k`` words from ``sample`` (n, d) with FAISS k-means (``niter`` iterations per
    k-means); two-level for ``k >= TWO_LEVEL_FROM``. ``advance`` is called after every step of
    :func:`codebook_steps`. FAISS splits a large cluster whenever a centroid goes empty."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if isinstance(k, bool) or k < 1:
        raise ConfigError(f"codebook size must be >= 1, got {k!r}")
    if len(sample) < k:
        raise ConfigError(f"cannot learn {k} visual words from {len(sample)} descriptors; "
                          "use a smaller codebook (k=...) or index more images")
    with single_threaded_faiss():
        return _train(sample, k, niter, seed, advance)


def _train(sample: np.ndarray, k: int, niter: int, seed: int, advance: Callable[[int], None] | None) -> Codebook:
    if k < TWO_LEVEL_FROM:
        centroids = None
        for _ in range(niter):  # one FAISS call per iteration, so progress can be shown
            centroids = _kmeans(sample, k, 1, seed, init=centroids)
            if advance:
                advance(1)
        if centroids is None:  # niter < 1: no k-means ran
            raise ConfigError(f"k-means needs niter >= 1, got {niter!r}")
        return Codebook(centroids)
    return _two_level(sample, k, niter, seed, advance)


def _kmeans(x: np.ndarray, k: int, niter: int, seed: int, init: np.ndarray | None = None) -> np.ndarray:
    import faiss

    # We sample ourselves: no silent subsampling by FAISS (max_points_per_centroid).
    kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False, max_points_per_centroid=1 << 30,
                          min_points_per_centroid=1)  # and no warning below 39 points per centroid
    kmeans.train(x, init_centroids=init)
    centroids = kmeans.centroids
    assert centroids is not None  # set by train()
    return centroids


def _two_level(sample: np.ndarray, k: int, niter: int, seed: int,
               advance: Callable[[int], None] | None) -> Codebook:
    import faiss

    n_coarse = _coarse_size(k)
    coarse = _kmeans(sample, n_coarse, niter, seed)
    if advance:
        advance(1)
    quantizer = faiss.IndexFlatL2(sample.shape[1])
    quantizer.add(coarse)
    cell = quantizer.search(sample, 1)[1][:, 0]
    population = np.bincount(cell, minlength=n_coarse)
    # Words per coarse cluster proportional to its population (FAISS's "rebalance"), summing to k.
    bounds = np.cumsum(population) * k // len(sample)
    quota = np.diff(np.concatenate([[0], bounds]))
    order = np.argsort(cell, kind="stable")
    starts = np.concatenate([[0], np.cumsum(population)])
    words, parents = [], []
    for c in range(n_coarse):
        members = sample[order[starts[c]:starts[c + 1]]]
        want = int(min(quota[c], len(members)))
        if want > 0:
            words.append(members if want == len(members) else _kmeans(members, want, niter, seed + c + 1))
            parents.append(np.full(want, c, np.int64))
        if advance:
            advance(1)
    return Codebook(np.concatenate(words), coarse, np.concatenate(parents))


def aggregate_residuals(descriptors: np.ndarray, words: np.ndarray,
                        centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct word w of an image: Σ (x_t − c_w) over its descriptors.

    Returns (distinct words ascending (m,), residual sums (m, d) float64, counts (m,)); memory
    is proportional to the image's descriptors, not to the codebook size.
    """
    import scipy.sparse

    words = np.asarray(words, np.int64).ravel()
    unique, inverse = np.unique(words, return_inverse=True)
    m, n = len(unique), len(words)
    # A sparse one-hot (m, n) product sums the descriptors per word in one pass.
    onehot = scipy.sparse.csr_matrix((np.ones(n), (inverse, np.arange(n))), shape=(m, n))
    counts = np.bincount(inverse, minlength=m)
    own = np.asarray(centroids)[unique].astype(np.float64)  # index first: never convert the whole codebook
    sums = onehot @ np.asarray(descriptors, np.float64) - counts[:, None] * own
    return unique, sums, counts
