"""Image only, TIRG's lower baseline: the reference's own descriptor (the text is ignored)."""

from __future__ import annotations

import torch

from matchlens.queries.composers.base import COMPOSERS, Composer


@COMPOSERS.register("image")
class ImageOnly(Composer):
    """``φ_xt = φ_x``: a plain image search with the reference (nothing to learn)."""

    uses_text = False

    def compose(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return image
