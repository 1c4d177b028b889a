"""The runtimes on the cached ONNX export (:mod:`.export`), CPU only.

* ``onnxruntime``: ONNX Runtime, a session using every thread for queries and a one-thread
  session shared by several threads for streams of images.
* ``openvino``: OpenVINO reading the same ONNX file (``Core.read_model``; no conversion tool, so
  no telemetry). Inference precision is pinned to f32: the CPU plugin's default bf16 on CPUs that
  have it moves pooled descriptors to cosine 0.96-0.999. Latency- and throughput-compiled models,
  each dynamic-shape plus an LRU of static shapes.
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matchlens.extract.runtime_api import OPENVINO_PRECISION, RUNTIMES, Runtime

if TYPE_CHECKING:  # annotations only: importing this module must not import torch (3 s)
    import torch

__all__ = ["OnnxRuntime", "OpenVinoRuntime"]


@RUNTIMES.register("onnxruntime")
class OnnxRuntime(Runtime):
    """ONNX Runtime on the CPU: a session using every thread for queries, a one-thread session
    called from several threads at once for streams of images."""


    def __init__(self, model: Path, threads: int) -> None:
        import onnxruntime  # deferred: only when this runtime is chosen (0.2 s)

        self._ort = onnxruntime
        self.model, self.threads = model, threads
        self._query = self._session(threads)  # loaded now: a damaged file fails here, not mid-run
        self._stream: Any = None
        self._lock = threading.Lock()

    def _session(self, threads: int):
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its shape-inference notes are noise for users
        return self._ort.InferenceSession(str(self.model), options, providers=["CPUExecutionProvider"])

    @property
    def parallelism(self) -> int:
        return self.threads

    def forward(self, x: np.ndarray, parallel: bool = False) -> torch.Tensor:
        session = self._query
        if parallel and self.threads > 1:
            with self._lock:
                if self._stream is None:
                    self._stream = self._session(1)  # each caller's thread runs its own image
                session = self._stream
        import torch  # deferred: loaded already by the Extractor (the pooling is torch)

        return torch.from_numpy(session.run(None, {"image": x})[0])


# --- OpenVINO --------------------------------------------------------------------------------
@RUNTIMES.register("openvino")
class OpenVinoRuntime(Runtime):
    """OpenVINO on the CPU, f32. Queries run on a latency-compiled model; streams of images on a
    throughput-compiled one (one stream per core).

    Shapes: a dynamic-shape model serves any size. A shape seen ``static_after`` times gets its own
    static-shape compilation (faster; compiled in about 0.2 s), kept in an LRU of ``static_slots``;
    photo collections have a few dominant sizes (oxford5k_subset: 640×480 and 480×640 are 72%).
    Images are never padded or distorted to fit a shape.
    """

    PRECISION = OPENVINO_PRECISION

    def __init__(self, model: Path, threads: int, static_after: int = 2, static_slots: int = 24) -> None:
        self.model_path, self.threads = model, threads
        self.static_after, self.static_slots = static_after, static_slots
        self._model = _ov_core().read_model(str(model))  # read now: a damaged file fails here
        self._modes = {False: _CompiledShapes(self, "LATENCY"), True: _CompiledShapes(self, "THROUGHPUT")}

    @property
    def parallelism(self) -> int:
        return self._modes[True].requests

    def forward(self, x: np.ndarray, parallel: bool = False) -> torch.Tensor:
        import torch  # deferred: loaded already by the Extractor (the pooling is torch)

        return torch.from_numpy(self._modes[parallel].infer(x))

    def compile(self, hint: str, shape: tuple[int, ...] | None):
        """A compiled model for ``hint`` (LATENCY/THROUGHPUT), static at ``shape`` or dynamic."""
        model = self._model
        if shape is not None:
            model = model.clone()
            model.reshape({model.inputs[0].get_any_name(): list(shape)})
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": self.threads,
                  "INFERENCE_PRECISION_HINT": self.PRECISION}
        return _ov_core().compile_model(model, "CPU", config)


class _CompiledShapes:
    """The compiled models of one performance hint: a dynamic one plus an LRU of static shapes."""

    def __init__(self, runtime: OpenVinoRuntime, hint: str) -> None:
        self.runtime, self.hint = runtime, hint
        self._dynamic: _Requests | None = None
        self._static: collections.OrderedDict[tuple, _Requests] = collections.OrderedDict()
        self._seen: collections.Counter[tuple] = collections.Counter()
        self._lock = threading.Lock()

    @property
    def requests(self) -> int:
        return self._get_dynamic().optimal

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self._for_shape(tuple(x.shape)).infer(x)

    def _for_shape(self, shape: tuple) -> "_Requests":
        rt = self.runtime
        with self._lock:
            compiled = self._static.get(shape)
            if compiled is not None:
                self._static.move_to_end(shape)
                return compiled
            if len(self._seen) > 100_000:
                self._seen.clear()  # bounded memory on endless streams of distinct sizes
            self._seen[shape] += 1
            build = rt.static_slots > 0 and self._seen[shape] == rt.static_after
        if not build:
            return self._get_dynamic()
        compiled = _Requests(rt.compile(self.hint, shape))
        with self._lock:
            self._static[shape] = compiled
            while len(self._static) > rt.static_slots:
                self._static.popitem(last=False)
        return compiled

    def _get_dynamic(self) -> "_Requests":
        with self._lock:
            if self._dynamic is None:
                self._dynamic = _Requests(self.runtime.compile(self.hint, None))
            return self._dynamic


class _Requests:
    """A compiled model and a pool of its infer requests, one per concurrent caller."""

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        self.optimal = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.optimal):  # made now, so the first images do not wait for them
            self._idle.put(compiled.create_infer_request())

    def infer(self, x: np.ndarray) -> np.ndarray:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()  # the request's buffer is reused
        finally:
            self._idle.put(request)


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def _ov_core():
    """The process's OpenVINO Core, created once, with its NumPy bridge initialised."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            openvino = _import_openvino()
            # The bindings set up their NumPy bridge lazily, under a C++ once-guard taken without
            # releasing the GIL: two threads reaching it first at the same time deadlock (8 of 12
            # runs of 4 threads in a fresh process hung). Doing it here, once, before any thread
            # runs an inference, avoids that (12 of 12 ran).
            _ = openvino.Tensor(np.zeros((1, 1), np.float32)).data  # reading .data sets the bridge up
            _CORE = openvino.Core()
        return _CORE


def _import_openvino():
    """``import openvino`` without its model-conversion API (``openvino.tools.ovc``).

    That API's import sends a usage event to Google Analytics and writes ``~/intel`` (openvino-
    telemetry, on by default); matchlens never converts models with it (``Core.read_model`` reads
    the ONNX file), so it is kept out of the import. If the user's code imported it already, it
    has run anyway; a later explicit import of it works as usual.
    """
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    blocked = "openvino.tools.ovc" not in sys.modules
    if blocked:
        sys.modules["openvino.tools.ovc"] = None  # "from ... import" raises ImportError
    try:
        import openvino  # deferred: only when this runtime is chosen (0.5 s)
    finally:
        if blocked and "openvino.tools.ovc" in sys.modules and sys.modules["openvino.tools.ovc"] is None:
            del sys.modules["openvino.tools.ovc"]
    return openvino
