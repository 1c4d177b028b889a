"""What this machine offers the inference runtimes: the cores this process may use, whether a
CUDA GPU is visible (answered without importing PyTorch where none can be), and whether the CPU
has AVX-512/AMX (which decides ``auto``'s order of OpenVINO and ONNX Runtime, :mod:`.runtime`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

__all__ = ["cpu_has_wide_vectors", "cpu_threads", "cuda_available"]


def cpu_threads() -> int:
    """Cores this process may use (its CPU affinity where the OS says, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def cuda_available() -> bool:
    """``torch.cuda.is_available()``, without importing PyTorch where it cannot be true.

    Importing torch costs about 3 s, so a process that has not imported it yet first checks
    cheaply: a CPU-only torch build (its ``torch/version.py`` says ``cuda = None``), no NVIDIA
    driver (``/proc/driver/nvidia``, ``/dev/nvidia*``) or ``CUDA_VISIBLE_DEVICES`` set empty or
    to ``-1`` all mean no GPU. Only where a GPU may exist is torch imported to ask.
    """
    if "torch" not in sys.modules:
        if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
            return False
        if not _torch_build_has_cuda():
            return False
        if not (os.path.exists("/proc/driver/nvidia") or any(Path("/dev").glob("nvidia[0-9]*"))):
            return False
    import torch  # deferred: only where a GPU may exist (or torch is loaded already)

    return bool(torch.cuda.is_available())


@functools.lru_cache(maxsize=1)
def _torch_build_has_cuda() -> bool:
    """Whether the installed torch was built with CUDA, read from its version file (no import)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        try:
            text = (Path(folder) / "version.py").read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if line.replace(" ", "").startswith("cuda:") or line.replace(" ", "").startswith("cuda="):
                value = line.split("=", 1)[-1].strip()
                return value not in ("None", "'None'", '""', "''")
    return True  # unknown layout: ask torch itself


@functools.lru_cache(maxsize=1)  # the CPU does not change: read /proc/cpuinfo once per process
def cpu_has_wide_vectors() -> bool:
    """Whether the CPU has AVX-512 or AMX (Linux: /proc/cpuinfo; elsewhere assumed so).

    OpenVINO's CPU kernels gain most from them: with AVX-512 it ran the default backbone at about
    twice ONNX Runtime's speed (the speed issue's table), while on an AVX2-only EPYC ONNX Runtime
    was the faster, by 23% single-scale and 30% multi-scale (benchmarks/extract.py, README).
    """
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return True
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return True
    return any(f.startswith(("avx512f", "amx")) for f in flags)
