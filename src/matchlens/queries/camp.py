"""CAMP (Wang et al., ICCV 2019): cross-modal adaptive message passing, as a re-ranker of the
joint embedding's shortlist (``--rerank camp:k=100``).

For a (sentence, image) pair with word features ``T`` (L × h) and region features ``V`` (R × h):

* message aggregation (eq. 1-4): affinity ``A = (W̃v V)(W̃t T)ᵀ``; each word attends over regions,
  ``Ṽ = softmax_r(Aᵀ/√h) V``, each region over words, ``T̃ = softmax_l(A/√h) T``;
* gated fusion (eq. 5-9): ``g = σ(v ⊙ t̃)``, ``V̂ = F_v(g ⊙ (V + T̃)) + V`` and symmetrically
  ``T̂ = F_t(σ(ṽ ⊙ t) ⊙ (T + Ṽ)) + T`` (``gate=False``: the "fusion w/o gates" ablation, g = 1);
* attention pooling (eq. 10-11) to ``v*``, ``t*`` and the matching score ``m = σ(MLP(v* + t*))``
  (eq. 13), trained with the hardest-negative binary cross-entropy (eq. 14) —
  :func:`bce_loss` with ``hardest=False`` is the "BCE w/o hardest" ablation (mean over negatives).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from matchlens.queries.text_model import CROSS_MODELS
from matchlens.queries.text_rerank import CrossModalReranker, CrossModel, masked_softmax
from matchlens.rerank import RERANKERS

__all__ = ["CAMP", "CAMPReranker", "bce_loss"]


@CROSS_MODELS.register("camp")
class CAMP(CrossModel):
    """Cross-modal message aggregation, gated fusion, fused matching score (a logit)."""

    def __init__(self, region_dim: int, word_dim: int, hidden: int = 128, gate: bool = True) -> None:
        super().__init__(region_dim, word_dim, hidden)
        self.config["gate"] = gate
        self.gate = gate
        self.att_v = nn.Linear(hidden, hidden, bias=False)  # W̃v
        self.att_t = nn.Linear(hidden, hidden, bias=False)  # W̃t
        self.fuse_v = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())  # F_v
        self.fuse_t = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())  # F_t
        self.pool_v = nn.Linear(hidden, 1)  # W_v of eq. 10
        self.pool_t = nn.Linear(hidden, 1)  # W_t of eq. 11
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def match(self, regions: torch.Tensor, region_mask: torch.Tensor, words: torch.Tensor,
              word_mask: torch.Tensor) -> torch.Tensor:
        """(Nt, Ni) matching logits of every text with every image."""
        V, T = self.streams(regions, words, word_mask)           # (Ni, R, h), (Nt, L, h)
        scale = math.sqrt(self.hidden)
        A = torch.einsum("irh,tlh->tirl", self.att_v(V), self.att_t(T)) / scale  # (Nt, Ni, R, L)
        rm = region_mask[None, :, :, None]                          # (1, Ni, R, 1)
        wm = word_mask[:, None, None, :]                            # (Nt, 1, 1, L)
        to_regions = masked_softmax(A, rm, dim=2)                   # each word over regions
        to_words = masked_softmax(A, wm, dim=3)                     # each region over words
        V_msg = torch.einsum("tirl,irh->tilh", to_regions, V)       # Ṽ: visual message per word
        T_msg = torch.einsum("tirl,tlh->tirh", to_words, T)         # T̃: textual message per region
        Vx, Tx = V[None].expand_as(T_msg), T[:, None].expand_as(V_msg)
        g_v = torch.sigmoid(Vx * T_msg) if self.gate else torch.ones_like(T_msg)
        g_t = torch.sigmoid(Tx * V_msg) if self.gate else torch.ones_like(V_msg)
        V_hat = self.fuse_v(g_v * (Vx + T_msg)) + Vx                # (Nt, Ni, R, h)
        T_hat = self.fuse_t(g_t * (Tx + V_msg)) + Tx                # (Nt, Ni, L, h)
        a_v = masked_softmax(self.pool_v(V_hat).squeeze(-1) / scale, region_mask[None], dim=2)
        a_t = masked_softmax(self.pool_t(T_hat).squeeze(-1) / scale, word_mask[:, None], dim=2)
        v_star = (a_v.unsqueeze(-1) * V_hat).sum(2)
        t_star = (a_t.unsqueeze(-1) * T_hat).sum(2)
        return self.mlp(v_star + t_star).squeeze(-1)


def bce_loss(logits: torch.Tensor, positive: torch.Tensor, hardest: bool = True) -> torch.Tensor:
    """CAMP eq. 14 on a (texts × images) logit matrix with the pairs on its diagonal: the positive
    and, per text and per image, the hardest negative; ``hardest=False``: the mean over negatives."""
    pos = F.softplus(-logits.diagonal())  # -log m(I, C)
    neg = F.softplus(logits)              # -log(1 - m)
    blocked = positive.bool() | torch.eye(*logits.shape, dtype=torch.bool)  # a pair is never its own negative
    if hardest:
        worst = logits.masked_fill(blocked, -1e4)
        return (2 * pos + F.softplus(worst.max(1).values) + F.softplus(worst.max(0).values)).mean()
    neg = neg.masked_fill(blocked, 0)
    count = (~blocked).sum(1).clamp_min(1), (~blocked).sum(0).clamp_min(1)
    return (2 * pos + neg.sum(1) / count[0] + neg.sum(0) / count[1]).mean()


@RERANKERS.register("camp")
class CAMPReranker(CrossModalReranker):
    """CAMP's matching score on the first ``k`` of a text query's shortlist (needs a text model
    with a camp part: ``matchlens train-text ... --model camp``)."""
