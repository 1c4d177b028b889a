"""Validation during training: mAP of held-out queries, computed from in-memory descriptors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matchlens.evaluate.metrics import average_precision, mean_average_precision
from matchlens.io.datasets import Dataset

__all__ = ["ValidationSet", "validation_from_dataset"]


@dataclass(frozen=True)
class ValidationSet:
    """Database images and queries ``(query index, positive indices, junk indices)`` into them."""

    images: list[str]
    queries: list[tuple[int, frozenset[int], frozenset[int]]]

    def mean_ap(self, vectors: np.ndarray) -> float:
        """mAP of every query ranked against all images by inner product (the query is ignored)."""
        sims = vectors[[q for q, _, _ in self.queries]] @ vectors.T
        aps = []
        for row, (q, positives, junk) in enumerate(self.queries):
            ranking = np.argsort(-sims[row], kind="stable").tolist()
            aps.append(average_precision(ranking, positives, junk | {q}))
        return mean_average_precision(aps)


def validation_from_dataset(dataset: Dataset, groups: set[str] | None = None) -> ValidationSet:
    """The queries of ``groups`` (all when None) of ``dataset``, against all its images."""
    ids = {n: i for i, n in enumerate(dataset.images)}
    queries = []
    for query in dataset.queries:
        if groups is not None and query.group not in groups:
            continue
        if query.image not in ids:
            continue  # a query outside the database images cannot be described here
        positives = frozenset(ids[n] for n in query.positives if n in ids and n != query.image)
        if positives:
            queries.append((ids[query.image], positives, frozenset(ids[n] for n in query.junk if n in ids)))
    return ValidationSet([str(dataset.image_path(n)) for n in dataset.images], queries)
