"""INRIA Holidays: ``NNNNNN.jpg`` images, groups by their first 4 digits, optionally checked against
``gnd_holidays.mat``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from matchlens.errors import SourceError
from matchlens.io.datasets import Dataset, Query
from matchlens.io.formats.common import DATASET_FORMATS, PathLike, existing_dir, image_folder, list_images, make_query
from matchlens.io.formats.gnd import dataset_from_gnd, read_gnd

__all__ = ["HOLIDAYS_NAME", "HOLIDAYS_UPRIGHT_DIR", "load_holidays"]

#: Folder (beside ``jpg/``) holding the rotated-upright Holidays images for ``upright=True``.
HOLIDAYS_UPRIGHT_DIR = "jpg_rotated"

HOLIDAYS_NAME = re.compile(r"^(?P<number>\d{6})\.jpg$", re.IGNORECASE)


@DATASET_FORMATS.register("holidays")
def load_holidays(root: PathLike, upright: bool = False) -> Dataset:
    """Read INRIA Holidays: ``NNNNNN.jpg`` images in ``jpg/`` (else ``images/``, else root).

    Groups are the images sharing their first 4 digits (named ``holidays_NNNN``); the query of
    a group is its image whose number ends in ``00``; positives are the rest of the group; no
    junk, no box. If ``gnd_holidays.mat`` is in ``root``, it is used (its image order) after
    checking it lists exactly these images and queries.

    Args:
        root: the dataset folder.
        upright: read the rotated-upright variant from ``root/jpg_rotated/``
            (:data:`HOLIDAYS_UPRIGHT_DIR`), same file names as ``jpg/``.

    Raises:
        SourceError: no Holidays image, a group without its ``..00`` query, a missing
            ``jpg_rotated/`` with ``upright=True``, or a gnd file that disagrees.
    """
    root = existing_dir(root, "dataset folder")
    if upright:
        folder = existing_dir(root / HOLIDAYS_UPRIGHT_DIR, "upright Holidays image folder")
    else:
        folder = image_folder(root, ("jpg", "images"), None)
    names = [n for n in list_images(folder) if HOLIDAYS_NAME.match(n)]
    if not names:
        raise SourceError(f"no Holidays images (NNNNNN.jpg) in {folder}")
    queries = _holidays_queries(names, folder)
    dataset = Dataset(root.name, root, folder, tuple(names), tuple(queries))
    gnd_path = root / "gnd_holidays.mat"
    if gnd_path.is_file():
        return _agreeing_gnd(dataset, gnd_path)
    return dataset


def _holidays_queries(names: Sequence[str], folder: Path) -> list[Query]:
    """One query per 4-digit group: the ``..00`` image against the rest of the group."""
    groups: dict[str, list[str]] = {}
    for image in names:
        groups.setdefault(image[:4], []).append(image)
    queries = []
    for prefix, members in groups.items():
        heads = [m for m in members if m[4:6] == "00"]
        if not heads:
            raise SourceError(
                f"{folder}: Holidays group {prefix} has no query image {prefix}00.jpg"
            )
        queries.append(make_query(heads[0], members, (), f"holidays_{prefix}", None, published=False))
    return queries


def _agreeing_gnd(dataset: Dataset, gnd_path: Path) -> Dataset:
    """The dataset of ``gnd_holidays.mat``, refusing one that contradicts the file names."""
    official = dataset_from_gnd(
        read_gnd(gnd_path), gnd_path, dataset.name, dataset.image_dir, protocol=None,
        check_images=False, kind="holidays",
    )
    if set(official.images) != set(dataset.images):
        extra = sorted(set(official.images) ^ set(dataset.images))
        raise SourceError(
            f"{gnd_path} and {dataset.image_dir} list different images, e.g. {extra[0]!r}"
        )
    expected = {q.image: q for q in dataset.queries}
    for query in official.queries:
        rule = expected.get(query.image)
        # The mat lists each query as its own junk, the naming rule lists no junk at all.
        if rule is None or (rule.positives, rule.group) != (query.positives, query.group) \
                or query.junk - {query.image}:
            raise SourceError(f"{gnd_path}: query {query.image!r} disagrees with the file names")
    if len(official.queries) != len(expected):
        raise SourceError(f"{gnd_path} has {len(official.queries)} queries, the names give "
                          f"{len(expected)}")
    return Dataset(dataset.name, dataset.root, dataset.image_dir, official.images,
                   official.queries)
