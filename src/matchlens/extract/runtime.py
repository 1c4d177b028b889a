"""Inference runtimes: choosing and building the one that runs the backbone's forward pass.

The interface and registry are :mod:`.runtime_api`, the implementations :mod:`.torch_runtime` and
:mod:`.onnx_runtimes`, the machine probes :mod:`.hardware`; this module picks one by name or for
``auto`` and loads it (ONNX ones from the cached export, shared within the process).

A :class:`Runtime` runs only the network; resizing, normalisation and pooling stay in
:mod:`matchlens.extract.extractor`, identical for every runtime, so descriptors from all runtimes
are interchangeable (cosine >= 0.999 to PyTorch's, checked by tests/test_runtime.py). The
runtime is therefore *not* part of the pipeline spec.

* ``pytorch``: eager PyTorch on the GPU where there is one, else on the CPU (channels-last
  memory format, faster on CPU for this family of networks). Also the one for training.
* ``onnxruntime``: ONNX Runtime on the CPU, from the cached ONNX export (:mod:`.export`).
* ``openvino``: OpenVINO on the CPU, reading the same ONNX file (``Core.read_model``; no
  conversion tool, so no telemetry). Inference precision is pinned to f32: the CPU plugin's
  default bf16 on CPUs that have it moves pooled descriptors to cosine 0.96-0.999.
* ``auto`` (the default): PyTorch on CUDA when a GPU is visible, else OpenVINO and ONNX Runtime
  (OpenVINO first on CPUs with AVX-512/AMX, ONNX Runtime first on AVX2-only CPUs, where it was
  measured faster), else PyTorch eager on the CPU.

The choice comes from the ``runtime`` argument, else :func:`use_runtime` (the CLI's
``--runtime``), else ``$MATCHLENS_RUNTIME``, else ``auto``.

Each runtime serves two kinds of caller: one query at a time (``forward(x)``: every thread on one
image) and a stream of images described by several threads at once (``forward(x, parallel=True)``:
one image per stream, as many streams as :attr:`Runtime.parallelism`), which keeps every core busy
on small images where a single inference cannot use them all.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, cast

from matchlens.errors import ConfigError
from matchlens.extract.export import exported_model
from matchlens.extract.hardware import cpu_has_wide_vectors, cpu_threads, cuda_available
from matchlens.extract.onnx_runtimes import OnnxRuntime, OpenVinoRuntime
from matchlens.extract.runtime_api import RUNTIMES, Runtime, describe_runtime
from matchlens.extract.torch_runtime import TorchRuntime

if TYPE_CHECKING:  # annotations only: importing this module must not import torch (3 s)
    import torch

RUNTIME_ENV = "MATCHLENS_RUNTIME"
AUTO = "auto"
_override: str | None = None  # set by use_runtime()
# The implementations, registered in RUNTIMES by importing their modules.
IMPLEMENTATIONS: tuple[type[Runtime], ...] = (TorchRuntime, OnnxRuntime, OpenVinoRuntime)


def runtime_choices() -> list[str]:
    """Names accepted by ``--runtime`` / ``$MATCHLENS_RUNTIME``."""
    return [AUTO, *RUNTIMES.names()]


@contextlib.contextmanager
def use_runtime(name: str | None) -> Iterator[None]:
    """Within the block, extractors built without an explicit runtime use ``name`` (None: no change)."""
    global _override
    if name is None:
        yield
        return
    check_choice(name)
    previous, _override = _override, name.lower()
    try:
        yield
    finally:
        _override = previous


def check_choice(name: str) -> str:
    """``name`` lower-cased, or a one-line ConfigError listing the choices."""
    key = name.strip().lower()
    if key != AUTO and key not in RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r}; choose one of: {', '.join(runtime_choices())}")
    return key


def requested_runtime(name: str | None = None) -> str:
    """The runtime asked for: ``name``, else :func:`use_runtime`'s, else ``$MATCHLENS_RUNTIME``, else auto."""
    return check_choice(name or _override or os.environ.get(RUNTIME_ENV) or AUTO)


def auto_candidates(device: str | None = None) -> list[str]:
    """What ``auto`` tries, best first, on this machine (``device`` forces cpu or cuda): PyTorch on
    a GPU; else OpenVINO then ONNX Runtime where the CPU has AVX-512/AMX, ONNX Runtime then
    OpenVINO where it has not (measured, see :func:`cpu_has_wide_vectors`); PyTorch eager last."""
    cuda = cuda_available() if device is None else device.startswith("cuda")
    if cuda:
        return ["pytorch"]
    order = ("openvino", "onnxruntime") if cpu_has_wide_vectors() else ("onnxruntime", "openvino")
    installed = [n for n in order if importlib.util.find_spec(n) is not None]
    return [*installed, "pytorch"]


