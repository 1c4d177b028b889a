"""What the dataset readers of :mod:`matchlens.io.formats` share: the format registry, path and name
checks, box parsing, the construction of official queries and ground-truth text files."""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from matchlens.errors import SourceError
from matchlens.io.datasets import Box, Dataset, Query
from matchlens.registry import Registry

__all__ = ["DATASET_FORMATS", "IMAGE_SUFFIXES", "PathLike", "as_box", "check_images_exist", "check_unique",
           "existing_dir", "image_folder", "list_images", "make_query", "read_names", "read_text", "safe_name",
           "with_extension"]

PathLike = str | os.PathLike

#: Dataset format name → reader ``(root, **options) -> Dataset``; each format's module registers
#: its readers, and this registry is the only list of format names.
DATASET_FORMATS: Registry[Callable[..., Dataset]] = Registry("dataset format")

#: File suffixes counted as images when a folder is listed (the classic protocols rank every
#: image of the collection) and recognised as "already has an extension" in gnd names.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def existing_dir(path: PathLike, what: str) -> Path:
    """``path`` as a Path, or a SourceError if it is not a folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise SourceError(f"{what} not found: {folder}")
    return folder


def safe_name(name: Any, source: Path) -> str:
    """Check a name from a ground-truth file is a plain relative path inside the image folder."""
    if not isinstance(name, str) or not name:
        raise SourceError(f"{source}: image names must be non-empty strings, got {name!r}")
    pure = PurePosixPath(name)
    # An absolute or '..' name from a downloaded file would read outside the dataset.
    if pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise SourceError(f"{source}: invalid image name {name!r}")
    return name


def with_extension(name: str) -> str:
    """Official lists name images without ``.jpg``; INSTRE and R1M names already have one."""
    return name if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES else name + ".jpg"


def list_images(folder: Path) -> list[str]:
    """Sorted names of the image files directly in ``folder`` (hidden files skipped)."""
    return sorted(
        p.name for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def image_folder(root: Path, candidates: Sequence[str], given: PathLike | None) -> Path:
    """``given`` (relative to ``root``), else the first existing candidate subfolder, else root."""
    if given is not None:
        folder = Path(given).expanduser()
        folder = folder if folder.is_absolute() else root / folder
        return existing_dir(folder, "image folder")
    for candidate in candidates:
        if (root / candidate).is_dir():
            return root / candidate
    return root


def check_images_exist(names: Iterable[str], image_dir: Path, source: Path) -> None:
    """Fail at load time, naming one example, rather than halfway through indexing."""
    missing = [n for n in dict.fromkeys(names) if not (image_dir / n).is_file()]
    if missing:
        raise SourceError(
            f"{len(missing)} image(s) named in {source} are missing from {image_dir}, "
            f"e.g. {missing[0]!r} (pass check_images=False to read the ground truth alone)"
        )


def check_unique(names: Sequence[str], source: Path) -> None:
    """A repeated database image would be ranked twice and could count twice as a hit."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SourceError(f"{source}: image {name!r} is listed more than once")
        seen.add(name)


def as_box(values: Any, where: str) -> Box | None:
    """Four finite numbers with x0 < x1 and y0 < y1, or None when the file gives no box."""
    if values is None:
        return None
    try:
        numbers = [float(v) for v in np.asarray(values, dtype=float).ravel()]
    except (TypeError, ValueError):
        raise SourceError(f"{where}: box must be four numbers x0 y0 x1 y1") from None
    if not numbers:
        return None
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise SourceError(f"{where}: box must be four finite numbers x0 y0 x1 y1, got {numbers}")
    x0, y0, x1, y1 = numbers
    if not (x0 < x1 and y0 < y1):
        raise SourceError(f"{where}: box {numbers} is empty (need x0 < x1 and y0 < y1)")
    return x0, y0, x1, y1


def make_query(
    image: str, positives: Iterable[str], junk: Iterable[str], group: str | None, box: Box | None,
    published: bool = True,
) -> Query:
    """An official query. ``published``: the lists are kept exactly as the ground truth file gives
    them (see the module docstring); otherwise they were derived from group membership by a
    naming rule, and the query's own image is not one of its answers."""
    if published:
        return Query(image, frozenset(positives), frozenset(junk), group, box, True)
    itself = {image}
    return Query(image, frozenset(positives) - itself, frozenset(junk) - itself, group, box, True)


def read_text(path: Path) -> str:
    """A ground-truth text file's content; every failure is a one-line SourceError."""
    if not path.is_file():
        raise SourceError(f"ground-truth file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from None


def read_names(path: Path) -> list[str]:
    """The image stems listed one per line in a good/ok/junk file."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]
