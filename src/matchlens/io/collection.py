"""Turning a SOURCE (folder, list file, or image file) into the list of files to index.

Scanning never fails on one odd directory entry: a FIFO, device or socket, a broken symbolic link,
a symlink loop, an unreadable file or a file whose name is not valid UTF-8 is still listed as a
candidate, and the reader (:func:`matchlens.io.images.read_image_file`, used by the extractor)
skips it with a one-line reason that the index stores and reports. Nothing is opened here, so a
FIFO cannot block a scan.

Paths are returned as printable text: a name that is not valid UTF-8 (possible on POSIX file
systems) is given with its undecodable bytes as ``\\xNN`` escapes (:func:`display_path`), which
can be stored, printed and sent as JSON; the reader recognises such a path and skips it with
"file name is not valid UTF-8; rename it".
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from matchlens.errors import SourceError

LIST_SUFFIXES = {".txt", ".lst", ".list"}

_ESCAPED_BYTE = re.compile(rb"\\x([0-9a-f]{2})")


def scan_source(source: str | os.PathLike) -> list[str]:
    """Absolute, de-duplicated, sorted paths of the candidate files of ``source``.

    A folder is walked recursively (hidden files and folders are ignored; every other entry is a
    candidate and the image loader decides by content whether it is an image). A ``.txt``/``.lst``
    file lists one path per line (relative paths are relative to the list's folder; blank lines
    and ``#`` comments are ignored). Any other file is a single candidate.

    Raises:
        SourceError: ``source`` is empty or blank, does not exist, or names nothing.
    """
    text = os.fsdecode(source)
    shown = display_path(text)
    if not text.strip():
        raise SourceError("empty path: name a folder, a list file or an image file")
    path = Path(text).expanduser()
    if not path.exists():
        if os.path.islink(path):
            raise SourceError(f"'{shown}' is a broken symbolic link or a symlink loop")
        raise SourceError(f"no such file or folder: '{shown}'")
    if path.is_dir():
        files = _walk(path)
        if not files:
            raise SourceError(f"folder '{shown}' contains no files")
        return files
    if path.suffix.lower() in LIST_SUFFIXES:
        return _read_list(path)
    return [listed_path(str(path))]


def scan_many(sources: list[str]) -> list[str]:
    """:func:`scan_source` over several sources, merged without duplicates (first seen order kept)."""
    seen: dict[str, None] = {}
    for source in sources:
        seen.update(dict.fromkeys(scan_source(source)))
    return list(seen)


def display_path(path: str) -> str:
    """``path`` as valid, printable text: itself, unless it holds bytes that are not UTF-8.

    Python gives such a file name as a str with surrogate escapes, which cannot be encoded to
    UTF-8 (SQLite, JSON, the terminal); the undecodable bytes become ``\\xNN`` escapes instead,
    e.g. ``caf\\xe9.jpg`` for the Latin-1 name ``café.jpg``.
    """
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    try:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a file name
        return path.encode("utf-8", "backslashreplace").decode("utf-8")


def undecodable_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the :func:`display_path` of an existing file whose name is not UTF-8
    (so it cannot be opened under that name), or a surrogate-escaped name itself."""
    text = os.fsdecode(path)
    if display_path(text) != text:
        return True
    if "\\x" not in text:
        return False
    raw = _ESCAPED_BYTE.sub(lambda found: bytes([int(found.group(1), 16)]), text.encode("utf-8"))
    try:
        raw.decode("utf-8")
        return False  # the escapes spell valid UTF-8: not a name display_path wrote
    except UnicodeDecodeError:
        return os.path.lexists(raw)


def listed_path(path: str | os.PathLike) -> str:
    """The absolute path the scanner lists for ``path``; never raises (unlike ``Path.resolve``,
    which raises RuntimeError on a symlink loop), so it also suits matching user-given paths
    against listed or indexed ones.

    Symbolic links are resolved; a link whose target does not exist (broken, or a loop: the
    reader then says which) is listed as the link itself. The result is :func:`display_path` text."""
    path = os.fsdecode(path)
    try:
        real = os.path.realpath(path)  # unlike Path.resolve, never raises on a loop
        if os.path.islink(path) and not os.path.exists(real):
            real = os.path.abspath(path)
    except (OSError, ValueError):
        real = os.path.abspath(path)
    return display_path(real)


def _walk(root: Path) -> list[str]:
    found: list[str] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(listed_path(os.path.join(folder, n)) for n in names if not n.startswith("."))
    return sorted(dict.fromkeys(found))


def _read_list(list_file: Path) -> list[str]:
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SourceError(f"list file '{display_path(str(list_file))}' is not UTF-8 text") from None
    except OSError as exc:
        raise SourceError(f"cannot read list file '{display_path(str(list_file))}': {exc.strerror}") from None
    base = os.path.dirname(os.path.realpath(list_file))
    paths = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = os.path.expanduser(line)
            paths.append(listed_path(os.path.join(base, p)))  # join keeps an absolute p as it is
    if not paths:
        raise SourceError(f"list file '{display_path(str(list_file))}' names no files")
    return list(dict.fromkeys(paths))


def file_memo_key(source: object, box: Sequence[float] | None = None) -> tuple | None:
    """A memo key for a query given as a file: (absolute path, size, mtime, box); None for
    in-memory queries and unreadable paths (never memoised). A changed file gets a new key."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    try:
        stat = os.stat(source)
        real = os.path.realpath(source)
    except (OSError, ValueError):
        return None
    return (os.fsdecode(real), stat.st_size, stat.st_mtime_ns,
            None if box is None else tuple(float(v) for v in box))
