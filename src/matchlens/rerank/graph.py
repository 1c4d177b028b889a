"""The shape of a collection's kNN graph: does it have the dense, reciprocal neighbourhoods that
database-side augmentation (DBA) and diffusion need?

Both replace a database image's vector (DBA, Arandjelović & Zisserman CVPR'12) or its score
(diffusion, Iscen et al. CVPR'17) by an average over its nearest neighbours. That helps when the
neighbours are other views of the same object — objects photographed many times, whose views
link into a manifold — and hurts when they are not: an object with two or three views has its k
nearest neighbours filled with other objects, and the average blurs it into them (measured: DBA
and diffusion lose on oxford5k_subset, ukbench_subset and the demo collection, README).

Whether neighbours are views of the same object is not known without labels, but reciprocity is
its classic label-free witness (Jégou et al. CVPR'07; Qin et al. CVPR'11): the views of one
object are each other's nearest neighbours. So, for a sample of rows i:

- ``reciprocity(k)``: the share of the k nearest neighbours j of i that have i among *their* k
  nearest, corrected for chance (k / (n - 1), which is large in a small set);
- the curve over k *peaks* at about the number of other views an object has, then falls once
  the k nearest reach past the object into other objects (UKBench's groups of four: peak 1.0
  at k = 3). A curve that only rises, or stays flat, shows no such boundary: uniformly spread
  vectors become ever more reciprocal as k grows, and a landmark collection with many
  distractors and hub images stays near 0.45 at every k;
- ``neighbourhood``: the k of the curve's maximum when it reaches ``MIN_RECIPROCITY`` and the
  curve has fallen by at least ``MIN_DROP`` at the largest k measured (else 0: no neighbourhood
  measured) — the estimated number of relevant neighbours per image;
- ``gap``: the median drop in similarity from the first to the ``neighbourhood``-th neighbour
  (recorded for inspection; not part of the decision).

The graph supports DBA and diffusion when ``neighbourhood >= MIN_NEIGHBOURHOOD``. The thresholds
were chosen on generated collections (benchmarks/rerank.py ``--generated``: photos in V
augmented views each, and synthetic vectors in tests/test_rerank_auto.py), never on the
evaluation sets' ground truth; see :data:`MIN_RECIPROCITY`. A collection whose objects have
more views than ``k_max`` shows no fall and is left off: the gate errs towards plain search.

Cost: ``sample`` searches for the sampled rows and at most ``sample × k_max`` for their
neighbours, through the index's own search (approximate at scale); nothing N×N. Cached per index
generation (``CACHE/graph/GEN-sS-kK.json``) and memoised by the caller.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from matchlens.fileio import atomic_write
from matchlens.rerank.base import RerankContext

__all__ = ["GraphProfile", "K_GRID", "MIN_DROP", "MIN_NEIGHBOURHOOD", "MIN_RECIPROCITY", "augmented_scores", "graph_profile",
           "measure_profile"]

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]

K_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# Chosen on generated collections (see the module docstring), not on the evaluation sets: the
# demo's photos in 16 views each among 150 distractors peak at 0.81 at k = 16 and fall to 0.68 at
# k = 32 (DBA and diffusion with 16 neighbours gain there); in 4 views each they peak at 0.61 at
# k = 3 (diffusion loses 34 points there); synthetic clusters of 16 views (tests) peak at 0.90 and
# fall by 0.15; groups of 3 peak at k = 2; vectors with no groups only rise (0.45 to 0.90).
MIN_RECIPROCITY = 0.7
MIN_DROP = 0.05
MIN_NEIGHBOURHOOD = 6
_FORMAT = 3  # bump when the measurement changes, so stale cache files are not reused


@dataclass(frozen=True)
class GraphProfile:
    """What was measured of one collection's kNN graph (see the module docstring)."""

    images: int
    sampled: int
    reciprocity: dict[int, float] = field(default_factory=dict)  # k -> chance-corrected mutual-kNN rate
    neighbourhood: int = 0  # estimated other views per image
    gap: float = 0.0        # median similarity drop from the 1st to the neighbourhood-th neighbour

    def supports(self, min_neighbourhood: int = MIN_NEIGHBOURHOOD) -> bool:
        """True when images have enough reciprocal neighbours for DBA and diffusion to average over."""
        return self.neighbourhood >= min_neighbourhood

    def describe(self) -> str:
        """One line: the neighbourhood estimate and the reciprocity curve."""
        curve = " ".join(f"{k}:{r:.2f}" for k, r in self.reciprocity.items())
        return (f"neighbourhood {self.neighbourhood} (reciprocity by k {curve}; gap {self.gap:.3f}; "
                f"{self.sampled} of {self.images} rows sampled)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the cache file)."""
        out = asdict(self)
        out["reciprocity"] = {str(k): v for k, v in self.reciprocity.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphProfile:
        """The inverse of :meth:`to_dict`."""
        return cls(images=int(data["images"]), sampled=int(data["sampled"]),
                   reciprocity={int(k): float(v) for k, v in data["reciprocity"].items()},
                   neighbourhood=int(data["neighbourhood"]), gap=float(data["gap"]))


def measure_profile(vectors: np.ndarray, search: SearchFn, sample: int = 256, k_max: int = 32,
                    min_reciprocity: float = MIN_RECIPROCITY, seed: int = 0) -> GraphProfile:
    """Measure the reciprocity curve and neighbourhood size of ``vectors`` with ``search``
    (``(queries, k) -> (scores, rows)`` over the same vectors)."""
    n = len(vectors)
    k_max = min(k_max, n - 2)  # k = n - 1 makes every pair reciprocal: nothing to measure
    if k_max < 1:
        return GraphProfile(images=n, sampled=0)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    sims, found = _neighbours(vectors, rows, search, k_max)
    others = np.unique(found[found >= 0])
    other_sims, _ = _neighbours(vectors, others, search, k_max)
    where = np.searchsorted(others, np.maximum(found, 0))
    curve = {k: _reciprocity(sims, found, other_sims[where], k, n) for k in K_GRID if k <= k_max}
    size = _peak(curve, min_reciprocity)
    gap = float(np.median(sims[:, 0] - sims[:, max(size, 1) - 1]))
    return GraphProfile(images=n, sampled=len(rows), reciprocity=curve, neighbourhood=size, gap=round(gap, 4))


def _peak(curve: dict[int, float], min_reciprocity: float) -> int:
    """The k where reciprocity peaks, when the peak is high enough and the curve falls after it; else 0."""
    peak = max(curve, key=lambda k: (curve[k], -k))  # the first of equal maxima
    fall = curve[peak] - curve[max(curve)]
    return peak if curve[peak] >= min_reciprocity and fall >= MIN_DROP else 0


def _neighbours(vectors: np.ndarray, rows: np.ndarray, search: SearchFn, k: int,
                batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, rows) of the ``k`` nearest other images of each row, best first (-1: none)."""
    sims = np.full((len(rows), k), -np.inf, dtype=np.float32)
    found = np.full((len(rows), k), -1, dtype=np.int64)
    for start in range(0, len(rows), batch):
        own = rows[start:start + batch]
        scores, ids = search(np.ascontiguousarray(vectors[own], dtype=np.float32), k + 1)
        for i, (row, s, r) in enumerate(zip(own, scores, ids)):
            keep = (r != row) & (r >= 0)  # the row itself is not its own neighbour
            got = min(k, int(keep.sum()))
            sims[start + i, :got], found[start + i, :got] = s[keep][:got], r[keep][:got]
    return sims, found


def _reciprocity(sims: np.ndarray, found: np.ndarray, their_sims: np.ndarray, k: int, n: int) -> float:
    """Chance-corrected share of (i, j in kNN(i)) with i in kNN(j).

    i is among j's k nearest exactly when sim(i, j) reaches j's k-th neighbour similarity, so
    j's list need not contain i's id (ties count as reciprocal)."""
    head = found[:, :k] >= 0
    mutual = (sims[:, :k] >= their_sims[:, :k, k - 1]) & head
    rate = float(mutual.sum() / max(1, head.sum()))
    chance = k / (n - 1)  # a random k-NN graph's reciprocity
    return round((rate - chance) / (1.0 - chance), 4)


def graph_profile(ctx: RerankContext, sample: int = 256, k_max: int = 32) -> GraphProfile:
    """The profile of ``ctx``'s generation: read from ``ctx.cache_dir("graph")`` or measured and
    written there (nothing is written when the cache folder is None)."""
    folder = ctx.cache_dir("graph")
    path = Path(folder) / f"{ctx.generation}-s{sample}-k{k_max}-v{_FORMAT}.json" if folder is not None else None
    vectors = ctx.vectors
    if path is not None and path.is_file():
        try:
            cached = GraphProfile.from_dict(json.loads(path.read_text()))
            if cached.images == len(vectors):
                return cached
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache is only a cache: measure again below
    profile = measure_profile(vectors, ctx.search, sample, k_max)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, "w") as handle:
                json.dump(profile.to_dict(), handle)
        except OSError:
            pass  # caching is an optimisation; the profile in hand is still right
    return profile


def augmented_scores(ctx: RerankContext, vector: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Scores of ``rows`` against their DBA-augmented vectors: q·L2(Σ_{i=0..k} (k - i)/k · d_{j(i)}),
    with j(0) = j and j(1..k) its nearest neighbours — stored DBA (:mod:`matchlens.rerank.dba`)
    computed for the shortlist only, so it can be switched per query and costs one batched search."""
    vectors = ctx.vectors
    own = np.asarray(rows, dtype=np.int64)
    _, found = ctx.search(np.ascontiguousarray(vectors[own], dtype=np.float32), k + 1)
    neighbours = np.concatenate([own[:, None], _others(found, own, k)], axis=1)
    weights = (k - np.arange(k + 1, dtype=np.float64)) / k
    stacked = np.asarray(vectors[neighbours.ravel()], dtype=np.float64).reshape(len(own), k + 1, -1)
    mixed = np.einsum("i,rid->rd", weights, stacked)
    mixed /= np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True), 1e-12)
    return (mixed @ np.asarray(vector, dtype=np.float64)).astype(np.float32)


def _others(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` neighbours of each row other than itself (a short list repeats the row,
    whose weight then goes to itself)."""
    out = np.repeat(own[:, None], k, axis=1)
    for i, (row, ids) in enumerate(zip(own, found)):
        others = ids[(ids != row) & (ids >= 0)][:k]
        out[i, :len(others)] = others
    return out
