"""TIRG's two losses (section 3.3 of the paper) over a batch of composed queries and their targets.

With ``B`` queries ψ_i and targets φ_j⁺ (all unit vectors, similarities scaled by a learned ``s``):

* ``triplet`` (K = 2, M = B - 1, the soft triplet loss the paper uses on CSS):
  ``mean_i mean_{j≠i} log(1 + exp(s·⟨ψ_i, φ_j⁺⟩ - s·⟨ψ_i, φ_i⁺⟩))``;
* ``softmax`` (K = B, M = 1, the batch classification loss of Fashion-200k):
  ``mean_i -log softmax_j(s·⟨ψ_i, φ_j⁺⟩)_i``.

``same`` (B, B) marks pairs whose targets are the same image (or count as correct): they are
never negatives of each other.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from matchlens.registry import Registry

__all__ = ["COMPOSER_LOSSES", "batch_softmax", "soft_triplet"]

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
COMPOSER_LOSSES: Registry[Loss] = Registry("composer loss")


def _logits(queries: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return scale * queries @ targets.T


@COMPOSER_LOSSES.register("triplet")
def soft_triplet(queries: torch.Tensor, targets: torch.Tensor, same: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """K = 2: every query against each negative target of the batch, ``softplus(s_neg - s_pos)``."""
    logits = _logits(queries, targets, scale)
    margin = logits - logits.diagonal()[:, None]
    negatives = ~same
    if not bool(negatives.any()):
        return logits.sum() * 0.0
    return F.softplus(margin[negatives]).mean()


@COMPOSER_LOSSES.register("softmax")
def batch_softmax(queries: torch.Tensor, targets: torch.Tensor, same: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """K = B: cross-entropy of each query over the batch's targets, its own target the class."""
    logits = _logits(queries, targets, scale)
    eye = torch.eye(len(queries), dtype=torch.bool, device=queries.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))  # other copies of the target are no negatives
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))
