"""UKBench: ``ukbenchNNNNN.jpg``, objects of 4 consecutive numbers, every image a query."""

from __future__ import annotations

import re

from matchlens.errors import SourceError
from matchlens.io.datasets import Dataset
from matchlens.io.formats.common import DATASET_FORMATS, PathLike, existing_dir, image_folder, list_images, make_query

__all__ = ["UKBENCH_NAME", "load_ukbench"]

UKBENCH_NAME = re.compile(r"^ukbench(?P<number>\d{5})\.jpg$", re.IGNORECASE)


@DATASET_FORMATS.register("ukbench")
def load_ukbench(root: PathLike) -> Dataset:
    """Read UKBench: ``ukbenchNNNNN.jpg`` in ``full/`` (else ``images/``, else root).

    Objects are groups of 4 consecutive numbers (group ``NNNNN // 4``, named ``ukb_objGGGG``);
    every image is a query whose positives are the other images of its group (the other 3 in
    the full set); no junk, no box.

    Raises:
        SourceError: no UKBench image, or two files with the same number.
    """
    root = existing_dir(root, "dataset folder")
    folder = image_folder(root, ("full", "images"), None)
    numbered: dict[int, str] = {}
    for image in list_images(folder):
        match = UKBENCH_NAME.match(image)
        if match:
            number = int(match["number"])
            if number in numbered:
                raise SourceError(f"{folder}: {numbered[number]!r} and {image!r} share a number")
            numbered[number] = image
    if not numbered:
        raise SourceError(f"no UKBench images (ukbenchNNNNN.jpg) in {folder}")
    names = [numbered[n] for n in sorted(numbered)]
    groups: dict[int, list[str]] = {}
    for number in sorted(numbered):
        groups.setdefault(number // 4, []).append(numbered[number])
    queries = tuple(
        make_query(numbered[n], groups[n // 4], (), f"ukb_obj{n // 4:04d}", None, published=False)
        for n in sorted(numbered)
    )
    return Dataset(root.name, root, folder, tuple(names), queries)
