"""Box annotations of an index's images, imported from COCO-format JSON and stored beside the index.

``matchlens import-boxes IDX coco.json`` reads ``images`` (``file_name``, optional ``width`` /
``height``), ``categories`` (``id``, ``name``) and ``annotations`` (``image_id``, ``category_id``,
``bbox`` = [x, y, w, h] in pixels), matches every ``file_name`` to one indexed image (its path, or
the end of its path: ``a.jpg``, ``train/a.jpg``) and writes ``IDX/annotations/boxes.json``
atomically. A file that names images the index lacks is refused (with how many) before anything
is written.

The stored boxes are keyed by the index's image id and content hash, which outlive generations:
:func:`read_boxes` aligns them with the generation it is given — an image removed since the
import, or whose file changed (another hash), loses its boxes and is counted as stale.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from matchlens.errors import IndexError_, SourceError
from matchlens.fileio import read_json_object, write_json_atomic

__all__ = ["BOXES_FILE", "ImportReport", "RowBoxes", "boxes_file", "import_boxes", "read_boxes"]

BOXES_FILE = "boxes.json"
ANNOTATIONS_DIR = "annotations"
FORMAT = "matchlens-boxes/1"


@dataclass
class ImportReport:
    """What an import stored."""

    images: int
    boxes: int
    categories: list[str]
    path: Path


@dataclass
class RowBoxes:
    """The stored boxes aligned with one generation: per vector row, boxes normalised to [0, 1]
    (x0, y0, x1, y1) and category indices into ``categories``; rows without boxes are absent."""

    categories: list[str]
    rows: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    stale: int = 0          # annotated images removed from the index or changed since the import
    generation: str = ""    # the generation the boxes are aligned with
    imported_for: str = ""  # the generation the import matched file names against


def boxes_file(index: Any) -> Path:
    """``IDX/annotations/boxes.json`` of an index (it may not exist)."""
    return Path(index.root) / ANNOTATIONS_DIR / BOXES_FILE


def import_boxes(index: Any, coco_json: str | os.PathLike) -> ImportReport:
    """Import the COCO-format boxes of ``coco_json`` for ``index``'s images (replacing any earlier
    import). One-line SourceError for a malformed file, an ambiguous ``file_name``, or images the
    index lacks (how many, and the first)."""
    data = read_json_object(coco_json, "COCO file", SourceError, "with 'images', 'annotations' and 'categories'")
    categories, category_index = _categories(data, coco_json)
    images = _matched_images(index, _list(data, "images", coco_json), coco_json)
    for ann in _list(data, "annotations", coco_json):
        image_id, category_id = _field(ann, "image_id", coco_json), _field(ann, "category_id", coco_json)
        if image_id not in images:
            raise SourceError(f"COCO file '{coco_json}': an annotation names image_id {image_id!r}, which is not in "
                              "'images'")
        if category_id not in category_index:
            raise SourceError(f"COCO file '{coco_json}': an annotation names category_id {category_id!r}, which is "
                              "not in 'categories'")
        images[image_id]["boxes"].append([*_xyxy(ann.get("bbox"), coco_json), category_index[category_id]])
    stored = sorted(images.values(), key=lambda item: item["id"])
    payload = {"format": FORMAT, "source": os.fspath(Path(coco_json).expanduser().resolve()),
               "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "generation": index.generation, "categories": categories, "images": stored}
    target = boxes_file(index)
    target.parent.mkdir(exist_ok=True)
    write_json_atomic(target, payload)
    return ImportReport(len(stored), sum(len(item["boxes"]) for item in stored), categories, target)


def read_boxes(index: Any) -> RowBoxes:
    """The imported boxes aligned with ``index``'s generation (one-line IndexError_ when none
    were imported: the error names ``matchlens import-boxes``)."""
    path = boxes_file(index)
    if not path.is_file():
        raise IndexError_(f"index '{index.root}' has no box annotations; import them first with "
                          f"'matchlens import-boxes {index.root} COCO.json'")
    data = read_json_object(path, "box annotations", IndexError_, "(written by matchlens import-boxes)")
    if data.get("format") != FORMAT:
        raise IndexError_(f"box annotations '{path}' are not in {FORMAT} format; import them again")
    current = {e.id: e for e in index.entries if e.status == "indexed" and e.row is not None}
    out = RowBoxes(list(data["categories"]), generation=index.generation, imported_for=data.get("generation", ""))
    for item in data["images"]:
        entry = current.get(item["id"])
        if entry is None or entry.sha256 != item["sha256"]:
            out.stale += 1
            continue
        if item["boxes"]:
            raw = np.asarray(item["boxes"], np.float64).reshape(-1, 5)
            scale = np.array([item["width"], item["height"], item["width"], item["height"]], np.float64)
            out.rows[int(entry.row)] = (np.clip(raw[:, :4] / scale, 0.0, 1.0).astype(np.float32),
                                        raw[:, 4].astype(np.int64))
    return out


# --- reading the COCO file ---------------------------------------------------------------------
def _list(data: dict, key: str, where: Any) -> list[dict]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise SourceError(f"COCO file '{where}' must hold a list of objects under {key!r}")
    return value


def _field(item: dict, key: str, where: Any) -> Any:
    if key not in item:
        raise SourceError(f"COCO file '{where}': an entry lacks {key!r}")
    return item[key]


def _categories(data: dict, where: Any) -> tuple[list[str], dict[Any, int]]:
    """Category names in file order, and COCO category id → their index."""
    names: list[str] = []
    index: dict[Any, int] = {}
    for cat in _list(data, "categories", where):
        name = str(_field(cat, "name", where)).strip()
        if not name or name in names:
            raise SourceError(f"COCO file '{where}': category names must be distinct and not empty ({name!r})")
        index[_field(cat, "id", where)] = len(names)
        names.append(name)
    if not names:
        raise SourceError(f"COCO file '{where}' has no categories")
    return names, index


def _xyxy(bbox: Any, where: Any) -> list[float]:
    """COCO [x, y, w, h] as [x0, y0, x1, y1]; one-line error unless four numbers with w, h > 0."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise SourceError(f"COCO file '{where}': bbox must be [x, y, width, height], got {bbox!r}") from None
    if not (w > 0 and h > 0) or not all(np.isfinite([x, y, w, h])):
        raise SourceError(f"COCO file '{where}': bbox {bbox!r} has no area")
    return [x, y, x + w, y + h]


