"""Import of cnnimageretrieval-pytorch ("cirtorch") checkpoints.

cirtorch saves ``{"meta": {...}, "state_dict": {...}}`` for its ``ImageRetrievalNet``, whose
backbone is an ``nn.Sequential`` called ``features`` (ResNet: every child but avgpool/fc, so
``features.0`` is conv1 and ``features.4`` is layer1; VGG: ``vgg.features`` without its last
max-pool, so indices equal torchvision's). Pooling parameters live under ``pool.`` (GeM's
exponent is ``pool.p``; with regional pooling ``pool.rpool.p`` and the regional whitening
``pool.whiten.*``), the optional final whitening is the Linear ``whiten.*`` and the optional
local whitening ``lwhiten.*``. Networks published by the authors may also carry learned
whitening as numpy arrays in ``meta["Lw"][dataset]["ss"|"ms"] = {"m": ..., "P": ...}``.

This module only interprets such a checkpoint; building the backbone is left to
:mod:`matchlens.models.backbones`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matchlens.errors import WeightsError
from matchlens.models.weights import StateDict, extract_state_dict

_FEATURES_PREFIX = "features."


@dataclass(frozen=True)
class CirtorchCheckpoint:
    """The parts of a cirtorch checkpoint that matchlens uses."""

    architecture: str
    features: StateDict  # keys relative to the ``features`` Sequential ("0.weight", ...)
    meta: dict[str, Any]  # becomes ``Backbone.checkpoint_meta``
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def is_cirtorch_checkpoint(obj: Any) -> bool:
    """True for a dict with a ``meta`` dict and a state dict holding ``features.*`` tensors."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("meta"), Mapping):
        return False
    state = obj.get("state_dict")
    if not isinstance(state, Mapping):
        return False
    # DataParallel-trained networks were saved with a "module." prefix.
    return any(
        isinstance(key, str) and key.removeprefix("module.").startswith(_FEATURES_PREFIX)
        for key in state
    )


def parse_cirtorch(obj: Mapping[str, Any], path: Path) -> CirtorchCheckpoint:
    """Split a cirtorch checkpoint into backbone tensors and retrieval metadata."""
    meta = obj["meta"]
    architecture = meta.get("architecture")
    if not isinstance(architecture, str) or not architecture:
        raise WeightsError(
            f"cirtorch checkpoint {path} has no meta['architecture']; cannot tell which network "
            "to build"
        )
    state = extract_state_dict(obj["state_dict"], path)
    features = {
        key[len(_FEATURES_PREFIX) :]: value
        for key, value in state.items()
        if key.startswith(_FEATURES_PREFIX)
    }
    info = _retrieval_meta(meta, state, path, architecture.lower())
    return CirtorchCheckpoint(
        architecture=architecture.lower(),
        features=features,
        meta=info,
        mean=_triple(meta.get("mean"), (0.485, 0.456, 0.406), "mean", path),
        std=_triple(meta.get("std"), (0.229, 0.224, 0.225), "std", path),
    )


def _retrieval_meta(
    meta: Mapping[str, Any], state: StateDict, path: Path, architecture: str
) -> dict[str, Any]:
    regional = bool(meta.get("regional", False))
    # Regional pooling (Rpool) wraps the global pooling as ``rpool``.
    p_key = "pool.rpool.p" if regional else "pool.p"
    info: dict[str, Any] = {
        "architecture": architecture,
        "pooling": str(meta.get("pooling", "gem")).lower(),
        "gem_p": _gem_p(state.get(p_key)),
        "whiten": _linear(state, "whiten", path, required=bool(meta.get("whitening", False))),
        "outputdim": _int_or_none(meta.get("outputdim")),
        "regional": regional,
        "local_whitening": bool(meta.get("local_whitening", False)),
    }
    if regional:
        info["regional_whiten"] = _linear(state, "pool.whiten", path, required=False)
    if info["local_whitening"]:
        info["local_whiten"] = _linear(state, "lwhiten", path, required=True)
    learned = _learned_whitening(meta.get("Lw"))
    if learned:
        info["learned_whitening"] = learned
    return info


def _gem_p(p: torch.Tensor | None) -> float | None:
    # GeM stores p as a 1-element Parameter; a per-channel p (cirtorch's "gemmp") is averaged
    # rather than dropped, since downstream pooling takes a single exponent.
    if p is None or p.numel() == 0:
        return None
    return float(p.detach().float().mean())


def _linear(
    state: StateDict, prefix: str, path: Path, required: bool
) -> dict[str, np.ndarray] | None:
    weight, bias = state.get(f"{prefix}.weight"), state.get(f"{prefix}.bias")
    if weight is None:
        if required:
            raise WeightsError(
                f"cirtorch checkpoint {path} declares whitening but lacks tensor "
                f"'{prefix}.weight'; the file is incomplete, re-export it"
            )
        return None
    out_dim = weight.shape[0]
    bias_np = np.zeros(out_dim, np.float32) if bias is None else _np(bias)
    return {"weight": _np(weight), "bias": bias_np}


def _learned_whitening(lw: Any) -> dict[str, Any] | None:
    """Convert ``meta["Lw"]`` (nested dicts of arrays) into numpy float arrays."""
    if not isinstance(lw, Mapping):
        return None
    return {str(key): _to_numpy_tree(value) for key, value in lw.items()}


def _to_numpy_tree(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _to_numpy_tree(item) for key, item in value.items()}
    if isinstance(value, torch.Tensor):
        return _np(value)
    if isinstance(value, np.ndarray):
        return np.asarray(value, dtype=np.float32)
    return value


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).cpu().numpy().copy()


def _triple(
    value: Any, default: tuple[float, float, float], what: str, path: Path
) -> tuple[float, float, float]:
    if value is None:
        return default
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        items = ()
    if len(items) != 3:
        raise WeightsError(
            f"cirtorch checkpoint {path} has meta['{what}'] = {value!r}; expected 3 numbers"
        )
    return items  # length checked above


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def checkpoint_pooling(path: str | Path) -> dict[str, Any] | None:
    """The pooling a cirtorch checkpoint was trained with, as pipeline-spec fields, or None.

    A GeM network fine-tuned with learnable p is only right with its own p, so the CLI adopts it
    when the user names no pooling. Other files (plain state dicts) give None.
    """
    from matchlens.models.weights import check_weights_path, read_checkpoint

    obj = read_checkpoint(check_weights_path(path))
    if not is_cirtorch_checkpoint(obj):
        return None
    info = parse_cirtorch(obj, Path(path)).meta
    name = str(info.get("pooling") or "").lower()
    if name == "gem" and info.get("gem_p"):
        return {"pooling": "gem", "pooling_params": {"p": float(info["gem_p"])}}
    if name in ("mac", "spoc", "rmac"):
        return {"pooling": name, "pooling_params": {}}
    return None
