"""Losses for retrieval fine-tuning, on L2-normalised descriptors (LITERATURE.md "Fine-tuning").

* contrastive (P3 eq. 2): for a pair at distance ``d``, ``½·d²`` if it matches (``Y = 1``) and
  ``½·max(0, τ - d)²`` if not, summed over the pairs of a tuple; ``τ = 0.7`` in P3;
* triplet: ``Σ_n max(0, m + ||a-p||² - ||a-n||²)`` over the negatives of a tuple (squared
  distances as in cirtorch's ``TripletLoss``); ``m = 0.1``;
* NT-Xent (SimCLR), for the self-supervised option: two views of each image must find each
  other among the ``2B - 1`` other views of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from matchlens.errors import ConfigError
from matchlens.registry import Registry

__all__ = ["LOSSES", "contrastive_loss", "nt_xent_loss", "triplet_loss", "tuple_loss"]

CONTRASTIVE_MARGIN = 0.7
TRIPLET_MARGIN = 0.1


def contrastive_loss(anchor: torch.Tensor, others: torch.Tensor, labels: torch.Tensor,
                     margin: float = CONTRASTIVE_MARGIN) -> torch.Tensor:
    """Contrastive loss of ``anchor`` (d,) against ``others`` (k, d); ``labels`` (k,) 1 = match, 0 = not."""
    dist = torch.linalg.vector_norm(others - anchor.unsqueeze(0), dim=1)
    labels = labels.to(dist.dtype)
    loss = 0.5 * labels * dist.pow(2) + 0.5 * (1 - labels) * torch.clamp(margin - dist, min=0).pow(2)
    return loss.sum()


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                 margin: float = TRIPLET_MARGIN) -> torch.Tensor:
    """Triplet loss of ``anchor`` (d,) and ``positive`` (d,) against each of ``negatives`` (k, d)."""
    d_pos = (anchor - positive).pow(2).sum()
    d_neg = (negatives - anchor.unsqueeze(0)).pow(2).sum(dim=1)
    return torch.clamp(margin + d_pos - d_neg, min=0).sum()


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy for two views ``z1``, ``z2`` (B, d) of B images."""
    if z1.shape != z2.shape or z1.shape[0] < 2:
        raise ConfigError("self-supervised training needs batches of at least 2 images")
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # a view is not its own positive
    b = z1.shape[0]
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, target)


# The registry holds each loss over one tuple (rows: query, positive, negatives); its default
# margin is the signature's, so the names and margins are written once, here.
LOSSES: Registry = Registry("loss")


@LOSSES.register("contrastive")
def contrastive_tuple_loss(descriptors: torch.Tensor, margin: float = CONTRASTIVE_MARGIN) -> torch.Tensor:
    """Contrastive loss of the query against the positive (label 1) and the negatives (label 0)."""
    labels = torch.zeros(len(descriptors) - 1, device=descriptors.device)
    labels[0] = 1
    return contrastive_loss(descriptors[0], descriptors[1:], labels, margin)


@LOSSES.register("triplet")
def triplet_tuple_loss(descriptors: torch.Tensor, margin: float = TRIPLET_MARGIN) -> torch.Tensor:
    """Triplet loss of (query, positive) against each negative."""
    return triplet_loss(descriptors[0], descriptors[1], descriptors[2:], margin)


def tuple_loss(name: str, descriptors: torch.Tensor, margin: float | None = None) -> torch.Tensor:
    """Loss of one tuple: ``descriptors`` rows are (query, positive, negative_1 … negative_N);
    ``margin`` None: the loss's default."""
    loss = LOSSES.get(name)  # a clear error for an unknown name
    return loss(descriptors) if margin is None else loss(descriptors, margin)
