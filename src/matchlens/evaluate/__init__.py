"""Evaluation: per-query retrieval metrics (AP, P@k, AP@k, Recall@k, UKBench N-S) and their mean."""

from matchlens.evaluate.metrics import (
    average_precision,
    average_precision_at_k,
    mean_average_precision,
    ns_score,
    precision_at_k,
    recall_at_k,
)

__all__ = [
    "average_precision",
    "average_precision_at_k",
    "mean_average_precision",
    "ns_score",
    "precision_at_k",
    "recall_at_k",
]
