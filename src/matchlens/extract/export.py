"""The backbone exported to ONNX once, cached on disk, shared by ONNX Runtime and OpenVINO.

The file is keyed by what decides its content: backbone name, weights id, ONNX opset and the
torch version that traced it. It lives in the user cache (``$MATCHLENS_CACHE``, else
``$XDG_CACHE_HOME/matchlens``, else ``~/.cache/matchlens``) under ``onnx/``, so every index of
the same backbone and weights shares one export. Writes are atomic (temporary sibling, fsync,
rename), a sidecar ``.sha256`` file guards against a truncated or damaged model (which is then
exported again), and a lock file stops parallel processes (Dask workers) from exporting at once.
Only the :data:`KEEP_EXPORTS` most recently used exports are kept (fine-tuning makes new weights
often; each export is 10-100 MB). A network that exists only as ONNX is not traced: its
feature-map part is cut from its own file (:func:`write_onnx`) into the same cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, cast

from matchlens.errors import ConfigError
from matchlens.fileio import atomic_path, write_text_atomic

if TYPE_CHECKING:  # annotations only: importing this module must not import torch
    import torch

OPSET = 17
CACHE_ENV = "MATCHLENS_CACHE"
KEEP_EXPORTS = 8
_EXPORT_SIZE = (256, 320)  # H, W of the tracing input; any size works (H and W are dynamic axes)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def torch_version() -> str:
    """The installed torch's version without its local part (``2.14.1``), without importing it
    where it is not loaded yet."""
    module = sys.modules.get("torch")
    if module is not None:
        return str(module.__version__).split("+")[0]
    try:
        return importlib.metadata.version("torch").split("+")[0]
    except Exception:  # not installed: no export can have been traced by it
        return "none"


def cache_root() -> Path:
    """The user cache folder of matchlens (``$MATCHLENS_CACHE`` wins)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "matchlens"


def onnx_path(backbone: torch.nn.Module, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the ONNX export of ``backbone`` is (or will be) cached."""
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "onnx"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", getattr(backbone, "name", type(backbone).__name__))
    weights = getattr(backbone, "weights_id", "") or _state_id(backbone)
    return folder / f"{name}-{weights}-opset{OPSET}-torch{torch_version()}.onnx"


def exported_model(backbone: torch.nn.Module, cache_dir: str | os.PathLike | None = None,
                   force: bool = False) -> tuple[Path, str]:
    """(path, sha256) of the cached ONNX export of ``backbone``, exporting it if missing or damaged.

    ``force`` re-exports even a file whose checksum is fine (a runtime could not read it).
    Raises ConfigError when the cache folder cannot be written or the network cannot be exported.
    """
    path = onnx_path(backbone, cache_dir)
    digest = None if force else verified_digest(path)
    if digest is not None:
        _touch(path)
        return path, digest
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _export_lock(path):
            digest = None if force else verified_digest(path)  # another process may have just written it
            if digest is None:
                digest = _export(backbone, path)
                prune(path.parent, keep=path)
            return path, digest
    except OSError as exc:
        raise ConfigError(f"cannot write the ONNX model cache {path.parent}: {exc.strerror or exc}; "
                          f"set {CACHE_ENV} to a writable folder or use --runtime pytorch") from None


def verified_digest(path: Path) -> str | None:
    """The sha256 of ``path`` if it matches its sidecar checksum file, else None."""
    sidecar = _sidecar(path)
    try:
        expected = sidecar.read_text().strip()
        actual = file_sha256(path)
    except OSError:
        return None
    return actual if actual == expected else None


def prune(folder: Path, keep: Path | None = None, limit: int = KEEP_EXPORTS) -> list[Path]:
    """Delete all but the ``limit`` most recently used exports in ``folder`` (never ``keep``); returns them."""
    models = sorted(folder.glob("*.onnx"), key=_mtime, reverse=True)
    removed = [p for p in models[limit:] if p != keep]
    for model in removed:  # a process still reading one keeps its open file; others re-export
        for leftover in (model, _sidecar(model), model.with_name(model.name + ".lock")):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass  # another process's business (permissions, a concurrent prune)
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # pruned by another process meanwhile
        return 0.0


def _touch(path: Path) -> None:
    """Mark an export as used (its mtime orders :func:`prune`); a read-only cache is fine."""
    try:
        os.utime(path)
    except OSError:
        pass


def _export(backbone: torch.nn.Module, path: Path) -> str:
    with atomic_path(path) as tmp:  # the exporter writes by file name, not into a handle
        write_onnx(backbone, tmp)
        digest = file_sha256(tmp)
    _write_atomic(_sidecar(path), digest + "\n")
    return digest


def write_onnx(backbone: torch.nn.Module, target: Path) -> None:
    """Write ``backbone``'s ONNX model to ``target``: traced, or for a network that exists only as
    ONNX (``backbone.onnx_only``) its feature-map part cut from its own file."""
    if getattr(backbone, "onnx_only", False):
        cast(Any, backbone).write_onnx(target)
    else:
        _trace_to_onnx(backbone, target)


def _trace_to_onnx(backbone: torch.nn.Module, target: Path) -> None:
    """Trace with the TorchScript-based exporter (needs only ``onnx``; the dynamo one needs onnxscript)."""
    import torch  # deferred: tracing needs PyTorch (the caller has a torch backbone, so it is loaded)

    device = next(backbone.parameters()).device
    dummy = torch.zeros(1, 3, *_EXPORT_SIZE, device=device)
    axes = {0: "batch", 2: "height", 3: "width"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notice: not the user's business
            torch.onnx.export(backbone, (dummy,), str(target), dynamo=False, opset_version=OPSET,
                              input_names=["image"], output_names=["features"],
                              dynamic_axes={"image": axes, "features": axes})
    except Exception as exc:  # torch raises many types here; all mean "this network cannot be exported"
        name = getattr(backbone, "name", type(backbone).__name__)
        raise ConfigError(f"backbone {name!r} cannot be exported to ONNX ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'no message'}); use --runtime pytorch") from None


@contextlib.contextmanager
def _export_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock beside ``path`` (no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent exports just both write; renames keep the file whole
        yield
        return
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_atomic(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def _state_id(module: torch.nn.Module) -> str:
    """A content hash of the parameters, for modules without a weights id (never for real backbones)."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
