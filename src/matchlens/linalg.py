"""The one L2 normaliser of NumPy descriptors (the torch poolings keep cirtorch's own eps)."""

from __future__ import annotations

import numpy as np

__all__ = ["l2_normalize"]

_TINY = float(np.finfo(np.float32).tiny)  # only zero rows are this short: they stay zero


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x`` scaled to unit L2 norm along ``axis``, as float32; all-zero rows stay zero."""
    x = np.asarray(x)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, _TINY)).astype(np.float32, copy=False)
