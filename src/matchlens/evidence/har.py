"""Hypersphere attention regulation (HAR, P0 §3.3, eqs. 5–9).

Every layer's feature map F_l is replaced by ``F_l ⊙ A_l`` (eq. 5). The mask A_l is a Gaussian
of the distance of each element's 4D coordinate x = (i, j, k, l) to a learnable centre c (4
parameters), with 2 learnable width parameters (eq. 6). The paper's equations did not survive in
our copy of the text; we read "a Gaussian distribution over the distance to the centre" with
its 2 parameters as mean μ and spread σ of that distance:

    A(x) = exp(−(‖x − c‖ − μ)² / (2σ²))

— a hypersphere shell of radius μ and thickness σ around c (μ = 0: a plain Gaussian blob).
Coordinates are normalised to [0, 1] per axis (cell centres). Eqs. 7–9 are the gradients of A
with respect to c, μ, σ: autograd computes them. σ is kept positive through softplus.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def grid_coordinates(shape: tuple[int, int, int, int]) -> torch.Tensor:
    """Normalised cell-centre coordinates of an m×n×m×n grid: ``(m, n, m, n, 4)``."""
    axes = [(torch.arange(s, dtype=torch.float32) + 0.5) / s for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def hypersphere_mask(coords: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor,
                     sigma: torch.Tensor) -> torch.Tensor:
    """Eq. 6: ``exp(−(‖x − c‖ − μ)² / 2σ²)`` for coordinates ``(..., 4)``."""
    distance = torch.linalg.vector_norm(coords - centre, dim=-1)
    return torch.exp(-((distance - radius) ** 2) / (2 * sigma ** 2))


def _inverse_softplus(value: float) -> float:
    return math.log(math.expm1(value))


class HAR(nn.Module):
    """One layer's learnable hypersphere mask (6 parameters: centre c ∈ R⁴, radius μ, width σ).

    ``forward(x)`` multiplies a feature map by the mask: for a 2D map of the (mn)×(mn) reshaped
    tensor the 4D mask is reshaped the same way and average-pooled to the map's size; for a 4D
    map ``(B, C, m, n, m, n)`` it applies directly.
    """

    coords: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, grid: tuple[int, int], init_sigma: float = 1.0) -> None:
        super().__init__()
        rows, cols = grid
        self.grid = (rows, cols)
        self.centre = nn.Parameter(torch.full((4,), 0.5))
        self.radius = nn.Parameter(torch.zeros(()))
        self._sigma = nn.Parameter(torch.tensor(_inverse_softplus(init_sigma)))
        self.register_buffer("coords", grid_coordinates((rows, cols, rows, cols)), persistent=False)

    @property
    def sigma(self) -> torch.Tensor:
        """σ > 0."""
        return F.softplus(self._sigma)

    def mask4d(self) -> torch.Tensor:
        """The mask on the m×n×m×n grid."""
        return hypersphere_mask(self.coords, self.centre, self.radius, self.sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask4d()
        if x.ndim == 6:
            return x * mask
        rows, cols = self.grid
        flat = mask.reshape(1, 1, rows * cols, rows * cols)
        if flat.shape[-2:] != x.shape[-2:]:
            flat = F.adaptive_avg_pool2d(flat, (x.shape[-2], x.shape[-1]))
        return x * flat
