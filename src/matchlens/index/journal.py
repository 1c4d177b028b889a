"""The build journal: descriptors finished by a build that has not been committed yet.

Every finished image is written here (committed in small batches) before the new generation
exists, so a build stopped by Ctrl-C or ``kill -9`` resumes without recomputing them. Entries
are keyed by path and only reused when size, mtime and the raw-descriptor fingerprint match.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np

JOURNAL = "journal.sqlite"


class Journal:
    """Append-mostly store of finished extractions for one index directory."""

    def __init__(self, root: Path, raw_fingerprint: str, commit_every: float = 1.0) -> None:
        self.path = root / JOURNAL
        self.fingerprint = raw_fingerprint
        self._con = sqlite3.connect(self.path)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS done (path TEXT PRIMARY KEY, fingerprint TEXT, sha256 TEXT,"
            " size INTEGER, mtime REAL, vector BLOB, error TEXT)"
        )
        self._commit_every = commit_every
        self._last_commit = time.monotonic()

    def lookup(self, path: str, size: int, mtime: float) -> tuple[str, np.ndarray | None, str | None] | None:
        """(sha256, vector, error) of a finished item whose file is unchanged, else None."""
        row = self._con.execute(
            "SELECT sha256, vector, error FROM done WHERE path=? AND fingerprint=? AND size=? AND mtime=?",
            (path, self.fingerprint, size, mtime),
        ).fetchone()
        if row is None:
            return None
        sha, blob, error = row
        return sha, (np.frombuffer(blob, dtype=np.float32).copy() if blob is not None else None), error

    def record(self, path: str, sha256: str, size: int, mtime: float, vector: np.ndarray | None, error: str | None) -> None:
        """Store one finished item; commits at most every ``commit_every`` seconds (batched for speed)."""
        blob = None if vector is None else np.asarray(vector, dtype=np.float32).tobytes()
        self._con.execute(
            "INSERT OR REPLACE INTO done VALUES (?,?,?,?,?,?,?)",
            (path, self.fingerprint, sha256, size, mtime, blob, error),
        )
        if time.monotonic() - self._last_commit >= self._commit_every:
            self.flush()

    def count(self) -> int:
        """Finished items recorded for this fingerprint."""
        return self._con.execute("SELECT COUNT(*) FROM done WHERE fingerprint=?", (self.fingerprint,)).fetchone()[0]

    def flush(self) -> None:
        """Make everything recorded so far durable."""
        self._con.commit()
        self._last_commit = time.monotonic()

    def close(self) -> None:
        """Flush and close."""
        self.flush()
        self._con.close()

    def clear(self) -> None:
        """Forget everything (after the generation that contains it has been committed)."""
        self._con.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
