"""Atomic file writes: every file matchlens writes goes through :func:`atomic_write`.

A write goes to a temporary sibling, is flushed to disk, then renamed over the target, so a
crash or a full disk never leaves a half-written file where a good one was. Writers that need
a file *name* rather than an open handle (an exporter that opens the file itself) use
:func:`atomic_path`, the same mechanism.

The temporary sibling is ``.NAME.XXXXXXXX.tmp`` (``suffix`` replaces ``.tmp`` for tools that
look at the extension). A missing target folder is not created: it raises
:class:`FileNotFoundError` naming the target (not the temporary file), with the usual
``strerror``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_path", "atomic_write", "write_json_atomic", "write_text_atomic"]


def _temporary_sibling(target: Path, suffix: str) -> tuple[int, Path]:
    """An open descriptor and the path of a new empty file beside ``target``."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    except FileNotFoundError:
        if target.parent.is_dir():
            raise
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(target)) from None
    return fd, Path(name)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, suffix: str = ".tmp",
                 fsync: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing (``"wb"`` or ``"w"``, UTF-8); when the block
    ends without an error the data is flushed, fsynced and the file renamed onto ``path``;
    otherwise the temporary file is removed and ``path`` is left as it was.

    ``suffix`` ends the temporary file's name. ``fsync=False`` skips the fsync (the rename stays
    atomic, but a power cut may lose the new content): only for caches that are recomputed when
    missing or unreadable, where an fsync per small file would cost more than it saves.
    """
    target = Path(path)
    fd, tmp = _temporary_sibling(target, suffix)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """The path of a new empty temporary sibling of ``path``, for writers that open the file by
    name themselves; when the block ends without an error the file is fsynced and renamed onto
    ``path``, otherwise it is removed and ``path`` is left as it was (as :func:`atomic_write`)."""
    target = Path(path)
    fd, tmp = _temporary_sibling(target, suffix)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, payload: Any, indent: int | None = None,
                      sort_keys: bool = False) -> None:
    """Write ``payload`` as JSON (``json.dumps(payload, indent=indent, sort_keys=sort_keys)``) to
    ``path`` atomically."""
    write_text_atomic(path, json.dumps(payload, indent=indent, sort_keys=sort_keys))


def read_json_object(path: str | os.PathLike, label: str, error: type[Exception], hint: str) -> dict:
    """The JSON object in ``path``; ``error`` with one line (``label`` names the file, ``hint``
    says what the object must hold) when it cannot be read, is not JSON or is not an object."""
    where = os.fspath(path)
    try:
        data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"cannot read {label} '{where}': {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{label} '{where}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{label} '{where}' must hold a JSON object {hint}")
    return data


def swap_in_folder(work: str | os.PathLike, out: str | os.PathLike) -> None:
    """Put the finished folder ``work`` at ``out`` by renames: an existing ``out`` is moved aside
    first and removed after, so a reader finds the old folder or the new one, never a mix."""
    work, out = Path(work), Path(out)
    if not os.path.lexists(out):
        os.replace(work, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(work, out)
    shutil.rmtree(old, ignore_errors=True)
