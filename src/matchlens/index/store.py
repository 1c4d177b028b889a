"""The on-disk layout of an index and its atomic replacement.

An index is a directory::

    DIR/CURRENT          name of the live generation (replaced atomically with os.replace)
    DIR/gen-000007/      one complete, immutable generation:
        manifest.json    format, version, spec, counts, sha256 of every other file
        descriptors.npy  raw (pre-whitening) descriptors, one row per indexed image
        vectors.npy      searchable (whitened, L2) vectors, same rows
        whitening.npz    learned whitening parameters (when the spec has whitening)
        meta.sqlite      id, row, path, sha256, size, mtime, status, error
    DIR/journal.sqlite   finished extractions of an unfinished build (resume after a crash)
    DIR/.lock            held (flock) by the one process writing the index

A writer builds a new generation in a temporary sibling, fsyncs it, renames it into place and
only then points CURRENT at it; readers resolve CURRENT once and read one generation, so they
never see a half-written index, and a crash at any point leaves the previous one intact.

Readers hold a shared ``flock`` on ``gen-N/.readers`` for as long as they use the generation
(:class:`ReaderLock`; the kernel drops it when a reader exits, even by ``kill -9``). After a
commit the writer deletes an old generation only when it can take that lock exclusively, i.e.
when no reader holds it; a generation still in use is deleted by a later commit. A reader that
resolved CURRENT just before a commit and finds its generation gone (or being deleted) resolves
CURRENT again, so opening an index never fails because of a concurrent writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from matchlens.errors import IndexError_

FORMAT = "matchlens-index"
FORMAT_VERSION = 1
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
GEN_PREFIX = "gen-"
TMP_PREFIX = ".tmp-"
READERS = ".readers"  # inside each generation: the file readers hold a shared flock on
_OPEN_ATTEMPTS = 50  # a reader re-resolves CURRENT at most this often while writers commit


@dataclass(frozen=True)
class Generation:
    """One complete generation directory and its parsed manifest."""

    path: Path
    manifest: dict[str, Any]


def is_index_dir(root: Path) -> bool:
    """True when ``root`` looks like a matchlens index (has a CURRENT pointer)."""
    return (root / CURRENT).is_file()


def current_generation(root: Path) -> Generation:
    """Resolve and validate the live generation, or raise a one-line IndexError_ (no reader lock:
    use :func:`open_generation` to read a generation while writers may commit)."""
    root = Path(root)
    name = _pointer(root)
    if not (root / name).is_dir():
        raise IndexError_(f"index '{root}' is corrupt: {CURRENT} points to a missing generation {name!r}")
    gen_dir = root / name
    return Generation(gen_dir, read_manifest(gen_dir))


def open_generation(root: Path) -> tuple[Generation, "ReaderLock | None"]:
    """The live generation with a reader lock held on it (release with ``lock.release()``).

    A generation a writer deleted between reading CURRENT and locking it is noticed, and CURRENT
    is resolved again; an error is raised only when CURRENT did not move (a real corruption)."""
    root = Path(root)
    for attempt in range(_OPEN_ATTEMPTS):
        name = _pointer(root)
        try:
            lock = ReaderLock.acquire(root / name)
        except _Gone:
            if _pointer(root) == name and not (root / name).is_dir():
                raise IndexError_(f"index '{root}' is corrupt: {CURRENT} points to a missing generation {name!r}") from None
            time.sleep(0.002 * attempt)
            continue
        try:
            return Generation(root / name, read_manifest(root / name)), lock
        except BaseException:
            if lock is not None:
                lock.release()
            raise
    raise IndexError_(f"index '{root}' changed {_OPEN_ATTEMPTS} times while being opened; try again")


def _pointer(root: Path) -> str:
    """The generation name CURRENT holds (checked for shape, not for existence)."""
    if not root.exists():
        raise IndexError_(f"no index at '{root}' (the folder does not exist); build one with 'matchlens index'")
    if not root.is_dir():
        raise IndexError_(f"'{root}' is a file, not an index folder")
    pointer = root / CURRENT
    if not pointer.is_file():
        raise IndexError_(f"'{root}' is not a matchlens index (no {CURRENT} file)")
    try:
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as exc:
        raise IndexError_(f"cannot read index '{root}': {exc.strerror or exc}") from None
    if not name.startswith(GEN_PREFIX) or "/" in name or name in (".", ".."):
        raise IndexError_(f"index '{root}' is corrupt: {CURRENT} points to a missing generation {name!r}")
    return name


class _Gone(Exception):
    """The generation was deleted, or is being deleted, by a writer."""


class ReaderLock:
    """A shared flock on ``gen/.readers``: while held, no writer deletes the generation.

    Released by :meth:`release`, when the object is garbage-collected, or by the kernel when the
    process ends. None is returned instead on a generation that cannot hold a lock file (a
    read-only copy of an index, where no writer can delete anything either)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def acquire(cls, gen_dir: Path) -> "ReaderLock | None":
        """Lock ``gen_dir`` for reading; raises _Gone when a writer deleted or is deleting it."""
        path = gen_dir / READERS
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not gen_dir.is_dir():
                raise _Gone() from None
            try:  # a generation written before reader locks existed
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                if not gen_dir.is_dir():
                    raise _Gone() from None
                return None
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            # Locked, but possibly a file the writer unlinked just before: still the live one?
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise _Gone()
        except (BlockingIOError, FileNotFoundError, _Gone):
            os.close(fd)
            raise _Gone() from None
        except OSError:  # a file system without flock (some network mounts): read unprotected
            os.close(fd)
            return None
        return cls(fd)

    def release(self) -> None:
        """Let writers delete the generation (idempotent)."""
        self._finalizer()


