"""Data of the text ↔ image models: captions files, index rows, region features of indexed images.

* :func:`read_captions`: ``captions.csv`` (columns ``image`` and ``caption``; ``path``/``file`` and
  ``text`` are accepted too) resolved against an index: the row of every captioned image.
* :class:`RegionFeatures`: the (R, C) region descriptors CAMP and CAAN read, ROI-pooled on the
  index's own backbone map (:func:`matchlens.regional.regional_descriptors`): the R-MAC grid
  (``grid``) or the boxes of a COCO JSON file (``boxes``: each annotated object, plus the whole
  image). They are cached by image content hash under ``DIR/cache/text-regions/KEY/``, so a
  re-indexed collection re-uses them.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from matchlens.errors import ConfigError, SourceError
from matchlens.fileio import atomic_write
from matchlens.pooling.regions import rmac_regions
from matchlens.regional import regional_descriptors

__all__ = ["Captions", "RegionFeatures", "grid_boxes", "read_captions", "read_coco_boxes", "rows_by_path"]

IMAGE_COLUMNS = ("image", "path", "file", "file_name")
TEXT_COLUMNS = ("caption", "text", "sentence")
Box = tuple[float, float, float, float]


@dataclass
class Captions:
    """Captions and the index row of the image each describes (aligned lists)."""

    texts: list[str]
    rows: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, keep: np.ndarray) -> "Captions":
        """The captions at positions ``keep``."""
        return Captions([self.texts[i] for i in keep], self.rows[keep])


def rows_by_path(index: Any) -> tuple[dict[str, int], dict[str, int]]:
    """(absolute path → row, file name → row; names that occur twice map to -1) of an index."""
    by_path: dict[str, int] = {}
    by_name: dict[str, int] = {}
    for row in range(index.size):
        path = str(index.entry_for_row(row).path)
        by_path[str(Path(path).resolve())] = row
        name = Path(path).name
        by_name[name] = -1 if name in by_name else row
    return by_path, by_name


def read_captions(path: str | Path, index: Any, split: str | None = None) -> Captions:
    """The captions of ``path`` (CSV with a header) whose images are in ``index``; images are
    resolved relative to the CSV's folder, then by file name. With ``split`` and a ``split``
    column, only that split's rows. None found → SourceError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SourceError(f"captions file not found: {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        image_col = next((c for c in IMAGE_COLUMNS if c in fields), None)
        text_col = next((c for c in TEXT_COLUMNS if c in fields), None)
        if image_col is None or text_col is None:
            raise SourceError(f"{path}: needs a header with an image column ({'/'.join(IMAGE_COLUMNS)}) "
                              f"and a caption column ({'/'.join(TEXT_COLUMNS)}), got {','.join(fields) or 'none'}")
        records = [{k.strip().lower(): (v or "") for k, v in rec.items() if k} for rec in reader]
    by_path, by_name = rows_by_path(index)
    texts: list[str] = []
    rows: list[int] = []
    missing = 0
    for rec in records:
        text, image = rec[text_col].strip(), rec[image_col].strip()
        if split is not None and "split" in fields and rec["split"].strip() != split:
            continue
        row = _resolve(image, path.parent, by_path, by_name)
        if row < 0 or not text:
            missing += 1
            continue
        texts.append(text)
        rows.append(row)
    if not texts:
        raise SourceError(f"{path}: none of its {len(records)} captions names an image of the index")
    return Captions(texts, np.asarray(rows, np.int64))


def _resolve(image: str, base: Path, by_path: dict[str, int], by_name: dict[str, int]) -> int:
    candidate = Path(image).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    row = by_path.get(str(candidate.resolve()))
    return row if row is not None else by_name.get(Path(image).name, -1)


def grid_boxes(levels: int = 3, cells: int = 8) -> list[Box]:
    """The R-MAC grid (whole image first) of a ``cells × cells`` map as relative boxes."""
    return [(x0 / cells, y0 / cells, (x0 + w) / cells, (y0 + h) / cells)
            for y0, x0, h, w in rmac_regions(cells, cells, levels)][1:]  # the whole map is listed twice


