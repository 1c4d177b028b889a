"""Text only, TIRG's other baseline: the text mapped into the image space (the reference is ignored)."""

from __future__ import annotations

import torch

from matchlens.queries.composers.base import COMPOSERS, Composer, mlp


@COMPOSERS.register("text")
class TextOnly(Composer):
    """``φ_xt = MLP(φ_t)``: the modification text alone."""

    uses_image = False

    def __init__(self, image_dim: int, text_dim: int, hidden: int | None = None) -> None:
        super().__init__(image_dim, text_dim, hidden)
        self.mlp = mlp(self.text_dim, self.hidden, self.image_dim)

    def compose(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.mlp(text)
