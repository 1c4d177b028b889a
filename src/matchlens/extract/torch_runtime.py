"""The ``pytorch`` runtime: eager PyTorch on the GPU where there is one, else on the CPU in the
channels-last memory format. Also the one for training.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import numpy as np

from matchlens.extract.runtime_api import RUNTIMES, Runtime

if TYPE_CHECKING:  # annotations only: importing this module must not import torch (3 s)
    import torch

__all__ = ["TorchRuntime"]


@RUNTIMES.register("pytorch")
class TorchRuntime(Runtime):
    """Eager PyTorch; one forward at a time (PyTorch already spreads one forward over every core)."""


    def __init__(self, backbone: torch.nn.Module, threads: int, device: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        import torch  # deferred: the PyTorch runtime only

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.threads = threads
        self.backbone = backbone.to(self.device)
        # channels-last lets oneDNN pick its fast NHWC convolutions on CPU (10.1 vs 7.8 images/s for
        # the default backbone, issue 9); on CUDA it needs fp16 to pay off, so it is left alone there.
        self._channels_last = self.device.type == "cpu"
        if self._channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self._lock = threading.Lock()

    def forward(self, x: np.ndarray, parallel: bool = False) -> torch.Tensor:
        import torch  # deferred: loaded already by __init__

        tensor = torch.from_numpy(x).to(self.device)
        if self._channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        with self._lock, torch.inference_mode():
            return self.backbone(tensor).contiguous()