def read_coco_boxes(path: str | Path) -> dict[str, list[Box]]:
    """File name → relative boxes (x0, y0, x1, y1) of every annotation of a COCO-format JSON file."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {int(im["id"]): im for im in data["images"]}
        out: dict[str, list[Box]] = {Path(im["file_name"]).name: [] for im in images.values()}
        for ann in data.get("annotations", []):
            im = images[int(ann["image_id"])]
            x, y, w, h = (float(v) for v in ann["bbox"])
            W, H = float(im["width"]), float(im["height"])
            out[Path(im["file_name"]).name].append((x / W, y / H, min(1.0, (x + w) / W), min(1.0, (y + h) / H)))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        raise SourceError(f"{path} is not a readable COCO JSON file with boxes: {exc}") from None
    return out


class RegionFeatures:
    """Region descriptors of the images of one index, cached by content hash.

    ``source``: ``grid`` (the R-MAC grid, ``levels``) or ``boxes`` (``coco``: a COCO JSON file; the
    whole image is always region 0). ``side``: the longest side the backbone map is computed at (a
    64-px scene gives a 2×2 map at its own size, too coarse for regions)."""

    def __init__(self, index: Any, source: str = "grid", coco: str | Path | None = None, side: int = 256,
                 levels: int = 3, max_regions: int = 16) -> None:
        if source not in ("grid", "boxes"):
            raise ConfigError(f"regions must be 'grid' or 'boxes', got {source!r}")
        if source == "boxes" and coco is None:
            raise ConfigError("regions=boxes needs a COCO JSON file of boxes (--boxes FILE)")
        self.index, self.source, self.side, self.levels, self.max_regions = index, source, side, levels, max_regions
        self.coco_path = str(Path(coco).expanduser().resolve()) if coco is not None else None
        self.coco = read_coco_boxes(coco) if coco is not None else {}
        self.grid = grid_boxes(levels)
        self._memo: dict[int, np.ndarray] = {}
        key = f"{index.spec.describe()}|{source}|{side}|{levels}|{sorted(self.coco.items()) if coco else ''}"
        self.key = hashlib.sha256(key.encode()).hexdigest()[:16]
        cache = index.store.cache_dir("text-regions") if hasattr(index, "store") else None
        self.folder = cache / self.key if cache is not None else None

    def config(self) -> dict[str, Any]:
        """What a model file records of its regions."""
        return {"source": self.source, "coco": self.coco_path, "side": self.side, "levels": self.levels,
                "max_regions": self.max_regions}

    def boxes_of(self, row: int) -> list[Box]:
        """The relative boxes of row ``row`` (whole image first)."""
        if self.source == "grid":
            return [(0.0, 0.0, 1.0, 1.0)] + self.grid
        name = Path(self.index.entry_for_row(row).path).name
        return ([(0.0, 0.0, 1.0, 1.0)] + self.coco.get(name, []))[: self.max_regions]

    def of_row(self, row: int) -> np.ndarray:
        """(R, C) float16 region descriptors of the image at ``row``."""
        if row in self._memo:
            return self._memo[row]
        entry = self.index.entry_for_row(row)
        cached = self.folder / f"{entry.sha256}.npy" if self.folder is not None else None
        feats = None
        if cached is not None and cached.is_file():
            try:
                feats = np.load(cached)
            except (OSError, ValueError):
                feats = None  # a torn cache file is recomputed
        if feats is None:
            extractor = self.index.extractor
            image = extractor.load(entry.path)
            feats = regional_descriptors(extractor, image, self.boxes_of(row), side=self.side).astype(np.float16)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(cached, "wb", fsync=False) as handle:
                    np.save(handle, feats)
        self._memo[row] = feats
        return feats

    def batch(self, rows: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (n, R, C) float32, mask (n, R)) of ``rows``, zero-padded to the longest."""
        feats = [self.of_row(int(r)) for r in rows]
        width = max(f.shape[0] for f in feats)
        out = torch.zeros(len(feats), width, feats[0].shape[1])
        mask = torch.zeros(len(feats), width)
        for i, f in enumerate(feats):
            out[i, : len(f)] = torch.from_numpy(f.astype(np.float32))
            mask[i, : len(f)] = 1.0
        return out, mask

    def warm(self, rows: Sequence[int] | np.ndarray, progress: Callable[[int, str], Callable[[int], None]] | None = None) -> None:
        """Compute (and cache) the regions of ``rows`` now, with a progress bar."""
        advance = progress(len(rows), "regions") if progress else None
        for row in rows:
            self.of_row(int(row))
            if advance:
                advance(1)
