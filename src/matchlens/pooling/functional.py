"""Global pooling of a CNN feature map, as plain functions (the maths; modules.py wraps them).

Every function takes a feature map ``x`` of shape ``(B, C, H, W)`` and returns a ``(B, C)`` tensor
that is **not** L2-normalised: the extractor normalises, so that multi-scale sums and whitening
see the raw pooled vector. The only normalisation inside a function is the one a definition
requires (R-MAC normalises each region before summing).

Notation follows LITERATURE.md, "Pooling": ``X_k`` is channel ``k`` of the map.
"""

from __future__ import annotations


import torch

from matchlens.pooling.regions import rmac_regions

__all__ = ["crow", "gem", "mac", "rmac", "rmac_regions", "spoc", "spoc_prior"]

# R-MAC grid constants of Tolias et al., as in cirtorch's ``rmac``.



def _check_map(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a feature map of shape (B, C, H, W), got {tuple(x.shape)}")


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activations of convolutions: ``f_k = max_{i,j} X_k(i,j)·1(X_k(i,j) > 0)``.

    Negative activations are clamped to 0 first, as in P3 eq. 1, so a channel that is negative
    everywhere pools to 0 (cirtorch's ``mac`` takes the plain max; the two agree after ReLU).
    """
    _check_map(x)
    return x.clamp(min=0).amax(dim=(-2, -1))


def spoc_prior(height: int, width: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
    """The SPoC Gaussian centre prior ``α`` as an ``(H, W)`` tensor.

    Cell ``(i, j)`` (row ``i`` in ``0..H-1``, column ``j`` in ``0..W-1``) sits at its centre
    ``(x, y) = (j + 0.5, i + 0.5)``; the map's centre is ``(W/2, H/2)``. Then
    ``α(i, j) = exp(-((x - W/2)² + (y - H/2)²) / (2σ²))`` with ``σ = min(W, H) / 6``, i.e. one
    third of the distance from the centre to the nearest border.
    """
    sigma = min(height, width) / 6.0
    ys = torch.arange(height, dtype=torch.float64) + 0.5 - height / 2.0
    xs = torch.arange(width, dtype=torch.float64) + 0.5 - width / 2.0
    sq_dist = ys[:, None] ** 2 + xs[None, :] ** 2
    # Built in float64 so the far-corner weights of large maps do not lose precision early.
    return torch.exp(-sq_dist / (2.0 * sigma**2)).to(dtype=dtype, device=device)


def spoc(x: torch.Tensor, centre_prior: bool = True) -> torch.Tensor:
    """Sum-pooled convolutional features: ``f_k = Σ_{i,j} α(i,j) X_k(i,j)``.

    With ``centre_prior`` the weights ``α`` are :func:`spoc_prior` (objects of interest tend to
    be near the image centre); without it ``α = 1`` and this is the plain sum over H and W.
    """
    _check_map(x)
    if not centre_prior:
        return x.sum(dim=(-2, -1))
    alpha = spoc_prior(x.shape[-2], x.shape[-1], dtype=x.dtype, device=x.device)
    return (x * alpha).sum(dim=(-2, -1))


def gem(x: torch.Tensor, p: float | torch.Tensor = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean: ``f_k = (mean_{i,j} max(X_k(i,j), eps)^p)^(1/p)``.

    ``p = 1`` is average pooling and ``p → ∞`` tends to MAC. ``p`` may be a float or a
    one-element tensor (e.g. an ``nn.Parameter``); the result is differentiable in ``p``. The
    clamp at ``eps`` keeps the fractional power defined (and its gradient finite) for
    non-positive activations.
    """
    _check_map(x)
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def _l2n(v: torch.Tensor, eps: float) -> torch.Tensor:
    return v / (torch.linalg.vector_norm(v, dim=1, keepdim=True) + eps)


def rmac(x: torch.Tensor, levels: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """Regional MAC: ``f = Σ_R MAC(X in R) / (‖MAC(X in R)‖₂ + eps)`` over :func:`rmac_regions`.

    Each region's MAC vector is L2-normalised (with ``eps`` added to the norm, as cirtorch)
    before the sum, so every region votes equally whatever its activation strength; the sum
    itself is returned unnormalised. Region MAC clamps at 0 like :func:`mac`.
    """
    _check_map(x)
    total = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)
    for y0, x0, h, w in rmac_regions(x.shape[-2], x.shape[-1], levels):
        total = total + _l2n(mac(x[..., y0:y0 + h, x0:x0 + w]), eps)
    return total


def crow(x: torch.Tensor, a: float = 2.0, b: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """Cross-dimensional weighting (Kalantidis et al.): spatial × channel weighted sum pooling.

    With ``K`` channels and ``X`` clamped at 0 (CroW is defined on ReLU outputs; a fractional
    power of a negative sum would be undefined):

    - spatial weight ``S = (S' / max(‖S'‖_a, eps))^(1/b)`` with ``S' = Σ_k X_k``;
    - channel weight ``C_k = log((K·eps + Σ_h Q_h) / (eps + Q_k))`` where ``Q_k`` is the
      fraction of cells where ``X_k > 0`` (rare channels get larger weights, like an idf);
    - ``f_k = C_k · Σ_{i,j} S(i,j) X_k(i,j)``.
    """
    _check_map(x)
    x = x.clamp(min=0)
    channels = x.shape[1]
    summed = x.sum(dim=1, keepdim=True)  # S', (B, 1, H, W)
    norm = summed.pow(a).sum(dim=(-2, -1), keepdim=True).pow(1.0 / a).clamp(min=eps)
    spatial = (summed / norm).pow(1.0 / b)
    nonzero = (x > 0).to(x.dtype).mean(dim=(-2, -1))  # Q, (B, K)
    channel = torch.log((channels * eps + nonzero.sum(dim=1, keepdim=True)) / (eps + nonzero))
    return channel * (x * spatial).sum(dim=(-2, -1))
