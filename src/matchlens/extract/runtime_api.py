"""The inference runtime interface: a :class:`Runtime` runs the backbone's forward pass (normalised
image → feature map), and the :data:`RUNTIMES` registry names the implementations
(:mod:`.torch_runtime`, :mod:`.onnx_runtimes`); choosing and building one is :mod:`.runtime`'s.
"""

from __future__ import annotations

import importlib.metadata
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from matchlens.extract.hardware import cpu_threads
from matchlens.registry import Registry

if TYPE_CHECKING:  # annotations only: importing this module must not import torch (3 s)
    import torch

__all__ = ["OPENVINO_PRECISION", "RUNTIMES", "Runtime", "describe_runtime"]

# OpenVINO's inference precision (OpenVinoRuntime.PRECISION), as descriptions show it.
OPENVINO_PRECISION = "f32"


class _CpuDevice:
    """``torch.device("cpu")``, made on first use so that defining the runtimes needs no torch;
    an instance attribute (TorchRuntime's) shadows it."""

    def __get__(self, obj: Any, owner: Any = None) -> "torch.device":
        import torch  # deferred: only a caller that uses torch devices asks for one

        return torch.device("cpu")


class Runtime(ABC):
    """Runs a backbone: ``(1, 3, H, W)`` float32 normalised image → ``(1, C, h, w)`` feature map.

    ``forward`` may be called from several threads at once. Outputs are torch tensors on
    :attr:`device` so the (PyTorch) pooling runs where the map is.
    """

    name: ClassVar[str]
    device: "torch.device" = _CpuDevice()  # type: ignore[assignment]
    threads: int = 1

    @abstractmethod
    def forward(self, x: np.ndarray, parallel: bool = False) -> torch.Tensor:
        """The feature map of one normalised image; ``parallel`` when several threads call at once."""

    @property
    def parallelism(self) -> int:
        """How many ``forward(..., parallel=True)`` calls at once keep the hardware busy."""
        return 1

    def describe(self) -> str:
        """E.g. ``openvino 2026.4.1 (cpu, f32, 2 threads)``, as ``matchlens info`` shows it."""
        return describe_runtime(self.name, self.device.type, self.threads)


RUNTIMES: Registry[type[Runtime]] = Registry("runtime")


def describe_runtime(name: str, device: str = "cpu", threads: int | None = None) -> str:
    """A one-line description, e.g. ``openvino 2026.4.1 (cpu, f32, 2 threads)``."""
    threads = threads or cpu_threads()
    if name == "pytorch":
        where = device if device != "cpu" else f"cpu, channels-last, {threads} threads"
        return f"pytorch {_version('torch').split('+')[0]} eager ({where})"
    version = _version(name)
    precision = f", {OPENVINO_PRECISION}" if name == "openvino" else ""
    return f"{name} {version} (cpu{precision}, {threads} threads)"


def _version(module: str) -> str:
    try:
        return importlib.metadata.version(module)
    except Exception:  # not installed: the name alone
        return "(not installed)"
