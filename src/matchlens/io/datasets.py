"""The evaluation-set types every dataset reader returns: a :class:`Dataset` of database images and
its :class:`Query` objects with ground truth.

The readers (``gt.json`` and the official benchmark layouts) are :mod:`matchlens.io.formats`;
whatever layout a set came from, evaluation code sees these types only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Box", "Dataset", "Query"]

#: ``(x0, y0, x1, y1)`` in pixels.
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Query:
    """One query of an evaluation set.

    Attributes:
        image: file name of the query image, relative to the dataset's image folder.
        positives: names of the images that count as correct answers.
        junk: names of the images to ignore when scoring (neither hit nor miss).
        group: the object/landmark group the query belongs to, if the set has groups.
        box: ``(x0, y0, x1, y1)`` in pixels of the image AS STORED in this dataset (already
            rescaled from the original resolution), or None for a full-image query.
        official: True for the benchmark's official queries (e.g. Oxford's 55).
    """

    image: str
    positives: frozenset[str]
    junk: frozenset[str]
    group: str | None
    box: Box | None
    official: bool


@dataclass(frozen=True)
class Dataset:
    """An evaluation set: its images and its queries with ground truth.

    Attributes:
        name: the set's name (``name`` in gt.json, else the folder name).
        root: the set's folder (for gt.json: as given to
            :func:`~matchlens.io.formats.gtjson.load_gt_json`).
        image_dir: the folder holding the images (``root / "images"``).
        images: every database image name, in gt.json order.
        queries: every query, in gt.json order (an image may be the query of several groups).
    """

    name: str
    root: Path
    image_dir: Path
    images: tuple[str, ...]
    queries: tuple[Query, ...]

    def image_path(self, name: str) -> Path:
        """Path of the image called ``name`` (a name from :attr:`images`)."""
        return self.image_dir / name

    def official_queries(self) -> tuple[Query, ...]:
        """The queries marked official, in gt.json order."""
        return tuple(q for q in self.queries if q.official)
