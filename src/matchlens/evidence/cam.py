"""Grad-CAM on every layer, aggregated into the 4D evidence M and decoded into C_T, C_Q (P0 §3.2).

* Each layer's Grad-CAM is ``ReLU(Σ_c w_c F_c)`` with ``w_c`` the spatial mean of ∂logit/∂F_c.
* It is rescaled to the m×n×m×n grid (2D maps of the reshaped tensor: bilinear to (mn)×(mn),
  then reshaped), divided by its maximum so that every layer weighs the same (our choice; P0
  only says "average pooling"), and the layers are averaged (eq. 3) → M.
* Eq. 4: ``C_T[i, j] = Σ_{k,l} M[i, j, k, l]`` (target) and ``C_Q[k, l] = Σ_{i,j} M[i, j, k, l]``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def layer_gradcam(feature: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of one layer: ``(B, *spatial)`` from a map and its gradient ``(B, C, *spatial)``."""
    spatial = tuple(range(2, feature.ndim))
    weights = grad.mean(dim=spatial, keepdim=True)
    return F.relu((weights * feature).sum(dim=1))


def to_grid(cam: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Rescale one layer's CAM (2D ``(B, H, W)`` or 4D ``(B, m, n, m, n)``) to ``(B, m, n, m, n)``."""
    if cam.ndim == 5:
        return cam
    side = rows * cols
    full = F.interpolate(cam[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    return full.reshape(cam.shape[0], rows, cols, rows, cols)


def aggregate(features: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    """Eq. 3: the mean over layers of the max-normalised, rescaled Grad-CAMs → M ``(B, m, n, m, n)``."""
    total: torch.Tensor | int = 0
    for feature, grad in zip(features, grads):
        cam = to_grid(layer_gradcam(feature, grad), rows, cols)
        peak = cam.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1, 1)
        total = total + cam / peak
    mean = total / len(features)  # no layer: ZeroDivisionError here
    assert isinstance(mean, torch.Tensor)  # at least one layer was added
    return mean


def contributions(evidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4: (C_T, C_Q), each ``(B, m, n)``, from M ``(B, m, n, m, n)`` (target axes first)."""
    return evidence.sum(dim=(3, 4)), evidence.sum(dim=(1, 2))


def upsample(grid_map: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A grid map ``(m, n)`` bilinearly upsampled to ``(height, width)`` pixels and scaled to [0, 1]."""
    t = torch.as_tensor(np.asarray(grid_map, np.float32))[None, None]
    width, height = size
    up = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    return normalise(up)


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] (constant maps become all zeros)."""
    values = np.asarray(values, np.float32)
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)
