"""The descriptor pipeline: image → resized array(s) → backbone feature map → pooling → L2.

The backbone's forward pass runs on an inference :mod:`runtime <matchlens.extract.runtime>`
(OpenVINO, ONNX Runtime or PyTorch); everything around it (resize, normalisation, pooling,
multi-scale sum) is the same code for every runtime, so descriptors do not depend on it.

Whitening is not applied here: it is learned per index and applied by the index, so raw
descriptors can be cached and reused when only the whitening changes.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from matchlens.config import PipelineSpec
from matchlens.errors import MatchlensError
from matchlens.extract.hardware import cpu_threads, cuda_available
from matchlens.extract.preprocess import decode_side, load_for_spec, normaliser, scale_side, to_array
from matchlens.extract.runtime import open_runtime, runtime_name
from matchlens.extract.runtime_api import Runtime
from matchlens.io.collection import display_path
from matchlens.io.images import load_image, read_image_file
from matchlens.linalg import l2_normalize

if TYPE_CHECKING:  # annotations only
    import torch

ImageInput = "str | os.PathLike | bytes | Image.Image | np.ndarray"

__all__ = ["Described", "Extractor", "default_device", "l2_normalize", "runtime_name"]


@dataclass
class Described:
    """One item of :meth:`Extractor.describe_files`: a descriptor or the reason there is none."""

    path: str
    sha256: str
    size: int
    mtime: float
    vector: np.ndarray | None
    error: str | None


def default_device() -> str:
    """``cuda`` where PyTorch sees a GPU, else ``cpu`` (without importing torch where no GPU can be)."""
    return "cuda" if cuda_available() else "cpu"


class Extractor:
    """Turns images into raw (unwhitened) L2-normalised descriptors for one pipeline spec.

    ``runtime`` is ``auto`` (default), ``openvino``, ``onnxruntime`` or ``pytorch`` (see
    :mod:`matchlens.extract.runtime`); ``device`` applies to PyTorch (``cpu`` keeps ``auto`` on
    the CPU runtimes even where a GPU exists); ``cache_dir`` is where the ONNX export is cached
    (default: the user cache).
    """

    def __init__(self, spec: PipelineSpec, threads: int | None = None, device: str | None = None,
                 runtime: str | None = None, cache_dir: str | os.PathLike | None = None) -> None:
        import torch  # deferred: PyTorch (3 s to import) only when a torch extractor is built

        from matchlens.models import load_backbone  # deferred: imports torch, timm and torchvision
        from matchlens.pooling import make_pooling  # deferred: imports torch

        if threads:
            torch.set_num_threads(threads)
        self.backbone = load_backbone(spec.backbone, spec.weights)
        if spec.weights_id and spec.weights_id != self.backbone.weights_id:
            raise MatchlensError(
                f"the weights of backbone {spec.backbone} changed (index: {spec.weights_id}, "
                f"now: {self.backbone.weights_id}); rebuild the index or restore the weights file"
            )
        self.spec = spec.replace(weights_id=self.backbone.weights_id)
        self._runtime: Runtime = open_runtime(self.backbone, runtime, threads or cpu_threads(), device, cache_dir)
        self.device = self._runtime.device
        self.pooling = make_pooling(spec.pooling, **spec.pooling_params).to(self.device)
        check = getattr(self.pooling, "check_backbone", None)  # poolings with weights of their own
        if check is not None:
            check(spec.backbone, self.dim)
        # (x / 255 - mean) / std as one multiply-add per pixel
        self._scale, self._offset = normaliser(self.backbone.mean, self.backbone.std)

    @property
    def runtime(self) -> str:
        """Where inference runs, e.g. ``openvino 2026.4.1 (cpu, f32, 2 threads)``."""
        return self._runtime.describe()

    @property
    def runtime_kind(self) -> str:
        """The runtime's name: ``openvino``, ``onnxruntime`` or ``pytorch``."""
        return self._runtime.name

    @property
    def dim(self) -> int:
        """Width of the raw descriptor."""
        return int(self.backbone.out_channels)

    # --- single images -------------------------------------------------------------------
    def load(self, source, box: Sequence[float] | None = None) -> Image.Image:
        """Decode (safely, upright, RGB) and optionally crop to a query box.

        A box is in the pixels of the full-size upright image, so a boxed query is decoded at full
        size (no JPEG draft shrinking, which would move the box) and cropped before resizing.
        """
        return load_for_spec(self.spec, source, box)

    def describe(self, source, box: Sequence[float] | None = None) -> np.ndarray:
        """Raw descriptor (d,) of an image given as path, bytes, PIL image or array."""
        return self.describe_image(self.load(source, box))

    def describe_image(self, image: Image.Image, parallel: bool = False) -> np.ndarray:
        """Raw descriptor of an already decoded RGB image: multi-scale sum, L2-normalised.

        ``parallel`` says several threads describe images at once (throughput, not latency).
        """
        import torch  # deferred: loaded already by __init__; a local name for inference_mode

        total = np.zeros(self.dim, dtype=np.float64)
        for scale in self.spec.scales:
            fmap = self._runtime.forward(self._to_array(image, self._side(scale)), parallel)
            with torch.inference_mode():
                pooled = self.pooling(fmap).float().cpu().numpy()
            total += l2_normalize(pooled)[0]
        return l2_normalize(total)

    def feature_map(self, image: Image.Image, scale: float = 1.0) -> torch.Tensor:
        """The backbone's feature map (1, C, h, w), on the CPU, of an image at one scale (benchmarks, evidence)."""
        return self._runtime.forward(self._to_array(image, self._side(scale))).cpu()

    def _side(self, scale: float) -> int:
        return scale_side(self.spec, scale)

    def _decode_side(self) -> int:
        return decode_side(self.spec)

    def _to_array(self, image: Image.Image, side: int) -> np.ndarray:
        """Resize so the longest side is ``side`` (aspect kept; no padding, no distortion); normalise
        into a (1, 3, h, w) float32 array."""
        return to_array(image, side, self._scale, self._offset)

    # --- many files ----------------------------------------------------------------------
    def describe_files(
        self,
        paths: Iterable[str],
        workers: int | None = None,
        on_done: Callable[[Described], None] | None = None,
    ) -> Iterator[Described]:
        """Describe files in order. ``workers`` threads (default: the runtime's parallelism + 1)
        each read, decode and describe one file at a time, so decoding overlaps inference and a
        multi-stream runtime gets one image per stream.

        Unreadable files yield an item with ``error`` set instead of raising, so one bad file
        never stops a collection.
        """
        workers = max(1, workers or self._runtime.parallelism + 1)
        parallel = workers > 1
        todo = iter(paths)
        pending: deque[Future] = deque()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="matchlens-extract")
        try:
            for path in todo:  # keep a short queue ahead so no worker waits for the next file
                pending.append(pool.submit(self._describe_file, path, parallel))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                item = pending.popleft().result()
                following = next(todo, None)
                if following is not None:
                    pending.append(pool.submit(self._describe_file, following, parallel))
                if on_done:
                    on_done(item)
                yield item
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _describe_file(self, path: str, parallel: bool) -> Described:
        item, image = self._read_decode(path)
        if image is not None:
            try:
                item.vector = self.describe_image(image, parallel)
            except MatchlensError as exc:
                item.error = str(exc)
        return item

    def _read_decode(self, path: str) -> tuple[Described, Image.Image | None]:
        """Read and decode one file of a collection; any problem becomes ``item.error``.

        Only a regular file within the size limit is read (a FIFO, device, socket, broken link,
        symlink loop or oversized file is skipped with its reason, without blocking or reading
        it), and decoding stays within the decoding budget (:mod:`matchlens.io.images`).
        """
        item = Described(path=path, sha256="", size=0, mtime=0.0, vector=None, error=None)
        try:
            stat = os.stat(path)
            item.size, item.mtime = stat.st_size, stat.st_mtime
        except (OSError, ValueError):
            pass  # the reader below says why
        if display_path(path) != path:  # surrogate escapes: cannot be stored, shown or sent
            item.error = f"cannot read {display_path(path)!r}: file name is not valid UTF-8; rename it"
            return item, None
        try:
            data, stat = read_image_file(path)
        except MatchlensError as exc:
            item.error = str(exc)
            return item, None
        item.size, item.mtime = stat.st_size, stat.st_mtime
        item.sha256 = hashlib.sha256(data).hexdigest()
        try:
            return item, load_image(data, max_side=self._decode_side(), name=path)
        except MatchlensError as exc:
            item.error = str(exc)
            return item, None
