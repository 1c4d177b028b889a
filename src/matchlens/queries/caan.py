"""CAAN (Zhang et al., CVPR 2020): context-aware attention with inter- and intra-modal attention,
as a re-ranker of the joint embedding's shortlist (``--rerank caan:k=100``).

For regions ``V`` (n × h) and words ``U`` (m × h, a bi-GRU's mean of both directions, eq. 4):

* ``H = tanh(V K Uᵀ)`` (eq. 7); inter-modal attention ``H^uv = [H]_+ / ‖[H_·j]_+‖`` over regions,
  ``H^vu = [H]_+ / ‖[H_i·]_+‖`` over words (eq. 12-13);
* semantics-based intra-modal attention (SA, eq. 16-17): ``H^v`` = cosines of the rows of ``H^uv``,
  ``H^u`` = cosines of the columns of ``H^vu``;
* ``f = softmax(w_v tanh(H^v V Q1 + H^uv U Q2))``, ``g = softmax(w_u tanh(H^u U Q3 + H^vuᵀ V Q4))``
  (eq. 8-11); ``v̂ = Σ f_i v_i``, ``û = Σ g_j u_j`` (eq. 5-6), score ``S = ⟨v̂, û⟩`` of the
  L2-normalised pair (a cosine, so the margin means the same for every pair);
* bidirectional hinge with hardest negatives (eq. 19): :func:`matchlens.queries.joint.hinge_loss`
  (``hardest=False`` is eq. 18, the sum over negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from matchlens.queries.text_model import CROSS_MODELS
from matchlens.queries.text_rerank import CrossModalReranker, CrossModel, masked_softmax
from matchlens.rerank import RERANKERS

__all__ = ["CAAN", "CAANReranker"]


@CROSS_MODELS.register("caan")
class CAAN(CrossModel):
    """Context-aware attention network scoring (text, image) pairs by a cosine."""

    def __init__(self, region_dim: int, word_dim: int, hidden: int = 128, z: int = 64) -> None:
        super().__init__(region_dim, word_dim, hidden)
        self.config["z"] = z
        self.K = nn.Linear(hidden, hidden, bias=False)
        self.Q1, self.Q2 = nn.Linear(hidden, z, bias=False), nn.Linear(hidden, z, bias=False)
        self.Q3, self.Q4 = nn.Linear(hidden, z, bias=False), nn.Linear(hidden, z, bias=False)
        self.w_v, self.w_u = nn.Linear(z, 1, bias=False), nn.Linear(z, 1, bias=False)

    def match(self, regions: torch.Tensor, region_mask: torch.Tensor, words: torch.Tensor,
              word_mask: torch.Tensor) -> torch.Tensor:
        """(Nt, Ni) cosines of the attended image and text of every pair."""
        V, U = self.streams(regions, words, word_mask)              # (Ni, n, h), (Nt, m, h)
        both = region_mask[None, :, :, None] * word_mask[:, None, None, :]  # (Nt, Ni, n, m)
        H = torch.tanh(torch.einsum("inh,tmh->tinm", self.K(V), U)) * both
        pos = H.clamp_min(0)
        H_uv = pos / pos.norm(dim=2, keepdim=True).clamp_min(1e-6)  # word-to-region, normalised over regions
        H_vu = pos / pos.norm(dim=3, keepdim=True).clamp_min(1e-6)  # region-to-word, normalised over words
        rows = F.normalize(H_uv, dim=3)
        cols = F.normalize(H_vu, dim=2)
        H_v = rows @ rows.transpose(2, 3)                           # (Nt, Ni, n, n)
        H_u = cols.transpose(2, 3) @ cols                           # (Nt, Ni, m, m)
        f = torch.tanh(H_v @ self.Q1(V)[None] + H_uv @ self.Q2(U)[:, None])          # (Nt, Ni, n, z)
        g = torch.tanh(H_u @ self.Q3(U)[:, None] + H_vu.transpose(2, 3) @ self.Q4(V)[None])  # (Nt, Ni, m, z)
        f_w = masked_softmax(self.w_v(f).squeeze(-1), region_mask[None], dim=2)
        g_w = masked_softmax(self.w_u(g).squeeze(-1), word_mask[:, None], dim=2)
        v_hat = torch.einsum("tin,inh->tih", f_w, V)
        u_hat = torch.einsum("tim,tmh->tih", g_w, U)
        return (F.normalize(v_hat, dim=-1) * F.normalize(u_hat, dim=-1)).sum(-1)


@RERANKERS.register("caan")
class CAANReranker(CrossModalReranker):
    """CAAN's score on the first ``k`` of a text query's shortlist (needs a text model with a caan
    part: ``matchlens train-text ... --model caan``)."""
