"""Oxford5k / Paris6k as distributed (the classic protocol): ``*_query.txt``
(``oxc1_all_souls_000013 136.5 34.1 648.5 955.9``; Paris names have no ``oxc1_`` prefix),
``*_good.txt``, ``*_ok.txt``, ``*_junk.txt`` + ``jpg/`` or ``images/``."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Sequence

from matchlens.errors import SourceError
from matchlens.io.datasets import Box, Dataset, Query
from matchlens.io.formats.common import (DATASET_FORMATS, PathLike, as_box, existing_dir, image_folder,
                                         list_images, make_query, read_names, read_text)

__all__ = ["load_oxford_classic"]

_QUERY_FILE = re.compile(r"^(?P<landmark>.+)_(?P<number>\d+)_query\.txt$")


def load_oxford_classic(
    root: PathLike, name: str | None = None, image_dir: PathLike | None = None
) -> Dataset:
    """Read Oxford5k / Paris6k as distributed: ``*_query/good/ok/junk.txt`` + the images.

    Args:
        root: the folder holding the ground-truth ``.txt`` files.
        name: the dataset's name (default: the folder's name).
        image_dir: the image folder, relative to ``root`` or absolute (default: ``jpg/``, else
            ``images/``, else ``root`` itself).

    Returns:
        Every image file of the image folder as the database (the classic protocol ranks the
        whole collection, queries included), and one official query per ``*_query.txt``, in
        (landmark, number) order, with positives = good ∪ ok, junk = junk, group = the landmark
        (``all_souls``, ``defense``, ...) and the box of the query file.

    Raises:
        SourceError: a folder or one of a query's four files is missing, a query line is
            malformed, or a listed name (query, good, ok or junk) has no image file.
    """
    root = existing_dir(root, "dataset folder")
    folder = image_folder(root, ("jpg", "images"), image_dir)
    images = list_images(folder)
    if not images:
        raise SourceError(f"image folder {folder} contains no images")
    by_stem = _files_by_stem(images, folder)
    query_files = sorted(root.glob("*_query.txt"), key=_query_file_order)
    if not query_files:
        raise SourceError(f"no *_query.txt ground-truth files in {root}")
    queries = tuple(_classic_query(path, by_stem, folder) for path in query_files)
    return Dataset(name or root.name, root, folder, tuple(images), queries)


def _files_by_stem(images: Sequence[str], folder: Path) -> dict[str, str]:
    """Map ``all_souls_000013`` → ``all_souls_000013.jpg``; the lists name images by stem."""
    by_stem: dict[str, str] = {}
    for image in images:
        stem = PurePosixPath(image).stem
        if stem in by_stem:
            raise SourceError(f"{folder}: {by_stem[stem]!r} and {image!r} have the same name")
        by_stem[stem] = image
    return by_stem


def _query_file_order(path: Path) -> tuple[str, int]:
    """Sort ``all_souls_2`` before ``all_souls_10`` (numeric, not text, order)."""
    match = _QUERY_FILE.match(path.name)
    return (match["landmark"], int(match["number"])) if match else (path.name, 0)


def _classic_query(path: Path, by_stem: dict[str, str], folder: Path) -> Query:
    """Build the query of ``<landmark>_<n>_query.txt`` from it and its three sibling lists."""
    match = _QUERY_FILE.match(path.name)
    if match is None:
        raise SourceError(f"{path}: expected a name like all_souls_1_query.txt")
    stem, box = _read_query_line(path)
    image = _stem_to_file(stem, by_stem, folder, path)
    lists = {
        kind: [_stem_to_file(s, by_stem, folder, sibling) for s in read_names(sibling)]
        for kind in ("good", "ok", "junk")
        for sibling in [path.with_name(f"{match['landmark']}_{match['number']}_{kind}.txt")]
    }
    return make_query(image, lists["good"] + lists["ok"], lists["junk"], match["landmark"], box)


def _read_query_line(path: Path) -> tuple[str, Box]:
    """``oxc1_all_souls_000013 136.5 34.1 648.5 955.9`` → (``all_souls_000013``, box)."""
    lines = [line.split() for line in read_text(path).splitlines() if line.strip()]
    if len(lines) != 1 or len(lines[0]) != 5:
        raise SourceError(f"{path}: expected one line 'NAME x0 y0 x1 y1'")
    name, *numbers = lines[0]
    try:
        values = [float(v) for v in numbers]
    except ValueError:
        raise SourceError(f"{path}: box {' '.join(numbers)!r} is not four numbers") from None
    # Oxford's query files prefix the image name with the collection id; Paris's do not.
    box = as_box(values, str(path))
    assert box is not None  # four numbers were read, and as_box returns None only for none
    return name.removeprefix("oxc1_"), box


def _stem_to_file(stem: str, by_stem: dict[str, str], folder: Path, source: Path) -> str:
    """The image file a list names (by stem, or by full file name)."""
    image = by_stem.get(stem) or by_stem.get(PurePosixPath(stem).stem)
    if image is None:
        raise SourceError(f"{source}: image {stem!r} has no file in {folder}")
    return image


@DATASET_FORMATS.register("oxford")
def _load_oxford(root: PathLike, name: str = "oxford5k", image_dir: PathLike | None = None
                 ) -> Dataset:
    """Oxford5k, classic gt files."""
    return load_oxford_classic(root, name=name, image_dir=image_dir)


@DATASET_FORMATS.register("paris")
def _load_paris(root: PathLike, name: str = "paris6k", image_dir: PathLike | None = None
                ) -> Dataset:
    """Paris6k, classic gt files."""
    return load_oxford_classic(root, name=name, image_dir=image_dir)