def read_manifest(gen_dir: Path) -> dict[str, Any]:
    """Parse and check a generation's manifest (format, version, listed files present with their sizes)."""
    try:
        manifest = json.loads((gen_dir / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexError_(f"index generation '{gen_dir}' is corrupt: {MANIFEST} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IndexError_(f"index generation '{gen_dir}' is corrupt: {MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexError_(f"'{gen_dir}' is not a matchlens index generation (foreign manifest)")
    if manifest.get("version") != FORMAT_VERSION:
        raise IndexError_(
            f"index format version {manifest.get('version')} is not supported (this matchlens reads {FORMAT_VERSION})"
        )
    for name, entry in manifest.get("files", {}).items():
        path = gen_dir / name
        if not path.is_file() or path.stat().st_size != entry["size"]:
            raise IndexError_(f"index generation '{gen_dir}' is corrupt: {name} is missing or has the wrong size")
    return manifest


def verify_checksums(gen: Generation) -> list[str]:
    """Names of the files whose sha256 differs from the manifest (empty when all is well)."""
    return [name for name, entry in gen.manifest.get("files", {}).items() if file_sha256(gen.path / name) != entry["sha256"]]


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Hold the index's write lock; a second writer gets a one-line error instead of waiting.

    Any OSError or SQLite error inside (permissions, disk full, read-only file system) becomes a
    one-line IndexError_: every write goes to a new generation, so the previous index is intact.
    """
    if root.exists() and not root.is_dir():
        raise IndexError_(f"'{root}' is a file, not an index folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / ".lock", "a+")
    except OSError as exc:
        raise IndexError_(f"cannot write index '{root}': {exc.strerror or exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise IndexError_(f"index '{root}' is being written by another matchlens process; try again when it finishes") from None
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise IndexError_(f"could not write index '{root}': {reason}; the previous index is intact") from None
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def new_generation_dir(root: Path) -> Path:
    """A fresh temporary directory inside ``root`` to build the next generation in."""
    cleanup_stale(root)
    return Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))


def commit_generation(root: Path, tmp_dir: Path, manifest: dict[str, Any]) -> Generation:
    """Checksum, fsync and atomically publish ``tmp_dir`` as the new live generation (the
    superseded ones stay until :func:`remove_old_generations`)."""
    manifest = {**manifest, "format": FORMAT, "version": FORMAT_VERSION}
    manifest["files"] = {
        p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(tmp_dir.iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    _write_text_synced(tmp_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    (tmp_dir / READERS).touch()
    for path in tmp_dir.iterdir():
        _fsync_file(path)
    _fsync_dir(tmp_dir)
    final = root / f"{GEN_PREFIX}{_next_number(root):06d}"
    os.rename(tmp_dir, final)
    _fsync_dir(root)
    # The switch itself: one atomic rename of a fully written pointer file.
    pointer_tmp = root / f"{TMP_PREFIX}{CURRENT}"
    _write_text_synced(pointer_tmp, final.name + "\n")
    os.replace(pointer_tmp, root / CURRENT)
    _fsync_dir(root)
    return Generation(final, manifest)


def cleanup_stale(root: Path) -> None:
    """Remove temporary directories left by crashed writers (call only under the writer lock)."""
    for path in root.glob(f"{TMP_PREFIX}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _next_number(root: Path) -> int:
    numbers = [int(p.name[len(GEN_PREFIX):]) for p in root.glob(f"{GEN_PREFIX}*") if p.name[len(GEN_PREFIX):].isdigit()]
    return max(numbers, default=0) + 1


def remove_old_generations(root: Path, keep: str) -> None:
    """Delete the generations before ``keep`` that no reader holds; the others wait for a later commit."""
    busy = [p for p in root.glob(f"{GEN_PREFIX}*") if p.name != keep and p.is_dir() and not _remove_unread(p)]
    if busy:
        # Readers of this very process that nobody references any more may only be waiting for
        # the cycle collector to release their locks.
        gc.collect()
        for path in busy:
            _remove_unread(path)


def _remove_unread(gen_dir: Path) -> bool:
    """Delete ``gen_dir`` unless a reader holds it; False when it was kept."""
    try:
        fd = os.open(gen_dir / READERS, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return False  # cannot tell whether it is in use: keep it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False  # a reader holds it
    try:
        # Out of the gen-* namespace first, so no reader can start on it; then delete it.
        trash = gen_dir.with_name(f"{TMP_PREFIX}old-{gen_dir.name}")
        os.rename(gen_dir, trash)
        (trash / READERS).unlink(missing_ok=True)
        shutil.rmtree(trash, ignore_errors=True)
    except OSError:
        return False  # retried by the next commit
    finally:
        os.close(fd)
    return True


def _write_text_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
