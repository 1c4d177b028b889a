"""TIRG (Vo et al. 2019): Text Image Residual Gating on the descriptor (the paper's fc variant).

``φ_xt = w_g · σ(W_g2 ReLU(BN(W_g1 [φ_x, φ_t]))) ⊙ φ_x + w_r · W_r2 ReLU(BN(W_r1 [φ_x, φ_t]))``:
the gate keeps what the text leaves alone of the reference's descriptor, the residual walks it
where the text says, so the result stays in the image space (eq. 1-3 of the paper).
"""

from __future__ import annotations

import torch
from torch import nn

from matchlens.queries.composers.base import COMPOSERS, Composer, mlp


@COMPOSERS.register("tirg")
class TIRG(Composer):
    """Gated residual composition: ``w_g·gate(φ_x, φ_t) ⊙ φ_x + w_r·res(φ_x, φ_t)``."""

    def __init__(self, image_dim: int, text_dim: int, hidden: int | None = None) -> None:
        super().__init__(image_dim, text_dim, hidden)
        joint = self.image_dim + self.text_dim
        self.gate = mlp(joint, self.hidden, self.image_dim)
        self.res = mlp(joint, self.hidden, self.image_dim)
        # w_g = 1, w_r = 10 at the start, as the authors' code: on unit descriptors the residual
        # must be able to move the query by a step the size of the descriptor itself
        self.weights = nn.Parameter(torch.tensor([1.0, 10.0]))

    def compose(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        joint = torch.cat([image, text], dim=1)
        gated = torch.sigmoid(self.gate(joint)) * image
        return self.weights[0] * gated + self.weights[1] * self.res(joint)
