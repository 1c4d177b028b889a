"""Where training tuples come from: the images, which pairs match, and which images may be negatives.

Sources, chosen by name (``--positives``):

* ``gt`` - ground-truth groups of a dataset (gt.json or any official format that
  :func:`matchlens.io.formats.load_dataset` reads): each query of a training group with its
  positives; its junk is never used as a negative;
* ``folders`` - a folder per group (``ROOT/<group>/*.jpg``): every image is a query whose
  positives are the other images of its folder;
* ``sv`` - no labels: each image's nearest neighbours by the current descriptor are checked by
  spatial verification (RootSIFT + MAGSAC homography, :mod:`matchlens.local.verify`); verified
  pairs are positives and their connected components are groups;
* ``manifold`` - no labels: a mutual kNN graph and diffusion (:mod:`matchlens.rerank.diffusion`)
  give each anchor the neighbour that is close on the manifold but far in Euclidean rank (a hard
  positive, P1a §4.2 "mining on manifolds"); its top manifold neighbours are never negatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Callable, Sequence

import numpy as np

from matchlens.errors import ConfigError, SourceError
from matchlens.io.datasets import Dataset
from matchlens.io.images import load_image
from matchlens.local.features import extract_rootsift
from matchlens.local.verify import count_inliers, match_features
from matchlens.io.collection import scan_source
from matchlens.rerank.diffusion import build_knn_graph, diffuse

__all__ = ["TrainingSet", "from_dataset", "from_group_folders", "from_manifold", "from_verification",
           "holdout_images"]


@dataclass
class TrainingSet:
    """Images (index = image id), their groups (-1: a group of its own), the queries with their
    positives, the ids each query must never get as a negative, and the negative pool."""

    images: list[str]
    groups: np.ndarray
    positives: dict[int, list[int]]
    excluded: dict[int, set[int]]
    pool: list[int]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def queries(self) -> list[int]:
        return sorted(q for q, p in self.positives.items() if p)

    def pairs(self) -> list[tuple[int, int]]:
        """Every (query, positive) pair."""
        return [(q, p) for q in self.queries for p in self.positives[q]]

    def check(self) -> "TrainingSet":
        if not self.queries:
            raise SourceError(f"no training pairs found ({self.source}); nothing to train on")
        if not self.pool:
            raise SourceError(f"no candidate negatives ({self.source}); add images of other objects")
        return self


def holdout_images(dataset: Dataset, groups: set[str]) -> set[str]:
    """Names of every image that belongs to (is a query, positive or junk of) one of ``groups``."""
    names: set[str] = set()
    for query in dataset.queries:
        if query.group in groups:
            names |= {query.image, *query.positives, *query.junk}
    return names


def from_dataset(dataset: Dataset, train_groups: set[str] | None = None,
                 holdout_groups: AbstractSet[str] = frozenset()) -> TrainingSet:
    """Tuples from ground truth: queries of ``train_groups`` (all groups when None); images of
    ``holdout_groups`` are left out entirely (never queries, positives or negatives)."""
    known = {q.group for q in dataset.queries if q.group is not None}
    for name in (train_groups or set()) | set(holdout_groups):
        if name not in known:
            raise ConfigError(f"dataset {dataset.name} has no group {name!r}; groups: {', '.join(sorted(known))}")
    hidden = holdout_images(dataset, set(holdout_groups))
    names = [n for n in dataset.images if n not in hidden]
    ids = {n: i for i, n in enumerate(names)}
    groups = np.full(len(names), -1, np.int64)
    labels = {g: k for k, g in enumerate(sorted(known))}
    for query in dataset.queries:
        if query.group is not None:
            for name in (query.image, *query.positives):
                if name in ids:
                    groups[ids[name]] = labels[query.group]
    positives: dict[int, list[int]] = {}
    excluded: dict[int, set[int]] = {}
    for query in dataset.queries:
        if query.image not in ids or (train_groups is not None and query.group not in train_groups):
            continue
        q = ids[query.image]
        positives.setdefault(q, [])
        positives[q] += [ids[n] for n in sorted(query.positives) if n in ids and n != query.image]
        excluded.setdefault(q, {q}).update(ids[n] for n in query.positives | query.junk if n in ids)
    pool = list(range(len(names)))
    images = [str(dataset.image_path(n)) for n in names]
    return TrainingSet(images, groups, positives, excluded, pool, source="gt").check()


def from_group_folders(root: str | Path) -> TrainingSet:
    """Tuples from a folder per group: images of one subfolder match each other."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"'{root}' is not a folder of group folders")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    images: list[str] = []
    groups: list[int] = []
    for label, folder in enumerate(folders):
        for path in scan_source(folder):
            images.append(path)
            groups.append(label)
    if not images:
        raise SourceError(f"no images in the group folders of '{root}'")
    groups_arr = np.asarray(groups, np.int64)
    members = {g: [i for i in range(len(images)) if groups[i] == g] for g in set(groups)}
    positives = {i: [j for j in members[groups[i]] if j != i] for i in range(len(images))}
    excluded = {i: set(members[groups[i]]) for i in range(len(images))}
    return TrainingSet(images, groups_arr, positives, excluded, list(range(len(images))),
                       source="folders").check()


