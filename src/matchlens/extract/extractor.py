"""The descriptor pipeline: image → resized tensor(s) → backbone feature map → pooling → L2.

Whitening is not applied here: it is learned per index and applied by the index, so raw
descriptors can be cached and reused when only the whitening changes.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from matchlens.config import PipelineSpec
from matchlens.errors import MatchlensError
from matchlens.io.images import crop_to_box, load_image

ImageInput = "str | os.PathLike | bytes | Image.Image | np.ndarray"


@dataclass
class Described:
    """One item of :meth:`Extractor.describe_files`: a descriptor or the reason there is none."""

    path: str
    sha256: str
    size: int
    mtime: float
    vector: np.ndarray | None
    error: str | None


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def default_device() -> str:
    """``cuda`` where PyTorch sees a GPU, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def runtime_name(device: str | None = None) -> str:
    """The inference runtime as ``matchlens info`` shows it, e.g. ``pytorch eager (cpu)``."""
    return f"pytorch eager ({device or default_device()})"


class Extractor:
    """Turns images into raw (unwhitened) L2-normalised descriptors for one pipeline spec."""

    def __init__(self, spec: PipelineSpec, threads: int | None = None, device: str | None = None) -> None:
        from matchlens.models import load_backbone
        from matchlens.pooling import make_pooling

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or default_device())
        self.backbone = load_backbone(spec.backbone, spec.weights).to(self.device)
        if spec.weights_id and spec.weights_id != self.backbone.weights_id:
            raise MatchlensError(
                f"the weights of backbone {spec.backbone} changed (index: {spec.weights_id}, "
                f"now: {self.backbone.weights_id}); rebuild the index or restore the weights file"
            )
        self.spec = spec.replace(weights_id=self.backbone.weights_id)
        self.pooling = make_pooling(spec.pooling, **spec.pooling_params).to(self.device)
        self._mean = torch.tensor(self.backbone.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.backbone.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._lock = threading.Lock()  # one forward at a time: torch already uses every core

    @property
    def runtime(self) -> str:
        """Where inference runs, e.g. ``pytorch eager (cpu)``."""
        return runtime_name(self.device.type)

    @property
    def dim(self) -> int:
        """Width of the raw descriptor."""
        return int(self.backbone.out_channels)

    # --- single images -------------------------------------------------------------------
    def load(self, source, box: Sequence[float] | None = None) -> Image.Image:
        """Decode (safely, upright, RGB) and optionally crop to a query box."""
        image = load_image(source, max_side=self._decode_side())
        return crop_to_box(image, box) if box is not None else image

    def describe(self, source, box: Sequence[float] | None = None) -> np.ndarray:
        """Raw descriptor (d,) of an image given as path, bytes, PIL image or array."""
        return self.describe_image(self.load(source, box))

    def describe_image(self, image: Image.Image) -> np.ndarray:
        """Raw descriptor of an already decoded RGB image: multi-scale sum, L2-normalised."""
        total = np.zeros(self.dim, dtype=np.float64)
        for scale in self.spec.scales:
            tensor = self._to_tensor(image, round(self.spec.max_side * scale))
            total += l2_normalize(self._pool(tensor))[0]
        return l2_normalize(total)

    def feature_map(self, image: Image.Image, scale: float = 1.0) -> torch.Tensor:
        """The backbone's feature map (1, C, h, w), on the CPU, of an image at one scale (benchmarks, evidence)."""
        with self._lock, torch.inference_mode():
            return self.backbone(self._to_tensor(image, round(self.spec.max_side * scale))).cpu()

    def _pool(self, tensor: torch.Tensor) -> np.ndarray:
        with self._lock, torch.inference_mode():
            return self.pooling(self.backbone(tensor)).float().cpu().numpy()

    def _decode_side(self) -> int:
        # JPEG draft decoding may shrink huge files by 1/2..1/8 in the DCT; asking for twice the
        # needed side keeps the final bicubic resize in charge, so a file and the same image given
        # as pixels describe (almost) identically.
        return 2 * round(self.spec.max_side * max(self.spec.scales))

    def _to_tensor(self, image: Image.Image, side: int) -> torch.Tensor:
        """Resize so the longest side is ``side`` (aspect kept; no padding, no distortion), normalise."""
        w, h = image.size
        ratio = side / max(w, h)
        size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
        if size != image.size:
            image = image.resize(size, Image.BICUBIC, reducing_gap=3.0)
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0).to(self.device)
        return (tensor - self._mean) / self._std

    # --- many files ----------------------------------------------------------------------
    def describe_files(
        self,
        paths: Iterable[str],
        workers: int = 2,
        on_done: Callable[[Described], None] | None = None,
    ) -> Iterator[Described]:
        """Describe files in order; decoding runs ahead in threads while the network runs.

        Unreadable files yield an item with ``error`` set instead of raising, so one bad file
        never stops a collection.
        """
        paths = list(paths)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending = [pool.submit(self._read_decode, p) for p in paths[: workers * 2]]
            next_index = len(pending)
            for position in range(len(paths)):
                item, image = pending[position].result()
                pending[position] = None  # free the decoded image early
                if next_index < len(paths):
                    pending.append(pool.submit(self._read_decode, paths[next_index]))
                    next_index += 1
                if image is not None:
                    try:
                        item.vector = self.describe_image(image)
                    except MatchlensError as exc:
                        item.error = str(exc)
                if on_done:
                    on_done(item)
                yield item

    def _read_decode(self, path: str) -> tuple[Described, Image.Image | None]:
        import hashlib

        item = Described(path=path, sha256="", size=0, mtime=0.0, vector=None, error=None)
        try:
            stat = os.stat(path)
            item.size, item.mtime = stat.st_size, stat.st_mtime
            data = Path(path).read_bytes()
        except OSError as exc:
            reason = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc)).lower()
            item.error = f"cannot read {path!r}: {reason}"
            return item, None
        item.sha256 = hashlib.sha256(data).hexdigest()
        try:
            return item, load_image(data, max_side=self._decode_side(), name=path)
        except MatchlensError as exc:
            item.error = str(exc)
            return item, None
