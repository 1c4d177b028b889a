"""The poolings of :mod:`matchlens.pooling` in NumPy, for the torch-free query encoder.

Same definitions, parameters and defaults as :mod:`matchlens.pooling.functional` (which stays the
reference: tests/test_light_encoder.py checks these against it); the arithmetic is float32 like
the reference's where it decides a discrete choice (the R-MAC grid), float64 elsewhere, so the
pooled vectors agree to about 1e-6. Every function takes one feature map ``(C, H, W)`` and
returns ``(C,)``, not L2-normalised.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import numpy as np

from matchlens.errors import ConfigError
from matchlens.pooling.regions import rmac_regions

__all__ = ["NUMPY_POOLINGS", "numpy_pooling", "rmac_regions"]



def mac(x: np.ndarray) -> np.ndarray:
    """Max of the positive part of each channel."""
    return np.maximum(x.max(axis=(-2, -1)), 0.0)


def spoc(x: np.ndarray, centre_prior: bool = True) -> np.ndarray:
    """Sum pooling, weighted by the Gaussian centre prior unless ``centre_prior`` is false."""
    x = x.astype(np.float64, copy=False)
    if not centre_prior:
        return x.sum(axis=(-2, -1))
    height, width = x.shape[-2:]
    sigma = min(height, width) / 6.0
    ys = np.arange(height, dtype=np.float64) + 0.5 - height / 2.0
    xs = np.arange(width, dtype=np.float64) + 0.5 - width / 2.0
    alpha = np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2.0 * sigma**2)).astype(np.float32)
    return (x * alpha).sum(axis=(-2, -1))


def gem(x: np.ndarray, p: float = 3.0, eps: float = 1e-6, learn_p: bool = False) -> np.ndarray:
    """Generalised mean ``(mean max(X, eps)^p)^(1/p)`` per channel (``learn_p`` only matters in training)."""
    x = np.maximum(x.astype(np.float64, copy=False), eps)
    return np.power(np.power(x, p).mean(axis=(-2, -1)), 1.0 / p)


def rmac(x: np.ndarray, levels: int = 3, eps: float = 1e-6) -> np.ndarray:
    """Sum over the R-MAC regions of each region's MAC divided by (its L2 norm + ``eps``)."""
    total = np.zeros(x.shape[:-2], dtype=np.float64)
    for y0, x0, h, w in rmac_regions(x.shape[-2], x.shape[-1], levels):
        region = mac(x[..., y0:y0 + h, x0:x0 + w]).astype(np.float64)
        total += region / (np.linalg.norm(region, axis=-1, keepdims=True) + eps)
    return total


def crow(x: np.ndarray, a: float = 2.0, b: float = 2.0, eps: float = 1e-6) -> np.ndarray:
    """Cross-dimensional weighting: spatial × channel weighted sum pooling (Kalantidis et al.)."""
    x = np.maximum(x.astype(np.float64, copy=False), 0.0)
    channels = x.shape[-3]
    summed = x.sum(axis=-3, keepdims=True)
    norm = max(float(np.power(np.power(summed, a).sum(), 1.0 / a)), eps)
    spatial = np.power(summed / norm, 1.0 / b)
    nonzero = (x > 0).mean(axis=(-2, -1))
    channel = np.log((channels * eps + nonzero.sum()) / (eps + nonzero))
    return channel * (x * spatial).sum(axis=(-2, -1))


NUMPY_POOLINGS: dict[str, Callable[..., np.ndarray]] = {
    "mac": mac, "spoc": spoc, "gem": gem, "rmac": rmac, "crow": crow,
}


def numpy_pooling(name: str, params: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """``fmap (C, H, W) -> (C,)`` for pooling ``name`` with ``params`` (a spec's ``pooling_params``).

    Raises ConfigError for an unknown pooling or parameter (the torch modules would too).
    """
    function = NUMPY_POOLINGS.get(str(name).lower())
    if function is None:
        raise ConfigError(f"unknown pooling {name!r}; choose one of: {', '.join(sorted(NUMPY_POOLINGS))}")
    accepted = list(inspect.signature(function).parameters)[1:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"pooling {name!r} has no parameter {', '.join(unknown)}; "
                          f"valid: {', '.join(accepted) or 'none'}")
    return functools.partial(function, **params)