def _suffixes(path: str) -> list[str]:
    """'a.jpg', 'dir/a.jpg', ... up to the whole path: the ways a file_name may name it."""
    parts = Path(path).parts
    return ["/".join(parts[i:]).lstrip("/") for i in range(len(parts))]


def _matched_images(index: Any, images: list[dict], where: Any) -> dict[Any, dict]:
    """COCO image id → the stored record of the indexed image its file_name names."""
    by_suffix: dict[str, list[Any]] = {}
    for entry in index.entries:
        if entry.status == "indexed":
            for key in _suffixes(entry.path):
                by_suffix.setdefault(key, []).append(entry)
    out: dict[Any, dict] = {}
    missing: list[str] = []
    for image in images:
        name = str(_field(image, "file_name", where)).replace("\\", "/")
        name = name[2:] if name.startswith("./") else name
        found = by_suffix.get(name.lstrip("/"), [])
        if not found:
            missing.append(name)
            continue
        if len(found) > 1:
            raise SourceError(f"COCO file '{where}': file_name {name!r} matches {len(found)} images of the index "
                              f"(e.g. '{found[0].path}'); give more of its path")
        out[_field(image, "id", where)] = _record(found[0], image)
    if missing:
        raise SourceError(f"COCO file '{where}' names {len(missing)} of {len(images)} images that index "
                          f"'{index.root}' lacks (e.g. '{missing[0]}'); add them with 'matchlens add' or leave them "
                          "out of the file")
    return out


def _record(entry: Any, image: dict) -> dict:
    width, height = image.get("width"), image.get("height")
    if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
        with Image.open(entry.path) as opened:  # only the header is read
            width, height = opened.size
    return {"id": entry.id, "sha256": entry.sha256, "path": entry.path, "width": width, "height": height,
            "boxes": []}
