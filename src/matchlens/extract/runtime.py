"""Inference runtimes: one interface for the backbone's forward pass (normalised image → feature map).

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
import functools
import importlib.util
import os
import queue
import sys
import threading
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, cast

import numpy as np

from matchlens.errors import ConfigError
from matchlens.registry import Registry

if TYPE_CHECKING:  # annotations only: importing this module must not import torch (3 s)
    import torch

RUNTIME_ENV = "MATCHLENS_RUNTIME"
AUTO = "auto"
_override: str | None = None  # set by use_runtime()


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


# --- PyTorch --------------------------------------------------------------------------------
@RUNTIMES.register("pytorch")
class TorchRuntime(Runtime):
    """Eager PyTorch; one forward at a time (PyTorch already spreads one forward over every core)."""

    name = "pytorch"

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


# --- ONNX Runtime ----------------------------------------------------------------------------
@RUNTIMES.register("onnxruntime")
class OnnxRuntime(Runtime):
    """ONNX Runtime on the CPU: a session using every thread for queries, a one-thread session
    called from several threads at once for streams of images."""

    name = "onnxruntime"

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

    name = "openvino"
    PRECISION = "f32"

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


# --- choosing and building -------------------------------------------------------------------
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


def describe_runtime(name: str, device: str = "cpu", threads: int | None = None) -> str:
    """A one-line description, e.g. ``openvino 2026.4.1 (cpu, f32, 2 threads)``."""
    threads = threads or cpu_threads()
    if name == "pytorch":
        where = device if device != "cpu" else f"cpu, channels-last, {threads} threads"
        return f"pytorch {_version('torch').split('+')[0]} eager ({where})"
    version = _version(name)
    precision = f", {OpenVinoRuntime.PRECISION}" if name == "openvino" else ""
    return f"{name} {version} (cpu{precision}, {threads} threads)"


def runtime_name(name: str | None = None, device: str | None = None) -> str:
    """How ``matchlens info`` shows the runtime this process would use."""
    chosen = resolve_runtime(name, device)
    if chosen == "pytorch":
        return describe_runtime(chosen, device or ("cuda" if cuda_available() else "cpu"))
    return describe_runtime(chosen)


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed: the name alone
        return "(not installed)"


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
    if name == "pytorch":
        return TorchRuntime(backbone, threads, device)
    if device is not None and not device.startswith("cpu"):
        raise ConfigError(f"runtime {name!r} runs on the CPU only; use --runtime pytorch for {device}")
    if importlib.util.find_spec(name) is None:
        raise ConfigError(f"runtime {name!r} is not installed (pip install {name}); "
                          f"choose one of: {', '.join(runtime_choices())}")
    from matchlens.extract.export import exported_model

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
    candidates = auto_candidates(device)
    for candidate in candidates[:-1]:
        try:
            return load_runtime(candidate, backbone, threads, device, cache_dir)
        except ConfigError as exc:
            (warn or _warn)(f"runtime {candidate} unavailable ({exc}); trying the next one")
    return load_runtime(candidates[-1], backbone, threads, device, cache_dir)


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