def from_verification(images: Sequence[str], vectors: np.ndarray, k: int = 5, min_inliers: int = 20,
                      max_side: int = 512, max_keypoints: int = 1000,
                      advance: Callable[[int], None] | None = None) -> TrainingSet:
    """Label-free tuples: kNN candidate pairs (by ``vectors``) kept when spatially verified."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    candidates = _knn_pairs(vectors, k)
    features: dict[int, object] = {}

    def feats(i: int):
        if i not in features:
            features[i] = extract_rootsift(load_image(images[i], max_side=2 * max_side), max_keypoints, max_side)
        return features[i]

    verified = []
    for i, j in candidates:
        a, b = feats(i), feats(j)
        src, dst = match_features(a, b, 0.8)
        scale_a, scale_b = min(1.0, max_side / max(a.size)), min(1.0, max_side / max(b.size))
        inliers = count_inliers(src * np.float32(scale_a), dst * np.float32(scale_b), "homography", "magsac", 4.0)
        if inliers >= min_inliers:
            verified.append((i, j))
        if advance:
            advance(1)
    n = len(images)
    positives: dict[int, list[int]] = {}
    for i, j in verified:
        positives.setdefault(i, []).append(j)
        positives.setdefault(j, []).append(i)
    graph = sp.coo_matrix((np.ones(len(verified)), tuple(np.array(verified, np.int64).T) if verified else ([], [])),
                          shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    groups = np.where(sizes[labels] > 1, labels, -1).astype(np.int64)
    excluded = {q: {j for j in range(n) if groups[j] == groups[q]} | {q} for q in positives}
    notes = [f"{len(verified)} of {len(candidates)} kNN pairs verified (>= {min_inliers} inliers)"]
    return TrainingSet(list(images), groups, positives, excluded, list(range(n)), source="sv", notes=notes).check()


def from_manifold(images: Sequence[str], vectors: np.ndarray, anchors: int = 100, k: int = 10,
                  candidates: int = 5, protect: int = 20, alpha: float = 0.99) -> TrainingSet:
    """Label-free tuples by manifold mining: for each of the ``anchors`` best-connected images,
    the positive is, among its ``candidates`` top neighbours by diffusion, the one with the worst
    Euclidean rank; its ``protect`` top manifold neighbours are never its negatives."""
    x = np.asarray(vectors, np.float32)
    n = len(x)
    graph = build_knn_graph(x, k=k, gamma=3.0)
    degree = np.asarray(graph.sum(axis=1)).ravel()
    chosen = [int(i) for i in np.argsort(-degree, kind="stable")[:anchors] if degree[i] > 0]
    euclid_rank = np.argsort(np.argsort(-(x[chosen] @ x.T), axis=1, kind="stable"), axis=1)
    positives: dict[int, list[int]] = {}
    excluded: dict[int, set[int]] = {}
    for row, i in enumerate(chosen):
        y = np.zeros(n)
        y[i] = 1.0
        f = diffuse(graph, y, alpha, 20, 1e-6)
        f[i] = -np.inf
        order = [int(j) for j in np.argsort(-f, kind="stable")[:protect] if np.isfinite(f[j]) and f[j] > 0]
        if not order:
            continue
        top = order[:candidates]
        positives[i] = [max(top, key=lambda j: euclid_rank[row, j])]
        excluded[i] = set(order) | {i}
    groups = np.full(n, -1, np.int64)
    notes = [f"{len(positives)} anchors with a manifold positive (mutual kNN k={k})"]
    return TrainingSet(list(images), groups, positives, excluded, list(range(n)), source="manifold",
                       notes=notes).check()


def _knn_pairs(vectors: np.ndarray, k: int, chunk: int = 1024) -> list[tuple[int, int]]:
    """Unordered pairs (i < j) where j is among i's ``k`` nearest neighbours or the reverse
    (``chunk`` rows at a time, so a large collection never holds its n × n similarities)."""
    x = np.asarray(vectors, np.float32)
    kk = min(k, len(x) - 1)
    if kk < 1:
        return []
    pairs: set[tuple[int, int]] = set()
    for start in range(0, len(x), chunk):
        sims = x[start:start + chunk] @ x.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf  # not its own neighbour
        near = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        for i in rows.tolist():
            pairs |= {(min(start + i, j), max(start + i, j)) for j in near[i].tolist()}
    return sorted(pairs)
