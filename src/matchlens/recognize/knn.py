"""The retrieval-only baseline: identify a query by a similarity-weighted vote of its nearest
*labelled* index images (``matchlens search IDX QUERY --identify knn:labels.csv``).

The ranked results come from the search pipeline; results without a label (distractors) and the
query image itself are skipped; the first ``k`` labelled results vote with weight
``max(score, 0)``; the confidence is the winner's share of the vote.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from matchlens.recognize.labels import read_labelled
from matchlens.recognize.model import Prediction

__all__ = ["KnnVote", "knn_predict", "vote"]


def vote(neighbour_labels: Sequence[str], scores: Sequence[float], threshold: float = 0.5, top: int = 3) -> Prediction:
    """The weighted vote of labelled neighbours (best first); none: an empty, uncertain prediction."""
    if not neighbour_labels:
        return Prediction("", 0.0, [], True, source="knn")
    weights: dict[str, float] = defaultdict(float)
    for label, score in zip(neighbour_labels, scores):
        weights[label] += max(float(score), 0.0) + 1e-6  # +ε: a zero-score neighbour still counts once
    total = sum(weights.values())
    ranked = sorted(((c, w / total) for c, w in weights.items()), key=lambda cw: -cw[1])[:top]
    return Prediction(ranked[0][0], ranked[0][1], ranked, ranked[0][1] < threshold, source="knn")


def knn_predict(similarities: np.ndarray, labels: np.ndarray, classes: Sequence[str], k: int = 10) -> list[Prediction]:
    """Votes for every row of a (queries × labelled) similarity matrix (benchmarks)."""
    out = []
    for row in similarities:
        order = np.argsort(-row)[:k]
        out.append(vote([classes[int(labels[i])] for i in order], row[order].tolist()))
    return out


class KnnVote:
    """Labels of index images by path (resolved) and by file name, and the vote over results."""

    def __init__(self, labels: dict[str, str], k: int = 10, threshold: float = 0.5) -> None:
        self.by_path = labels
        self.by_name = {Path(p).name: c for p, c in labels.items()}
        self.k, self.threshold = k, threshold

    @classmethod
    def from_source(cls, source: str | Path, k: int = 10) -> "KnnVote":
        """From a labels CSV or a class-folder tree (as ``train-recognizer`` reads them)."""
        labelled = read_labelled(source)
        return cls({p: labelled.classes[int(c)] for p, c in zip(labelled.paths, labelled.labels)}, k)

    def label_of(self, path: str) -> str | None:
        """The label of an index image, or None for an unlabelled one."""
        resolved = str(Path(path).expanduser().resolve())
        return self.by_path.get(resolved, self.by_name.get(Path(path).name))

    def predict(self, results: Iterable, query: str | None = None) -> Prediction:
        """Vote over ranked results (objects with ``path`` and ``score``), skipping the query itself."""
        skip = str(Path(query).expanduser().resolve()) if query else None
        labels, scores = [], []
        for result in results:
            label = self.label_of(result.path)
            if label is None or str(Path(result.path).expanduser().resolve()) == skip:
                continue
            labels.append(label)
            scores.append(result.score)
            if len(labels) == self.k:
                break
        return vote(labels, scores, self.threshold)
