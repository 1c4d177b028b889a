"""Concatenation, TIRG's first baseline: ``φ_xt = MLP([φ_x, φ_t])`` (two layers, ReLU,
batch-norm, dropout 0.1)."""

from __future__ import annotations

import torch

from matchlens.queries.composers.base import COMPOSERS, Composer, mlp


@COMPOSERS.register("concat")
class Concat(Composer):
    """A two-layer MLP over the concatenated image and text features."""

    def __init__(self, image_dim: int, text_dim: int, hidden: int | None = None) -> None:
        super().__init__(image_dim, text_dim, hidden)
        self.mlp = mlp(self.image_dim + self.text_dim, self.hidden, self.image_dim, dropout=0.1)

    def compose(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([image, text], dim=1))
