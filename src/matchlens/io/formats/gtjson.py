"""Reader for evaluation sets stored as ``SETDIR/gt.json`` + ``SETDIR/images/``.

``gt.json`` holds ``images`` (file names relative to ``images/``) and ``queries``, each with
``image``, ``positives``, ``junk`` and ``group``; official Oxford/Paris queries also carry
``official_query: true`` and ``official_bbox_xyxy_original_res``, a box in the pixel grid of the
ORIGINAL image. The stored images are downscaled copies, so boxes are rescaled here, once, to the
stored pixel grid; everything downstream can then use them directly.

Every inconsistency (missing folder or file, malformed JSON, a query naming an image that is not
in the set) raises a one-line :class:`~matchlens.errors.SourceError` at load time, because a
silently skipped positive or query would skew every mAP computed from the set.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from matchlens.errors import SourceError
from matchlens.io.datasets import Box, Dataset, Query
from matchlens.io.formats.common import DATASET_FORMATS, PathLike

__all__ = ["DEFAULT_ORIGINAL_LONGEST_SIDE", "load_gt_json"]

#: Longest side, in pixels, of the originals that official boxes refer to. Oxford5k and Paris6k
#: originals are at most 1024 px; gt.json may override it with ``original_longest_side``
#: (top level, or per query).
DEFAULT_ORIGINAL_LONGEST_SIDE = 1024.0


def load_gt_json(setdir: str | os.PathLike) -> Dataset:
    """Load the evaluation set in ``setdir`` (``gt.json`` + ``images/``).

    Official boxes are rescaled from the original resolution to the stored one by
    ``stored longest side / original longest side``; the stored size is read from the image
    header (no decode) and the original longest side is ``original_longest_side`` from gt.json
    (per query, else top level), else :data:`DEFAULT_ORIGINAL_LONGEST_SIDE` (1024, Oxford's).

    Raises:
        SourceError: the folder, gt.json, ``images/`` or a listed image is missing; gt.json is
            not valid JSON or lacks a required field; a query refers to an image not listed
            in ``images``; a box is malformed.
    """
    root = Path(setdir)
    if not root.is_dir():
        raise SourceError(f"dataset folder not found: {root}")
    gt_path = root / "gt.json"
    gt = _read_json(gt_path)
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise SourceError(f"image folder not found: {image_dir} (expected beside {gt_path})")
    images = _image_list(gt, gt_path)
    _check_files_exist(images, image_dir, gt_path)
    default_side = _original_side(gt, DEFAULT_ORIGINAL_LONGEST_SIDE, gt_path)
    raw_queries = gt.get("queries")
    if not isinstance(raw_queries, list):
        raise SourceError(f"{gt_path}: 'queries' must be a list")
    known = frozenset(images)
    queries = tuple(
        _parse_query(raw, i, known, image_dir, default_side, gt_path)
        for i, raw in enumerate(raw_queries)
    )
    name = gt.get("name")
    return Dataset(
        name=name if isinstance(name, str) and name else root.name,
        root=root,
        image_dir=image_dir,
        images=tuple(images),
        queries=queries,
    )


def _read_json(gt_path: Path) -> dict[str, Any]:
    """Parse gt.json into a dict, turning every failure into a one-line SourceError."""
    if not gt_path.is_file():
        raise SourceError(f"ground-truth file not found: {gt_path}")
    try:
        gt = json.loads(gt_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SourceError(f"{gt_path} is not valid JSON: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {gt_path}: {exc}") from None
    if not isinstance(gt, dict):
        raise SourceError(f"{gt_path}: expected a JSON object with 'images' and 'queries'")
    return gt


def _name_list(value: Any, what: str, gt_path: Path) -> list[str]:
    """Validate a list of image names; names must stay inside the image folder."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SourceError(f"{gt_path}: {what} must be a list of file names")
    for name in value:
        parts = PurePosixPath(name).parts
        # An absolute or '..' name would read files outside the dataset.
        if not name or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
            raise SourceError(f"{gt_path}: {what} has an invalid file name {name!r}")
    return value


def _image_list(gt: dict[str, Any], gt_path: Path) -> list[str]:
    """The database image names: a non-empty list without repeats."""
    images = _name_list(gt.get("images"), "'images'", gt_path)
    if not images:
        raise SourceError(f"{gt_path}: 'images' is empty")
    if len(set(images)) != len(images):
        raise SourceError(f"{gt_path}: 'images' lists some file more than once")
    return images


def _check_files_exist(images: list[str], image_dir: Path, gt_path: Path) -> None:
    """Fail now, naming one example, rather than halfway through indexing."""
    missing = [name for name in images if not (image_dir / name).is_file()]
    if missing:
        raise SourceError(
            f"{len(missing)} image(s) listed in {gt_path} are missing from {image_dir}, "
            f"e.g. {missing[0]!r}"
        )


def _original_side(raw: dict[str, Any], default: float, gt_path: Path) -> float:
    """``original_longest_side`` of ``raw`` if present (a positive number), else ``default``."""
    value = raw.get("original_longest_side")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SourceError(f"{gt_path}: 'original_longest_side' must be a positive number")
    return float(value)


def _parse_query(
    raw: Any, index: int, known: frozenset[str], image_dir: Path, default_side: float,
    gt_path: Path,
) -> Query:
    """Validate one entry of ``queries`` and build its :class:`Query`."""
    where = f"{gt_path}: query #{index}"
    if not isinstance(raw, dict):
        raise SourceError(f"{where} must be a JSON object")
    image = raw.get("image")
    if not isinstance(image, str) or image not in known:
        raise SourceError(f"{where}: 'image' {image!r} is not one of the listed images")
    positives = _known_names(raw.get("positives"), "positives", known, where)
    junk = _known_names(raw.get("junk", []), "junk", known, where)
    group = raw.get("group")
    if group is not None and not isinstance(group, str):
        raise SourceError(f"{where}: 'group' must be a string")
    official = raw.get("official_query", False)
    if not isinstance(official, bool):
        raise SourceError(f"{where}: 'official_query' must be true or false")
    box = None
    raw_box = raw.get("official_bbox_xyxy_original_res")
    if raw_box is not None:
        original = _original_side(raw, default_side, gt_path)
        box = _rescale_box(_parse_box(raw_box, where), image_dir / image, original)
    return Query(image, positives, junk, group, box, official)


def _known_names(value: Any, what: str, known: frozenset[str], where: str) -> frozenset[str]:
    """A positives/junk list as a set; names outside the set would silently skew AP."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SourceError(f"{where}: '{what}' must be a list of file names")
    unknown = [v for v in value if v not in known]
    if unknown:
        raise SourceError(f"{where}: '{what}' names {unknown[0]!r}, which is not a listed image")
    return frozenset(value)


def _parse_box(value: Any, where: str) -> Box:
    """Check a box is four finite numbers with x0 < x1 and y0 < y1."""
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
    ):
        raise SourceError(f"{where}: box must be four numbers [x0, y0, x1, y1]")
    x0, y0, x1, y1 = (float(v) for v in value)
    if not (x0 < x1 and y0 < y1):
        raise SourceError(f"{where}: box {value} is empty (need x0 < x1 and y0 < y1)")
    return x0, y0, x1, y1


def _rescale_box(box: Box, image_path: Path, original_side: float) -> Box:
    """Map a box from the original pixel grid to the stored image's grid."""
    scale = _stored_longest_side(image_path) / original_side
    x0, y0, x1, y1 = box
    return x0 * scale, y0 * scale, x1 * scale, y1 * scale


def _stored_longest_side(path: Path) -> int:
    """Longest side of the stored image, from its header only (Pillow opens lazily)."""
    try:
        with Image.open(path) as im:
            return max(im.size)
    except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise SourceError(f"cannot read the image size of {path}: {exc}") from None


@DATASET_FORMATS.register("gtjson")
def _load_gtjson(root: PathLike) -> Dataset:
    """``gt.json`` + ``images/`` (the shared evaluation sets)."""
    return load_gt_json(root)
