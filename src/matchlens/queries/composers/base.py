"""The composer interface: ``forward(image (B, D), text (B, T)) -> (B, D)`` unit query vectors."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from matchlens.errors import ConfigError
from matchlens.registry import Registry

__all__ = ["COMPOSERS", "Composer", "make_composer", "mlp"]


class Composer(nn.Module):
    """Maps a reference descriptor ``φ_x`` (B, D) and a text vector ``φ_t`` (B, T) to a query in
    the same D-dimensional space, L2-normalised (so it searches the index's stored vectors).

    Subclasses implement :meth:`compose`; ``uses_text`` / ``uses_image`` say which input matters
    (the baselines ignore one)."""

    name: ClassVar[str]
    uses_image: ClassVar[bool] = True
    uses_text: ClassVar[bool] = True

    def __init__(self, image_dim: int, text_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        if int(image_dim) < 1 or int(text_dim) < 1:
            raise ConfigError(f"composer {self.name!r}: dimensions must be >= 1, got {image_dim} and {text_dim}")
        self.image_dim, self.text_dim = int(image_dim), int(text_dim)
        self.hidden = int(hidden or image_dim)

    def params(self) -> dict[str, Any]:
        """What :func:`make_composer` needs to rebuild it (besides the state dict)."""
        return {"image_dim": self.image_dim, "text_dim": self.text_dim, "hidden": self.hidden}

    def compose(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, D) composed features, not normalised."""
        raise NotImplementedError

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, D) unit query vectors."""
        return nn.functional.normalize(self.compose(image, text), dim=1)


COMPOSERS: Registry[type[Composer]] = Registry("composer")


def make_composer(name: str, image_dim: int, text_dim: int, hidden: int | None = None) -> Composer:
    """A new composer ``name`` (one of :data:`COMPOSERS`)."""
    return COMPOSERS.get(name)(image_dim, text_dim, hidden)


def mlp(inputs: int, hidden: int, outputs: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear → BatchNorm → ReLU (→ Dropout) → Linear: the two-layer block TIRG's composers use."""
    layers: list[nn.Module] = [nn.Linear(inputs, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, outputs))
    return nn.Sequential(*layers)