def resolve_runtime(name: str | None = None, device: str | None = None) -> str:
    """The runtime that would run: explicit choices as asked, ``auto`` the best installed."""
    choice = requested_runtime(name)
    return auto_candidates(device)[0] if choice == AUTO else choice


def runtime_name(name: str | None = None, device: str | None = None) -> str:
    """How ``matchlens info`` shows the runtime this process would use."""
    chosen = resolve_runtime(name, device)
    if chosen == "pytorch":
        return describe_runtime(chosen, device or ("cuda" if cuda_available() else "cpu"))
    return describe_runtime(chosen)


# Loaded ONNX runtimes, shared by the extractors of one process (servers with several indexes,
# tests): loading and compiling cost about a second, the models are read-only.
_LOADED: collections.OrderedDict[tuple, Runtime] = collections.OrderedDict()
_LOADED_MAX = 4
_LOADED_LOCK = threading.Lock()


def load_runtime(name: str, backbone: torch.nn.Module, threads: int | None = None, device: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> Runtime:
    """Build runtime ``name`` (not ``auto``) for ``backbone``; ONNX ones read the cached export.

    A cached file that the runtime cannot read is exported again once. Raises ConfigError when
    the runtime is not installed or the backbone cannot be exported.
    """
    threads = threads or cpu_threads()
    _check_allowed(name, backbone)
    if name == "pytorch":
        return TorchRuntime(backbone, threads, device)
    if device is not None and not device.startswith("cpu"):
        raise ConfigError(f"runtime {name!r} runs on the CPU only; use --runtime pytorch for {device}")
    if importlib.util.find_spec(name) is None:
        raise ConfigError(f"runtime {name!r} is not installed (pip install {name}); "
                          f"choose one of: {', '.join(runtime_choices())}")
    # Every runtime but "pytorch" is built from the exported model file: cls(model, threads).
    cls = cast("Callable[[Path, int], Runtime]", RUNTIMES.get(name))
    path, digest = exported_model(backbone, cache_dir)
    key = (name, digest, threads)
    with _LOADED_LOCK:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
    try:
        runtime = cls(path, threads)
    except Exception:  # the runtime's own "cannot parse" errors have no common type: export afresh
        path, digest = exported_model(backbone, cache_dir, force=True)
        key = (name, digest, threads)
        runtime = cls(path, threads)
    with _LOADED_LOCK:
        _LOADED[key] = runtime
        while len(_LOADED) > _LOADED_MAX:
            _LOADED.popitem(last=False)
    return runtime


def _check_allowed(name: str, backbone: torch.nn.Module) -> None:
    """A one-line ConfigError when ``backbone`` may not run on runtime ``name`` (ONNX-only networks)."""
    allowed = getattr(backbone, "runtimes", None)
    if allowed and name not in allowed:
        label = getattr(backbone, "name", type(backbone).__name__)
        how = "exists only as an ONNX model" if getattr(backbone, "onnx_only", False) else "is restricted"
        raise ConfigError(f"backbone {label!r} {how} and runs on {' or '.join(allowed)} only, not {name}; "
                          f"use --runtime {allowed[0]}")


def _auto_for(backbone: torch.nn.Module, device: str | None) -> list[str]:
    """What ``auto`` tries for ``backbone``: :func:`auto_candidates`, or for a backbone that allows
    only some runtimes (all CPU ones) those of them that are installed, in the same order."""
    allowed = getattr(backbone, "runtimes", None)
    if not allowed:
        return auto_candidates(device)
    return [n for n in auto_candidates("cpu") if n in allowed] or list(allowed)


def clear_loaded() -> None:
    """Forget the loaded runtimes of this process (tests: to see a fresh load)."""
    with _LOADED_LOCK:
        _LOADED.clear()


def open_runtime(backbone: torch.nn.Module, name: str | None = None, threads: int | None = None,
                 device: str | None = None, cache_dir: str | os.PathLike | None = None,
                 warn: Callable[[str], None] | None = None) -> Runtime:
    """The runtime to use for ``backbone``: the requested one, or for ``auto`` the first that loads.

    With ``auto`` a runtime that fails to load (e.g. a network ONNX cannot express) is skipped
    with a warning, down to PyTorch eager, which always works.
    """
    choice = requested_runtime(name)
    if choice != AUTO:
        return load_runtime(choice, backbone, threads, device, cache_dir)
    candidates = _auto_for(backbone, device)
    for candidate in candidates[:-1]:
        try:
            return load_runtime(candidate, backbone, threads, device, cache_dir)
        except ConfigError as exc:
            (warn or _warn)(f"runtime {candidate} unavailable ({exc}); trying the next one")
    return load_runtime(candidates[-1], backbone, threads, device, cache_dir)


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
