"""Labelled images for a recognizer: a folder of class folders, or a CSV of ``path,label`` rows
(an optional header; relative paths are relative to the CSV's folder), and optional titles
(``path,title`` CSV, matched by path or file name).

Decisions on bad input: a label that names a missing file stops with one line naming the file
and the line; a class with a single image is kept (it is exactly the tail the methods are for)
but reported in ``notes``; fewer than two classes is refused.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matchlens.errors import ConfigError, SourceError
from matchlens.io.collection import scan_source

__all__ = ["LabelledSet", "read_labelled", "read_labels_csv", "read_titles"]


@dataclass
class LabelledSet:
    """Images with integer labels; ``classes[label]`` is the class name."""

    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> np.ndarray:
        """Images per class, in class order."""
        return np.bincount(self.labels, minlength=len(self.classes))

    def subset(self, rows: np.ndarray | list[int]) -> "LabelledSet":
        """The rows ``rows`` with the same class list."""
        rows = np.asarray(rows, dtype=np.int64)
        return LabelledSet([self.paths[i] for i in rows], self.labels[rows], self.classes, list(self.notes))


def read_labelled(source: str | Path) -> LabelledSet:
    """Read a class-folder tree or a ``labels.csv``; see the module docstring for the checks."""
    source = Path(source).expanduser()
    if not source.exists():
        raise SourceError(f"labelled data '{source}' does not exist")
    pairs = _from_folders(source) if source.is_dir() else read_labels_csv(source)
    return _labelled(pairs, str(source))


def read_labels_csv(path: str | Path) -> list[tuple[str, str]]:
    """(absolute path, label) rows of a ``path,label`` CSV; a missing file is a one-line error."""
    path = Path(path).expanduser()
    pairs: list[tuple[str, str]] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if number == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) < 2 or not row[1].strip():
                raise SourceError(f"{path} line {number}: expected 'path,label', got {','.join(row)!r}")
            image = Path(row[0].strip()).expanduser()
            image = image if image.is_absolute() else path.parent / image
            if not image.is_file():
                raise SourceError(f"{path} line {number}: image '{row[0].strip()}' does not exist")
            pairs.append((str(image.resolve()), row[1].strip()))
    return pairs


def _from_folders(root: Path) -> list[tuple[str, str]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise SourceError(f"'{root}' has no class folders (one sub-folder of images per class) and is not a CSV")
    return [(path, folder.name) for folder in folders for path in scan_source(folder)]


def _labelled(pairs: list[tuple[str, str]], source: str) -> LabelledSet:
    classes = sorted({label for _, label in pairs})
    if len(classes) < 2:
        raise ConfigError(f"{source}: a recognizer needs at least two classes, found {len(classes)}")
    index = {name: k for k, name in enumerate(classes)}
    labelled = LabelledSet([p for p, _ in pairs], np.array([index[c] for _, c in pairs], np.int64), classes)
    single = [classes[k] for k, n in enumerate(labelled.counts) if n == 1]
    if single:
        labelled.notes.append(f"{len(single)} class(es) with a single image (kept; no held-out check possible): "
                              + ", ".join(single[:5]) + (" ..." if len(single) > 5 else ""))
    return labelled


def read_titles(path: str | Path, images: list[str]) -> list[str]:
    """The title of each of ``images`` from a ``path,title`` CSV (by resolved path, else by file
    name); an image without a row gets ``""`` (trained without the semantic stream)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SourceError(f"titles file '{path}' does not exist")
    by_path: dict[str, str] = {}
    by_name: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if len(row) < 2 or (number == 1 and [c.strip().lower() for c in row[:2]] == ["path", "title"]):
                continue
            image = Path(row[0].strip()).expanduser()
            image = image if image.is_absolute() else path.parent / image
            by_path[str(image.resolve())] = row[1].strip()
            by_name[image.name] = row[1].strip()
    titles = [by_path.get(p, by_name.get(Path(p).name, "")) for p in images]
    if not any(titles):
        raise SourceError(f"{path}: no title matches any labelled image (rows are 'path,title')")
    return titles
