"""Global pooling of a CNN feature map, as plain functions (the maths; modules.py wraps them).

Every function takes a feature map ``x`` of shape ``(B, C, H, W)`` and returns a ``(B, C)`` tensor
that is **not** L2-normalised: the extractor normalises, so that multi-scale sums and whitening
see the raw pooled vector. The only normalisation inside a function is the one a definition
requires (R-MAC normalises each region before summing).

Notation follows LITERATURE.md, "Pooling": ``X_k`` is channel ``k`` of the map.
"""

from __future__ import annotations

import math

import torch

__all__ = ["crow", "gem", "mac", "rmac", "rmac_regions", "spoc", "spoc_prior"]

# R-MAC grid constants of Tolias et al., as in cirtorch's ``rmac``.
RMAC_OVERLAP = 0.4
RMAC_LONG_SIDE_STEPS = (2, 3, 4, 5, 6, 7)

Region = tuple[int, int, int, int]  # (y0, x0, h, w) in feature-map cells


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


def _long_side_extra(height: int, width: int) -> int:
    """How many regions the long side gets beyond the short side at each level (0 if square).

    Chooses the number of regions along the long side from ``RMAC_LONG_SIDE_STEPS`` so that
    consecutive level-1 regions overlap by about ``RMAC_OVERLAP``.
    """
    short, long = min(height, width), max(height, width)
    if short == long:
        return 0
    # float32 on purpose: cirtorch computes this in float32, and at near-ties (e.g. a 3×11 map)
    # its rounding decides the count; matching it keeps descriptors equal to cirtorch's.
    steps = torch.tensor(RMAC_LONG_SIDE_STEPS, dtype=torch.float32)
    stride = (long - short) / (steps - 1)
    overlap = (short**2 - short * stride) / short**2
    return int(torch.argmin(torch.abs(overlap - RMAC_OVERLAP))) + 1


def _region_starts(side: int, size: int, count: int) -> list[int]:
    """First cells of ``count`` windows of ``size`` spread evenly from 0 to ``side - size``."""
    if count == 1:
        return [0]
    stride = (side - size) / (count - 1)
    half = math.floor(size / 2 - 1)
    # Same float32 expression as cirtorch's "centre" computation (floor(half + k·stride) - half):
    # float32 rounding can move a start one cell left of the exact floor(k·stride).
    ks = torch.arange(count, dtype=torch.float32)
    return [int(v) for v in (torch.floor(half + ks * stride) - half).tolist()]


def rmac_regions(height: int, width: int, levels: int = 3) -> list[Region]:
    """The R-MAC regions of an ``H×W`` map, as ``(y0, x0, h, w)`` cell boxes, in pooling order.

    The list is the grid of cirtorch's ``rmac`` (Tolias et al.'s rigid grid):

    1. the whole map ``(0, 0, H, W)``;
    2. then for each level ``l = 1..levels``: square regions of side
       ``s_l = floor(2·min(H, W) / (l + 1))``, with ``l`` regions along the short side and
       ``l + e`` along the long side, where ``e`` (1..6, 0 for a square map) is chosen once per
       map so that level-1 regions overlap by about 40%. Along each side of length ``n`` with
       ``m`` regions, region ``k`` starts at ``floor(k·(n - s_l)/(m - 1))`` (0 if ``m = 1``),
       computed in float32 like cirtorch. Rows vary slowest. Levels with ``s_l = 0`` are
       skipped.

    For a square map the level-1 region is the whole map again, so it is counted twice, as in
    cirtorch. A 5×7 map with 3 levels gives 1 + 2 + 6 + 12 = 21 regions.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    short = min(height, width)
    extra = _long_side_extra(height, width)
    extra_w, extra_h = (extra, 0) if width > height else (0, extra)
    regions: list[Region] = [(0, 0, height, width)]
    for level in range(1, levels + 1):
        size = math.floor(2 * short / (level + 1))
        if size == 0:
            continue
        for y0 in _region_starts(height, size, level + extra_h):
            for x0 in _region_starts(width, size, level + extra_w):
                regions.append((y0, x0, size, size))
    return regions


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
