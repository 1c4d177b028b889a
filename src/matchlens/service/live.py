"""The index a server answers from: one immutable snapshot per request, writes one at a time.

An :class:`~matchlens.pipeline.Index` object reads one generation forever, and writers publish
a new generation atomically. So a search takes the current snapshot once and uses it to the end
(rows, ids and paths stay consistent even if a write finishes meanwhile), while an add or remove
builds the next generation in a worker thread; the new snapshot replaces the old one only when
it is fully loaded, so no search ever waits for a write or pays for loading the model.

Uploads are stored and indexed as one step (:meth:`LiveIndex.add_uploads`): a failure leaves no
file in ``uploads/``, and a stored file the index could not read is not kept either.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from matchlens.errors import MatchlensError
from matchlens.pipeline import BuildReport, Index, open_index
from matchlens.index.metadata import Entry
from matchlens.service.uploads import write_inside

UPLOADS = "uploads"


class NotFound(MatchlensError):
    """No indexed image has the requested id (HTTP 404)."""

    http_status = 404


@dataclass(frozen=True)
class Snapshot:
    """One generation of the index and its id → entry map (indexed images only)."""

    index: Index
    by_id: dict[int, Entry] = field(repr=False)

    def entry(self, image_id: int) -> Entry:
        """The indexed image with metadata id ``image_id`` (NotFound otherwise)."""
        try:
            return self.by_id[image_id]
        except KeyError:
            raise NotFound(f"no indexed image has id {image_id}") from None


def _snapshot(index: Index) -> Snapshot:
    """Load everything a search needs now (model and runtime, whitening, FAISS), so requests
    never race to load it and the first search is not slower than the others."""
    index.encode_query(Image.new("RGB", (64, 64), (127, 127, 127)))
    if index.size:
        index.search_vectors(np.zeros((1, index.dim), np.float32), 1)  # builds the FAISS index
    return Snapshot(index, {e.id: e for e in index.entries if e.status == "indexed"})


class LiveIndex:
    """The current snapshot of an index directory, swapped atomically after each write."""

    def __init__(self, root: str | os.PathLike) -> None:
        self._snapshot = _snapshot(open_index(root))
        self._write_lock = threading.Lock()  # one writer per server; other processes: the index's flock

    @property
    def root(self) -> Path:
        """The index directory."""
        return self._snapshot.index.root

    @property
    def uploads(self) -> Path:
        """Where images added through the API are stored (inside the index directory)."""
        return self.root / UPLOADS

    def snapshot(self) -> Snapshot:
        """The current snapshot; keep using the same one for a whole request."""
        return self._snapshot  # a single attribute read: atomic under the GIL

    def add(self, paths: Sequence[str]) -> tuple[Snapshot, BuildReport]:
        """Index ``paths`` (files) into a new generation and make it current."""
        with self._write_lock:
            index, report = self._snapshot.index.add(list(paths))
            self._snapshot = _snapshot(index)
            return self._snapshot, report

    def add_uploads(self, files: Sequence[tuple[str, bytes]]) -> tuple[Snapshot, list[Entry]]:
        """Store ``(safe name, bytes)`` pairs under :attr:`uploads` and index them, one write at a
        time; returns the new snapshot and the entry of each file as indexed or skipped.

        Nothing is left behind: if writing or indexing fails, the files this call created are
        removed (a file of the same content that was already there, perhaps indexed by an
        earlier upload, stays) and the error is raised; files the index skipped (it could not
        read them) are taken out of the index and deleted. An ``uploads`` folder created here is
        removed again when it is left empty.
        """
        with self._write_lock:  # also keeps two uploads of one image from deleting each other's file
            folder = self.uploads
            had_folder = folder.is_dir()
            created: list[Path] = []
            stored: list[str] = []
            try:
                for name, data in files:
                    existed = (folder / name).exists()
                    path = write_inside(folder, name, data)
                    if not existed:
                        created.append(path)
                    stored.append(str(path))
                index, _ = self._snapshot.index.add(stored)
            except BaseException:
                self._discard(created, had_folder)
                raise
            # Published: the index refers to these files now; only the ones it skipped are taken back.
            by_path = {e.path: e for e in index.entries}
            entries = [by_path[p] for p in stored]
            unreadable = [p for p in created if by_path[str(p)].status != "indexed"]
            if unreadable:
                index, _ = index.remove([str(p) for p in unreadable])
                self._discard(unreadable, had_folder)
            self._snapshot = _snapshot(index)
            return self._snapshot, entries

    def _discard(self, paths: Sequence[Path], had_folder: bool) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        if not had_folder:
            with contextlib.suppress(OSError):  # not empty: someone else's files are there
                self.uploads.rmdir()

    def remove(self, image_id: int) -> tuple[Snapshot, Entry]:
        """Remove the image with id ``image_id`` (NotFound if it is not indexed); returns its entry.

        A file the API itself stored (under :attr:`uploads`) is deleted too; a user's own file
        never is.
        """
        with self._write_lock:
            entry = self._snapshot.entry(image_id)  # re-checked under the lock: two DELETEs, one wins
            index, _ = self._snapshot.index.remove([entry.path])
            self._snapshot = _snapshot(index)
        path = Path(entry.path)
        if path.parent == self.uploads.resolve():
            path.unlink(missing_ok=True)
        return self._snapshot, entry
