"""The multi-metric 4D correlation tensor of P0 (eqs. 1–2).

``T[c, i, j, k, l] = φ_c(target patch (i, j), query patch (k, l))`` for each metric φ_c of the
configured set; shape ``(B, |Φ|, m, n, m, n)``, target indices first, query indices last.
Distances are divided by their value for unit-per-dimension differences (√D for L2, D for L1)
so the channels have comparable ranges whatever the descriptor length.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from matchlens.errors import ConfigError
from matchlens.registry import Registry

Metric = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
METRICS: Registry[Metric] = Registry("patch metric")


@METRICS.register("cosine")
def cosine(t: torch.Tensor, q: torch.Tensor, shrinkage: float = 0.5) -> torch.Tensor:
    """Cosine similarity of every target patch with every query patch: (B, Nt, Nq)."""
    return F.normalize(t, dim=-1, eps=1e-8) @ F.normalize(q, dim=-1, eps=1e-8).transpose(1, 2)


@METRICS.register("euclidean")
def euclidean(t: torch.Tensor, q: torch.Tensor, shrinkage: float = 0.5) -> torch.Tensor:
    """L2 distance / √D."""
    return torch.cdist(t, q, p=2) / t.shape[-1] ** 0.5


@METRICS.register("manhattan")
def manhattan(t: torch.Tensor, q: torch.Tensor, shrinkage: float = 0.5) -> torch.Tensor:
    """L1 distance / D."""
    return torch.cdist(t, q, p=1) / t.shape[-1]


@METRICS.register("mahalanobis")
def mahalanobis(t: torch.Tensor, q: torch.Tensor, shrinkage: float = 0.5) -> torch.Tensor:
    """Mahalanobis distance / √D under the pair's own patch covariance, shrunk towards the identity.

    Σ = (1 − s)·S + s·(tr S / D)·I with S the covariance of the pair's 2mn patches (fewer samples
    than dimensions: S alone is singular). Computed by whitening with the Cholesky factor of Σ.
    """
    both = torch.cat([t, q], dim=1)
    centred = both - both.mean(dim=1, keepdim=True)
    dim = both.shape[-1]
    cov = centred.transpose(1, 2) @ centred / max(both.shape[1] - 1, 1)
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp(min=1e-6)[:, None, None]
    eye = torch.eye(dim, dtype=both.dtype, device=both.device)
    sigma = (1 - shrinkage) * cov + shrinkage * scale * eye
    chol = torch.linalg.cholesky(sigma)
    # Whitened x' = L⁻¹ x  ⇒  ‖x' − y'‖² = (x − y)ᵀ Σ⁻¹ (x − y).
    white = torch.linalg.solve_triangular(chol, both.transpose(1, 2), upper=False).transpose(1, 2)
    n_t = t.shape[1]
    return torch.cdist(white[:, :n_t], white[:, n_t:], p=2) / dim ** 0.5


def correlation_tensor(target: torch.Tensor, query: torch.Tensor, rows: int, cols: int,
                       metrics: Sequence[str], shrinkage: float = 0.5) -> torch.Tensor:
    """Stack the metrics into ``(B, |Φ|, rows, cols, rows, cols)`` from ``(B, rows*cols, D)`` descriptors."""
    if target.shape != query.shape or target.ndim != 3 or target.shape[1] != rows * cols:
        raise ConfigError(f"patch descriptors must both be (B, {rows * cols}, D); got {tuple(target.shape)} "
                          f"and {tuple(query.shape)}")
    target, query = target.double(), query.double()  # distances of near-equal patches need the precision
    channels = [METRICS.get(name)(target, query, shrinkage) for name in metrics]
    out = torch.stack(channels, dim=1).float()
    return out.view(out.shape[0], len(metrics), rows, cols, rows, cols)
