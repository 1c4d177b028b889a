"""Hard-negative mining: for each query, the most similar images that do not match it, at most
one per group (P3: "nearest neighbours by descriptor from other clusters, at most one per
cluster"), so a tuple's negatives show different objects rather than N photos of one."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

__all__ = ["mine_negatives"]


def mine_negatives(
    query_vectors: np.ndarray,
    query_groups: Sequence[int] | np.ndarray,
    pool_vectors: np.ndarray,
    pool_ids: Sequence[int] | np.ndarray,
    pool_groups: Sequence[int] | np.ndarray,
    count: int,
    excluded: Sequence[Collection[int]] | None = None,
) -> list[list[int]]:
    """The ``count`` hardest negatives of each query, as image ids from ``pool_ids``, hardest first.

    A candidate is skipped when it is in the query's group (groups ``>= 0``; ``-1`` means an
    image of its own group), when its id is in ``excluded[q]`` (the query itself, its
    positives and junk), or when a harder negative of its group was already taken.
    Similarity is the inner product of the (L2-normalised) descriptors.
    """
    ids = np.asarray(pool_ids, dtype=np.int64)
    groups = np.asarray(pool_groups, dtype=np.int64)
    sims = np.asarray(query_vectors, np.float32) @ np.asarray(pool_vectors, np.float32).T
    out: list[list[int]] = []
    for q in range(len(sims)):
        skip = set(excluded[q]) if excluded is not None else set()
        out.append(_hardest(sims[q], ids, groups, int(query_groups[q]), skip, count))
    return out


def _hardest(sims: np.ndarray, ids: np.ndarray, groups: np.ndarray, own: int, skip: set[int],
             count: int) -> list[int]:
    chosen: list[int] = []
    used: set[tuple[str, int]] = set()
    for j in np.argsort(-sims, kind="stable"):
        image, group = int(ids[j]), int(groups[j])
        key = ("group", group) if group >= 0 else ("image", image)
        if image in skip or (own >= 0 and group == own) or key in used:
            continue
        chosen.append(image)
        used.add(key)
        if len(chosen) == count:
            break
    return chosen
