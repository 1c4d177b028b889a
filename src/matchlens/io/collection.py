"""Turning a SOURCE (folder, list file, or image file) into the list of files to index."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from matchlens.errors import SourceError

LIST_SUFFIXES = {".txt", ".lst", ".list"}


def scan_source(source: str | os.PathLike) -> list[str]:
    """Absolute, de-duplicated, sorted paths of the candidate files of ``source``.

    A folder is walked recursively (hidden files and folders are ignored; every other file is a
    candidate and the image loader decides by content whether it is an image). A ``.txt``/``.lst``
    file lists one path per line (relative paths are relative to the list's folder; blank lines
    and ``#`` comments are ignored). Any other file is a single candidate.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"no such file or folder: '{source}'")
    if path.is_dir():
        files = _walk(path)
        if not files:
            raise SourceError(f"folder '{source}' contains no files")
        return files
    if path.suffix.lower() in LIST_SUFFIXES:
        return _read_list(path)
    return [str(path.resolve())]


def scan_many(sources: list[str]) -> list[str]:
    """:func:`scan_source` over several sources, merged without duplicates (first seen order kept)."""
    seen: dict[str, None] = {}
    for source in sources:
        seen.update(dict.fromkeys(scan_source(source)))
    return list(seen)


def _walk(root: Path) -> list[str]:
    found: list[str] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(str((Path(folder) / n).resolve()) for n in names if not n.startswith("."))
    return sorted(dict.fromkeys(found))


def _read_list(list_file: Path) -> list[str]:
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SourceError(f"list file '{list_file}' is not UTF-8 text") from None
    except OSError as exc:
        raise SourceError(f"cannot read list file '{list_file}': {exc.strerror}") from None
    base = list_file.resolve().parent
    paths = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            paths.append(str((p if p.is_absolute() else base / p).resolve()))
    if not paths:
        raise SourceError(f"list file '{list_file}' names no files")
    return list(dict.fromkeys(paths))


def file_memo_key(source: object, box: Sequence[float] | None = None) -> tuple | None:
    """A memo key for a query given as a file: (absolute path, size, mtime, box); None for
    in-memory queries and unreadable paths (never memoised). A changed file gets a new key."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    try:
        stat = os.stat(source)
    except OSError:
        return None
    return (str(Path(source).resolve()), stat.st_size, stat.st_mtime_ns,
            None if box is None else tuple(float(v) for v in box))
