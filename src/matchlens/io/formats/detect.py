"""Choosing a dataset's reader: :func:`load_dataset` by format name (the names are those of
:data:`~matchlens.io.formats.common.DATASET_FORMATS`) or by :func:`detect_format`."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from matchlens.errors import SourceError
from matchlens.io.datasets import Dataset
from matchlens.io.formats.common import DATASET_FORMATS, PathLike, existing_dir, list_images, read_text
from matchlens.io.formats.holidays import HOLIDAYS_NAME
from matchlens.io.formats.ukbench import UKBENCH_NAME

__all__ = ["detect_format", "load_dataset"]


def load_dataset(root: PathLike, format: str | None = None, **options: Any) -> Dataset:
    """Load an evaluation set in any supported layout.

    Args:
        root: the dataset folder (for ``gnd``: the ground-truth file).
        format: a name registered in :data:`DATASET_FORMATS` (``DATASET_FORMATS.names()``), or
            None to detect it with :func:`detect_format`.
        **options: passed to the format's reader (e.g. ``protocol="hard"``, ``upright=True``,
            ``image_dir=...``, ``check_images=False``, ``distractors=...``).

    Raises:
        SourceError: unknown format, an option the format's reader does not take, an
            undetectable folder, or anything the reader refuses.
    """
    if format is None:
        format = detect_format(root)
    if not isinstance(format, str) or format not in DATASET_FORMATS:
        raise SourceError(
            f"unknown dataset format {format!r}; formats: {', '.join(DATASET_FORMATS.names())}"
        )
    reader = DATASET_FORMATS.get(format)
    _check_options(reader, options, format)
    return reader(root, **options)


def _check_options(reader: Callable[..., Dataset], options: dict[str, Any], format: str) -> None:
    """Refuse options the reader does not take, listing those it does."""
    accepted = list(inspect.signature(reader).parameters)[1:]  # the first one is the root
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise SourceError(
            f"dataset format {format!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {takes}"
        )


def detect_format(root: PathLike) -> str:
    """Guess the format of ``root`` from the files it holds.

    Rules, first match wins: a ``.mat``/``.pkl``/``.json`` file → ``gnd``; ``gt.json`` →
    ``gtjson``; ``*_query.txt`` → ``oxford`` (``paris`` when the query images are named
    ``paris_*``); ``gnd_r*.pkl`` → ``revisited``; ``gnd_instre.mat`` → ``instre``;
    ``ukbench*.jpg`` → ``ukbench``; ``gnd_holidays.mat`` or 6-digit ``.jpg`` names →
    ``holidays`` (images looked for in root and its usual image subfolders).

    Raises:
        SourceError: nothing recognisable, naming the formats that exist.
    """
    path = Path(root).expanduser()
    if path.is_file() and path.suffix.lower() in {".mat", ".pkl", ".json"}:
        return "gnd"
    folder = existing_dir(path, "dataset folder")
    if (folder / "gt.json").is_file():
        return "gtjson"
    query_files = sorted(folder.glob("*_query.txt"))
    if query_files:
        first = read_text(query_files[0]).split()
        return "paris" if first and first[0].startswith("paris_") else "oxford"
    if list(folder.glob("gnd_r*.pkl")):
        return "revisited"
    if (folder / "gnd_instre.mat").is_file():
        return "instre"
    names = _names_in_usual_folders(folder)
    if any(UKBENCH_NAME.match(n) for n in names):
        return "ukbench"
    if (folder / "gnd_holidays.mat").is_file() or any(HOLIDAYS_NAME.match(n) for n in names):
        return "holidays"
    raise SourceError(
        f"cannot tell the dataset format of {folder}; pass format= one of: "
        f"{', '.join(DATASET_FORMATS.names())}"
    )


def _names_in_usual_folders(folder: Path) -> list[str]:
    """Image names in ``folder`` and its ``jpg/``, ``images/`` and ``full/`` subfolders."""
    names: list[str] = []
    for candidate in (folder, folder / "jpg", folder / "images", folder / "full"):
        if candidate.is_dir():
            names.extend(list_images(candidate))
    return names
