"""Reading weights files safely and loading them into modules with one-line errors.

matchlens never executes code from a checkpoint: torch files are read with
``weights_only=True`` (plus an allowlist for numpy arrays, which cirtorch stores in its
``meta``), and ``.safetensors`` files with safetensors. Everything that can go wrong with a
user's file is reported as a :class:`~matchlens.errors.WeightsError` naming the file and,
where there is one, the tensor.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from matchlens.errors import WeightsError

StateDict = dict[str, torch.Tensor]

# Keys under which training scripts commonly nest the state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
# Prefixes added by nn.DataParallel / DDP ("module."), Lightning-style wrappers ("model.")
# and torch.compile ("_orig_mod."); stripped only when *every* key carries them.
_COMMON_PREFIXES = ("module.", "model.", "_orig_mod.")
_HASH_CHUNK = 1 << 20
_SAFETENSORS_SUFFIX = ".safetensors"


def weights_id(path: str | os.PathLike[str]) -> str:
    """Return the first 16 hex chars of the sha256 of the file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def split_layout(weights: str | os.PathLike[str]) -> tuple[str, str | None]:
    """``FILE#LAYOUT`` → (FILE, LAYOUT); anything else → (weights, None). A file whose own name
    holds ``#`` keeps it (the split applies only when the whole text is not a file)."""
    text = os.fspath(weights)
    base, sep, layout = text.rpartition("#")
    if not sep or not base or not layout or "/" in layout or os.sep in layout or Path(text).expanduser().exists():
        return text, None
    return base, layout


def check_weights_path(weights: str | os.PathLike[str]) -> Path:
    """Return ``weights`` as a Path, raising WeightsError if it is not an existing file
    (a ``#LAYOUT`` suffix, :mod:`matchlens.models.checkpoints`, is not part of the path)."""
    path = Path(split_layout(weights)[0]).expanduser()
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist; check the --weights path")
    if not path.is_file():
        raise WeightsError(f"weights path {path} is not a file; pass the checkpoint file itself")
    return path


def read_checkpoint(path: Path) -> Any:
    """Read a torch or safetensors file into Python objects without running pickled code."""
    if _looks_like_safetensors(path):
        return _read_safetensors(path)
    return _read_torch(path)


def _looks_like_safetensors(path: Path) -> bool:
    # A safetensors file is an 8-byte header length followed by a JSON header; sniffing the
    # '{' lets a safetensors file load even when it was renamed to .pth.
    if path.suffix.lower() == _SAFETENSORS_SUFFIX:
        return True
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> StateDict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise WeightsError(
            f"cannot read safetensors file {path} ({_first_line(exc)}); re-export the weights"
        ) from exc


