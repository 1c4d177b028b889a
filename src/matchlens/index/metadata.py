"""Per-image metadata of a generation, in SQLite: id, vector row, path, sha256, size, mtime, status."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

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
    """Create ``meta.sqlite`` at ``path`` holding ``entries``."""
    con = sqlite3.connect(path)
    try:
        con.executescript(SCHEMA)
        con.executemany(
            "INSERT INTO images (id, row, path, sha256, size, mtime, status, error) VALUES (?,?,?,?,?,?,?,?)",
            [(e.id, e.row, e.path, e.sha256, e.size, e.mtime, e.status, e.error) for e in entries],
        )
        con.commit()
    finally:
        con.close()


def read_entries(path: Path) -> list[Entry]:
    """All entries of a ``meta.sqlite``, ordered by id."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT id, path, sha256, size, mtime, status, error, row FROM images ORDER BY id"
        ).fetchall()
    finally:
        con.close()
    return [Entry(*row) for row in rows]
