"""A torch-free query encoder: the index's own ONNX export run by ONNX Runtime, pooled in NumPy.

A cold ``matchlens search`` used to spend most of its time importing PyTorch, timm and
torchvision (about 3 s) and building the backbone, only to describe one image. An index can
instead carry the ONNX export of its network (:func:`write_query_model`, called by the index
builder), and a query is then described with ONNX Runtime, NumPy and PIL only
(:class:`LightEncoder`): decode, resize and normalise are the Extractor's own code
(:mod:`.preprocess`), the poolings are :mod:`.numpy_pooling`, and multi-scale sum and L2 follow
:meth:`Extractor.describe_image <matchlens.extract.extractor.Extractor.describe_image>`, so the
descriptors agree with the Extractor's to about 1e-6 (cosine; tests/test_light_encoder.py).

:func:`open_query_encoder` returns the light encoder where the folder holds a valid export for
the spec (and ONNX Runtime is installed and wanted), else the normal Extractor.

The folder (e.g. ``INDEX/model/``) holds two files, both written atomically:

* ``backbone.onnx``: image ``(1, 3, H, W)`` normalised float32 → ``features`` ``(1, C, h, w)``;
* ``model.json``: what the network is (backbone, weights id, channels, mean/std) and the
  sha256 and size of ``backbone.onnx``; written last, so a folder with a ``model.json`` is
  complete. The checksum is verified on every open (about 10 ms for the default network).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from matchlens.config import PipelineSpec
from matchlens.errors import ConfigError, IndexError_, MatchlensError
from matchlens.extract import export as onnx_export  # module-qualified: tests replace its tracer
from matchlens.extract.extractor import Extractor, runtime_name
from matchlens.extract.hardware import cpu_threads
from matchlens.extract.numpy_pooling import NUMPY_POOLINGS, numpy_pooling
from matchlens.extract.preprocess import load_for_spec, normaliser, scale_side, to_array
from matchlens.extract.runtime import AUTO, requested_runtime
from matchlens.extract.runtime_api import _version
from matchlens.fileio import atomic_path, atomic_write, write_json_atomic
from matchlens.linalg import l2_normalize

__all__ = ["LightEncoder", "MODEL_FILE", "META_FILE", "open_query_encoder", "read_query_model",
           "shared_query_encoder", "write_query_model"]

MODEL_FILE = "backbone.onnx"
META_FILE = "model.json"
FORMAT = "matchlens-query-model"
VERSION = 1
_INPUT, _OUTPUT = "image", "features"

Warn = Callable[[str], None]


# --- writing (build time: torch is loaded there anyway) ---------------------------------------
def write_query_model(spec: PipelineSpec, folder: str | os.PathLike, backbone: Any = None,
                      warn: Warn | None = None) -> dict[str, Any] | None:
    """Write the ONNX export of ``spec``'s network into ``folder`` (created if missing); returns
    the contents of its ``model.json`` (``sha256``, ``size``, ``weights_id``, ...), or None with a
    warning when the network cannot be exported to ONNX (queries then use the Extractor).

    ``backbone`` is the loaded network (e.g. ``extractor.backbone`` of the builder's Extractor);
    without it the backbone is loaded from the spec. The file is copied from the user's export
    cache (:mod:`.export`) when the runtime already made one, traced afresh otherwise. An export
    already in ``folder`` for the same network and intact is kept (not rewritten).
    Raises ConfigError when the spec's weights id disagrees with the backbone's, and
    IndexError_ when ``folder`` cannot be written.
    """
    if backbone is None:
        from matchlens.models import load_backbone  # deferred: imports torch, timm and torchvision

        backbone = load_backbone(spec.backbone, spec.weights)
    weights_id = str(getattr(backbone, "weights_id", "") or "")
    if spec.weights_id and weights_id and spec.weights_id != weights_id:
        raise ConfigError(f"the weights of backbone {spec.backbone} changed (index: {spec.weights_id}, "
                          f"now: {weights_id}); rebuild the index or restore the weights file")
    spec = spec.replace(weights_id=spec.weights_id or weights_id)
    target = Path(folder)
    try:
        existing = read_query_model(spec, target)
    except MatchlensError:
        existing = None  # damaged or another network's: written again below
    if existing is not None:
        return existing
    try:
        target.mkdir(parents=True, exist_ok=True)
        model = target / MODEL_FILE
        copied = _copy_cached_export(backbone, model)
        if copied is None:
            try:
                copied = _trace_into(backbone, model)
            except ConfigError as exc:
                (warn or _warn)(f"no torch-free query model for {spec.backbone}: {exc}")
                return None
        digest, size = copied
        meta = {
            "format": FORMAT, "version": VERSION,
            "backbone": spec.backbone, "weights_id": spec.weights_id,
            "out_channels": int(backbone.out_channels),
            "mean": [float(v) for v in backbone.mean], "std": [float(v) for v in backbone.std],
            "input": _INPUT, "output": _OUTPUT,
            "file": MODEL_FILE, "sha256": digest, "size": size,
            "raw_fingerprint": spec.raw_fingerprint(),
            "exported_with": _exported_with(),
        }
        write_json_atomic(target / META_FILE, meta, indent=2)
    except OSError as exc:
        raise IndexError_(f"cannot write the query model into {target}: {exc.strerror or exc}") from None
    return meta


def _copy_cached_export(backbone: Any, model: Path) -> tuple[str, int] | None:
    """Copy the user cache's export into ``model``; None where there is none and none can be made."""
    try:
        source, expected = onnx_export.exported_model(backbone)
    except ConfigError:  # unwritable cache or an unexportable network: the caller traces directly
        return None
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as src, atomic_write(model, "wb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
            dst.write(chunk)
        if digest.hexdigest() != expected:  # changed under us (a concurrent re-export): abandon
            raise OSError(f"the cached export {source} changed while it was copied")
    return digest.hexdigest(), size


def _trace_into(backbone: Any, model: Path) -> tuple[str, int]:
    """Trace ``backbone`` straight into ``model`` (atomically); ConfigError if it cannot be exported."""
    with atomic_path(model) as tmp:  # the exporter writes by file name, not into a handle
        onnx_export.write_onnx(backbone, tmp)
        digest, size = onnx_export.file_sha256(tmp), os.path.getsize(tmp)
    return digest, size


def _exported_with() -> str:
    return f"torch {onnx_export.torch_version()}, opset {onnx_export.OPSET}"


# --- reading (query time: no torch) -----------------------------------------------------------
_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) -> sha256: verified once per process


def read_query_model(spec: PipelineSpec, folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``model.json`` of ``folder`` if it holds an intact export of ``spec``'s network.

    None when the folder has no export at all (an index built without one); IndexError_ (one
    line) when there is one but it is damaged (unreadable, truncated, checksum mismatch) or made
    for another network (backbone or weights id differ from the spec's).
    """
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise IndexError_(f"the query model {meta_path} is unreadable ({type(exc).__name__}); "
                          "rebuild the index to rewrite it") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexError_(f"{meta_path} is not a matchlens query model description")
    if meta.get("version") != VERSION:
        raise IndexError_(f"the query model {meta_path} has version {meta.get('version')!r}; "
                          f"this matchlens reads version {VERSION}")
    try:
        expected_size, expected_sha = int(meta["size"]), str(meta["sha256"])
        int(meta["out_channels"]), normaliser(meta["mean"], meta["std"])
        model = folder / str(meta["file"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexError_(f"the query model description {meta_path} is incomplete ({exc})") from None
    if meta.get("backbone") != spec.backbone or not spec.weights_id or meta.get("weights_id") != spec.weights_id:
        raise IndexError_(f"the query model in {folder} is for {meta.get('backbone')} weights "
                          f"{meta.get('weights_id')}, not {spec.backbone} weights {spec.weights_id or '(unknown)'}")
    try:
        stat = model.stat()
        if stat.st_size != expected_size:
            raise IndexError_(f"the query model {model} is damaged (size {stat.st_size}, "
                              f"expected {expected_size}); rebuild the index to rewrite it")
        key = (str(model.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        digest = _DIGESTS.get(key)
        if digest is None:
            digest = onnx_export.file_sha256(model)
    except OSError as exc:
        raise IndexError_(f"the query model {model} is unreadable: {exc.strerror or exc}; "
                          "rebuild the index to rewrite it") from None
    if digest != expected_sha:
        raise IndexError_(f"the query model {model} is damaged (checksum mismatch); rebuild the index to rewrite it")
    _DIGESTS[key] = digest
    return meta


# Sessions shared by the encoders of one process (a server with several indexes, benchmarks).
_SESSIONS: dict[tuple, Any] = {}
_SESSIONS_LOCK = threading.Lock()


def _session(model: Path, digest: str, threads: int):
    import onnxruntime  # deferred: 0.1-0.2 s, only when a query is actually described

    key = (digest, threads)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is not None:
            return session
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its shape-inference notes are noise for users
        session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        if len(_SESSIONS) >= 4:
            _SESSIONS.pop(next(iter(_SESSIONS)))
        _SESSIONS[key] = session
        return session


class LightEncoder:
    """Describes queries like :class:`~matchlens.extract.extractor.Extractor`, with ONNX Runtime,
    NumPy and PIL only. Build it with :func:`open_query_encoder`.

    Offers what the search side uses of an Extractor: ``spec``, ``dim``, ``load(source, box)``,
    ``describe(source, box)``, ``describe_image(image)``, ``runtime`` and ``runtime_kind``.
    """

    runtime_kind = "onnxruntime"
    light = True

    def __init__(self, spec: PipelineSpec, folder: str | os.PathLike, meta: dict[str, Any],
                 threads: int | None = None) -> None:
        self.spec = spec
        self.folder = Path(folder)
        self.meta = meta
        self.threads = threads or cpu_threads()
        self._pool = numpy_pooling(spec.pooling, dict(spec.pooling_params))
        self._scale, self._offset = normaliser(meta["mean"], meta["std"])
        self._dim = int(meta["out_channels"])
        self._session = _session(self.folder / meta["file"], meta["sha256"], self.threads)

    @property
    def dim(self) -> int:
        """Width of the raw descriptor."""
        return self._dim

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def runtime(self) -> str:
        """E.g. ``onnxruntime 1.32.0 (cpu, 2 threads, torch-free)``."""
        return f"onnxruntime {_version('onnxruntime')} (cpu, {self.threads} threads, torch-free)"

    def load(self, source, box: Sequence[float] | None = None) -> Image.Image:
        """Decode (safely, upright, RGB) and optionally crop to a query box, as the Extractor does."""
        return load_for_spec(self.spec, source, box)

    def describe(self, source, box: Sequence[float] | None = None) -> np.ndarray:
        """Raw descriptor (d,) of an image given as path, bytes, PIL image or array."""
        return self.describe_image(self.load(source, box))

    def describe_image(self, image: Image.Image, parallel: bool = False) -> np.ndarray:
        """Raw descriptor of a decoded RGB image: multi-scale sum of L2-normalised poolings, L2."""
        total = np.zeros(self._dim, dtype=np.float64)
        for scale in self.spec.scales:
            x = to_array(image, scale_side(self.spec, scale), self._scale, self._offset)
            fmap = self._session.run(None, {_INPUT: x})[0]
            total += l2_normalize(self._pool(fmap[0])[None])[0]
        return l2_normalize(total)

    def feature_map(self, image: Image.Image, scale: float = 1.0) -> np.ndarray:
        """The network's feature map (1, C, h, w) as a NumPy array (the Extractor's is a tensor)."""
        return self._session.run(None, {_INPUT: to_array(image, scale_side(self.spec, scale),
                                                          self._scale, self._offset)})[0]


def open_query_encoder(spec: PipelineSpec, folder: str | os.PathLike | None, *, runtime: str | None = None,
                       threads: int | None = None, strict: bool = False,
                       warn: Warn | None = None) -> "LightEncoder | Extractor":
    """The encoder for queries against an index of ``spec`` whose query model is in ``folder``.

    A :class:`LightEncoder` (no torch) when ``folder`` holds an intact export of the spec's
    network, ONNX Runtime is installed and the runtime asked for (``runtime``, else
    ``--runtime``/``$MATCHLENS_RUNTIME``) is ``auto`` or ``onnxruntime``; otherwise
    ``Extractor(spec)``. A damaged or foreign export is reported through ``warn`` (default: a
    RuntimeWarning) and the Extractor used, or with ``strict`` raised as a one-line IndexError_.
    """
    if folder is not None and usable(spec, runtime):
        try:
            meta = read_query_model(spec, folder)
            if meta is not None:
                return LightEncoder(spec, folder, meta, threads)
        except MatchlensError as exc:
            if strict:
                raise
            (warn or _warn)(f"{exc}; describing queries with the full PyTorch pipeline instead")
        except Exception as exc:  # ONNX Runtime's load errors have no common type
            message = (f"the query model in {folder} cannot be loaded by ONNX Runtime "
                       f"({type(exc).__name__}: {(str(exc).splitlines() or ['no message'])[0][:200]})")
            if strict:
                raise IndexError_(message) from None
            (warn or _warn)(f"{message}; describing queries with the full PyTorch pipeline instead")
    return Extractor(spec, threads=threads, runtime=runtime)


def query_runtime_name(spec: PipelineSpec, folder: str | os.PathLike | None, runtime: str | None = None) -> str:
    """What describes the queries of an index (``matchlens info``): its exported model through
    ONNX Runtime, torch-free, when :func:`open_query_encoder` would use it, else the runtime's name."""
    if folder is not None and usable(spec, runtime):
        try:
            if read_query_model(spec, folder) is not None:
                return f"onnxruntime {_version('onnxruntime')} (cpu, the index's exported model, torch-free)"
        except MatchlensError as exc:
            return f"{runtime_name(runtime)} (the index's exported model is unusable: {exc})"
    return runtime_name(runtime)


_SHARED: dict[tuple[str, str], "LightEncoder | Extractor"] = {}
_SHARED_LOCK = threading.Lock()


def shared_query_encoder(spec: PipelineSpec, folder: str | os.PathLike) -> "LightEncoder | Extractor":
    """:func:`open_query_encoder`'s encoder for an index, one per (spec, folder) in the process:
    the stored kinds' sources (regional, ensemble) share it, so the network loads once."""
    key = (spec.fingerprint(), str(folder))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = open_query_encoder(spec, folder)
        return _SHARED[key]


def usable(spec: PipelineSpec, runtime: str | None = None) -> bool:
    """Whether the torch-free path may describe queries of ``spec`` (given an export): ONNX Runtime
    installed and asked for (``auto`` or ``onnxruntime``), and a NumPy twin of the spec's pooling
    (a pooling added without one is searched through PyTorch, see docs/extending.md)."""
    return (spec.pooling in NUMPY_POOLINGS and requested_runtime(runtime) in (AUTO, "onnxruntime")
            and _has_onnxruntime())


def _has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
