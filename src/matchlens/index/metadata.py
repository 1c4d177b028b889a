"""Per-image metadata of a generation, in SQLite: id, vector row, path, sha256, size, mtime, status."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

from matchlens.io.collection import display_path

SCHEMA = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    row INTEGER UNIQUE,          -- row in descriptors.npy / vectors.npy; NULL when skipped
    path TEXT NOT NULL UNIQUE,   -- absolute path
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('indexed', 'skipped')),
    error TEXT
);
"""


@dataclass
class Entry:
    """One image of an index, indexed or skipped (with the reason)."""

    id: int
    path: str
    sha256: str
    size: int
    mtime: float
    status: str
    error: str | None = None
    row: int | None = None


def write_entries(path: Path, entries: Iterable[Entry]) -> None:
    """Create ``meta.sqlite`` at ``path`` holding ``entries``.

    A path or error that is not valid UTF-8 text (a file name with undecodable bytes, which
    Python gives with surrogate escapes) is stored in its printable form, the bytes written as
    ``\\xNN`` (:func:`~matchlens.io.collection.display_path`), so one odd name never fails a build.
    """
    rows = []
    for e in entries:
        shown = display_path(e.path)
        rows.append((e.id, e.row, shown, e.sha256, e.size, e.mtime, e.status,
                     None if e.error is None else display_path(e.error)))
    con = sqlite3.connect(path)
    try:
        con.executescript(SCHEMA)
        con.executemany(
            "INSERT INTO images (id, row, path, sha256, size, mtime, status, error) VALUES (?,?,?,?,?,?,?,?)",
            rows,
        )
        con.commit()
    finally:
        con.close()


def read_entries(path: Path) -> list[Entry]:
    """All entries of a ``meta.sqlite``, ordered by id."""
    # A URI so the file is opened read-only and immutable (a generation never changes, and no
    # lock or journal file is created beside it); quoted, since '#', '?' and '%' are legal in paths.
    con = sqlite3.connect(f"file:{quote(os.fsencode(Path(path).absolute()))}?mode=ro&immutable=1", uri=True)
    try:
        rows = con.execute(
            "SELECT id, path, sha256, size, mtime, status, error, row FROM images ORDER BY id"
        ).fetchall()
    finally:
        con.close()
    return [Entry(*row) for row in rows]
