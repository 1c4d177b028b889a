"""FiLM (Perez et al. 2018) as TIRG compares it: the text predicts a feature-wise affine
transformation of the reference's descriptor, ``φ_xt = γ(φ_t) ⊙ φ_x + β(φ_t)``."""

from __future__ import annotations

import torch
from torch import nn

from matchlens.queries.composers.base import COMPOSERS, Composer


@COMPOSERS.register("film")
class FiLM(Composer):
    """Feature-wise linear modulation: ``γ(φ_t) ⊙ φ_x + β(φ_t)`` (γ starts at 1, β at 0)."""

    def __init__(self, image_dim: int, text_dim: int, hidden: int | None = None) -> None:
        super().__init__(image_dim, text_dim, hidden)
        self.gamma = nn.Linear(self.text_dim, self.image_dim)
        self.beta = nn.Linear(self.text_dim, self.image_dim)
        for layer in (self.gamma, self.beta):  # start from the identity: the reference itself
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def compose(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return (1.0 + self.gamma(text)) * image + self.beta(text)