def _read_torch(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise WeightsError(
                f"weights file {path} contains pickled Python objects, which matchlens refuses to "
                "load (torch.load weights_only=True); re-save it with "
                "torch.save(model.state_dict(), FILE) or as .safetensors"
            ) from exc
        raise _not_a_checkpoint(path, exc) from exc
    except Exception as exc:  # torch.load raises many types (RuntimeError, EOFError, ...)
        raise _not_a_checkpoint(path, exc) from exc


def _not_a_checkpoint(path: Path, exc: BaseException) -> WeightsError:
    return WeightsError(
        f"weights file {path} is not a PyTorch or safetensors checkpoint ({_first_line(exc)}); "
        "pass a .pth/.pt/.safetensors state dict"
    )


def _numpy_safe_globals() -> list[Any]:
    """Allowlist exactly what unpickling plain numpy arrays/scalars needs.

    cirtorch checkpoints keep learned whitening as numpy arrays in ``meta``; files written with
    numpy 1 name the helpers ``numpy.core.multiarray.*``, numpy 2 ``numpy._core.multiarray.*``,
    so both spellings are mapped to the installed functions.
    """
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    # dtype objects are rebuilt through their per-type classes (Float32DType, ...); only
    # plain numeric dtypes are allowed, so object arrays still go through the allowlist.
    dtype_classes = [type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"]
    allowed: list[Any] = [np.ndarray, np.dtype, reconstruct, scalar, *dtype_classes]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(reconstruct, f"{module}._reconstruct"), (scalar, f"{module}.scalar")]
    return allowed


def extract_state_dict(obj: Any, path: Path) -> StateDict:
    """Unwrap a checkpoint into a flat ``name -> tensor`` dict with common prefixes removed."""
    state = _unwrap(obj)
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(
            f"weights file {path} holds no state dict (found {type(obj).__name__}); "
            "pass a file saved with torch.save(model.state_dict(), FILE)"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(
                f"weights file {path} is not a state dict: entry {key!r} is a "
                f"{type(value).__name__}, not a tensor; pass a plain state dict"
            )
    return strip_common_prefixes(dict(state))


def _unwrap(obj: Any) -> Any:
    # Wrappers can nest (e.g. {"model": {"state_dict": ...}}); a few levels is plenty.
    for _ in range(3):
        if not isinstance(obj, Mapping):
            return obj
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return obj
        obj = inner
    return obj


def strip_common_prefixes(state: StateDict) -> StateDict:
    """Remove wrapper prefixes such as ``module.`` when every key carries them."""
    changed = True
    while changed and state:
        changed = False
        for prefix in _COMMON_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                changed = True
    return state


def load_checked(
    module: nn.Module,
    state: StateDict,
    path: Path,
    arch: str,
    optional: Callable[[str], bool] = lambda key: False,
) -> bool:
    """Load ``state`` into ``module`` after checking every name and shape.

    Keys for which ``optional`` is true (classifier heads) may be missing, mismatched or
    extra; they are then skipped. Returns True when all optional tensors were loaded too.
    """
    expected = module.state_dict()
    usable: StateDict = {}
    complete = True
    for key, target in expected.items():
        if key not in state:
            if optional(key):
                complete = False
            elif not key.endswith("num_batches_tracked"):  # older files lack this counter
                raise WeightsError(
                    f"weights file {path} lacks tensor {key!r} that {arch} needs; "
                    f"it was saved for another architecture, so pass its matching backbone name"
                )
            continue
        source = state[key]
        if tuple(source.shape) != tuple(target.shape):
            if optional(key):
                complete = False
                continue
            raise WeightsError(
                f"weights file {path}: tensor {key!r} has shape {tuple(source.shape)} but {arch} "
                f"expects {tuple(target.shape)}; pass the backbone name the file was saved for"
            )
        usable[key] = source
    _reject_unexpected(state, expected, path, arch, optional)
    module.load_state_dict(usable, strict=False)
    return complete


def _reject_unexpected(
    state: StateDict,
    expected: Mapping[str, torch.Tensor],
    path: Path,
    arch: str,
    optional: Callable[[str], bool],
) -> None:
    # Extra tensors mean a bigger sibling architecture (resnet101 weights hold every resnet50
    # tensor with the same shape), so silently ignoring them would load the wrong network.
    extra = [key for key in state if key not in expected and not optional(key)]
    if extra:
        raise WeightsError(
            f"weights file {path} has {len(extra)} tensor(s) that {arch} does not have "
            f"(first: {extra[0]!r}); pass the backbone name the file was saved for"
        )


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, short enough for a one-line error."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


# --- matchlens training checkpoints -----------------------------------------------------------
# ``matchlens train`` writes {"state_dict": <backbone tensors in the layout its builder loads>,
# "matchlens": {"kind": MATCHLENS_KIND, "spec": <pipeline spec dict>, "lw": {...} | None, ...}};
# the backbone builders only read "state_dict", so the file loads with --weights like any other.
MATCHLENS_KIND = "matchlens-checkpoint"
_SPEC_FIELDS = ("backbone", "max_side", "scales", "pooling", "pooling_params", "whitening",
                "whitening_params")


def read_matchlens_meta(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``matchlens`` metadata of a checkpoint written by ``matchlens train``, else None."""
    obj = read_checkpoint(check_weights_path(path))
    meta = obj.get("matchlens") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping) or meta.get("kind") != MATCHLENS_KIND:
        return None
    return dict(meta)


def checkpoint_spec_fields(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Pipeline-spec fields a training checkpoint was trained and validated with ({} for other files):
    a fine-tuned network is only right with its own input size and pooling (e.g. its learned GeM p)."""
    meta = read_matchlens_meta(path) or {}
    found = meta.get("spec")
    spec: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    return {key: spec[key] for key in _SPEC_FIELDS if key in spec}
