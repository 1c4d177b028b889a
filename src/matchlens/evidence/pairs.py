"""Training pairs for the verifier: from ground truth, or with no labels from any folder.

* Ground truth (gt.json or any official layout via :func:`matchlens.io.formats.load_dataset`):
  a query (cropped to its box when it has one) with one of its positives = relevant; with an
  image that is neither positive nor junk = irrelevant.
* Label-free (any folder): two altered views of one image = relevant; views of two different
  images = irrelevant. Half of the views are pasted into another photo at a random place (in
  relevant and irrelevant pairs alike, so pasting itself is no cue): the verifier then learns to
  find an object anywhere in a cluttered target, which is what a search result looks like.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from matchlens.errors import MatchlensError, SourceError
from matchlens.io.collection import scan_many
from matchlens.io.formats import detect_format, load_dataset
from matchlens.io.images import load_image

Box = tuple[int, int, int, int]
WORK_SIDE = 256  # images are decoded this small: the raw-pixel grid uses ~100 px anyway


@dataclass
class Pair:
    """One training or evaluation pair; ``box`` is where the object lies in the target, if known."""

    query: Image.Image
    target: Image.Image
    label: int
    box: Box | None = None


def load_small(path: str | os.PathLike, side: int = WORK_SIDE) -> Image.Image:
    """Decode ``path`` upright with its longest side at most ``side``."""
    image = load_image(path, max_side=side)
    return shrink(image, side)


def shrink(image: Image.Image, side: int) -> Image.Image:
    """``image`` resized so that its longest side is at most ``side``."""
    scale = side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR)


def random_view(image: Image.Image, rng: np.random.Generator, min_scale: float = 0.35) -> Image.Image:
    """A random crop (35–100 % of the area, aspect 3:4–4:3), small rotation and photometric change."""
    w, h = image.size
    area = w * h * rng.uniform(min_scale, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, max(8, round(np.sqrt(area * aspect)))))
    ch = int(min(h, max(8, round(np.sqrt(area / aspect)))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    view = image.crop((x0, y0, x0 + cw, y0 + ch)).rotate(float(rng.uniform(-8, 8)), Image.Resampling.BILINEAR)
    view = ImageEnhance.Brightness(view).enhance(float(rng.uniform(0.75, 1.25)))
    return ImageEnhance.Contrast(view).enhance(float(rng.uniform(0.75, 1.25)))


def paste(obj: Image.Image, background: Image.Image, rng: np.random.Generator,
          area: tuple[float, float] = (0.15, 0.45)) -> tuple[Image.Image, Box]:
    """``obj`` resized to a random fraction of ``background``'s area and pasted at a random place.

    Returns the composite and the pasted box (x0, y0, x1, y1) in its pixels.
    """
    bw, bh = background.size
    fraction = rng.uniform(*area)
    scale = np.sqrt(fraction * bw * bh / (obj.width * obj.height))
    ow = int(min(bw, max(4, round(obj.width * scale))))
    oh = int(min(bh, max(4, round(obj.height * scale))))
    x0, y0 = int(rng.integers(0, bw - ow + 1)), int(rng.integers(0, bh - oh + 1))
    out = background.convert("RGB").copy()
    out.paste(obj.convert("RGB").resize((ow, oh), Image.Resampling.BILINEAR), (x0, y0))
    return out, (x0, y0, x0 + ow, y0 + oh)


def label_free_pairs(images: Sequence[Image.Image], count: int, seed: int = 0,
                     paste_fraction: float = 0.5) -> list[Pair]:
    """``count`` pairs (half relevant) built from unlabelled images, as the module docstring says."""
    if len(images) < 3:
        raise SourceError(f"label-free training needs at least 3 images, got {len(images)}")
    rng = np.random.default_rng(seed)
    pairs = []
    for p in range(count):
        label = p % 2 == 0
        a = int(rng.integers(len(images)))
        b = a if label else int((a + rng.integers(1, len(images))) % len(images))
        query, target = random_view(images[a], rng), random_view(images[b], rng)
        box = None
        if rng.random() < paste_fraction:
            c = int((max(a, b) + rng.integers(1, len(images) - 1)) % len(images))
            while c in (a, b):
                c = (c + 1) % len(images)
            target, box = paste(target, images[c], rng)
        pairs.append(Pair(query, target, int(label), box if label else None))
    return pairs


def folder_images(folder: str | os.PathLike, limit: int | None = None, seed: int = 0,
                  side: int = WORK_SIDE) -> list[Image.Image]:
    """Decode (up to ``limit``, a random sample) the readable images of a folder, recursively."""
    paths = list(scan_many([str(folder)]))
    if limit is not None and len(paths) > limit:
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]
    images = []
    for path in paths:
        try:
            images.append(load_small(path, side))
        except (MatchlensError, OSError):  # an unreadable file is skipped, like the indexer does
            continue
    return images


def ground_truth_pairs(dataset, count: int, seed: int = 0, side: int = WORK_SIDE,
                       queries: Sequence | None = None) -> list[Pair]:
    """``count`` pairs (half relevant) from a :class:`~matchlens.io.datasets.Dataset`'s ground truth."""
    rng = np.random.default_rng(seed)
    usable = [q for q in (queries if queries is not None else dataset.queries) if q.positives - {q.image}]
    if not usable:
        raise SourceError(f"dataset {dataset.name!r} has no query with positives to train on")
    cache: dict[str, Image.Image] = {}

    def image(name: str) -> Image.Image:
        if name not in cache:
            cache[name] = load_small(dataset.image_path(name), side)
        return cache[name]

    pairs = []
    for p in range(count):
        query = usable[int(rng.integers(len(usable)))]
        label = p % 2 == 0
        if label:
            names = sorted(query.positives - {query.image})
        else:
            names = sorted(set(dataset.images) - query.positives - query.junk - {query.image})
        target = names[int(rng.integers(len(names)))]
        pairs.append(Pair(query_image(dataset, query, side, image), image(target), int(label)))
    return pairs


def query_image(dataset, query, side: int = WORK_SIDE, loader=None) -> Image.Image:
    """The query's image, cropped to its box when it has one (box in stored pixels)."""
    if query.box is None:
        return loader(query.image) if loader else load_small(dataset.image_path(query.image), side)
    full = load_image(dataset.image_path(query.image))
    x0, y0, x1, y1 = query.box
    return shrink(full.crop((int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1)))), side)


def pairs_from_source(source: str | os.PathLike, count: int, seed: int = 0, label_free: bool | None = None,
                      dataset_format: str | None = None, limit: int | None = None) -> tuple[list[Pair], str]:
    """Pairs from a dataset (ground truth) or, when it has none or ``label_free``, from its images.

    Returns the pairs and a description of where they came from.
    """
    root = Path(source).expanduser()
    if not root.exists():
        raise SourceError(f"training source {root} does not exist")
    if label_free is None:
        try:
            dataset_format = dataset_format or detect_format(root)
            label_free = False
        except SourceError:
            label_free = True
    if label_free:
        images = folder_images(root, limit, seed)
        return label_free_pairs(images, count, seed), f"label-free views of {len(images)} images in {root}"
    dataset = load_dataset(root, dataset_format)
    return ground_truth_pairs(dataset, count, seed), f"ground truth of {dataset.name} ({dataset_format})"


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def pasted_object_pairs(objects: Sequence[Image.Image], backgrounds: Sequence[Image.Image], count: int,
                        seed: int = 0, area: tuple[float, float] = (0.25, 0.5),
                        views: Sequence[Sequence[Image.Image]] | None = None) -> list[Pair]:
    """Pairs with known target regions: the query is an object photo; the target is a background
    photo with an object pasted at a random place — the query's own object (relevant, ``box`` =
    where it was pasted) or another one (irrelevant).

    ``views[a]``, when given, holds other photos of object ``a`` (e.g. UKBench's 4 views): the
    pasted copy is then one of them rather than the query photo itself.
    """
    if len(objects) < 2 or not backgrounds:
        raise SourceError("pasted-object pairs need at least 2 objects and 1 background")
    rng = np.random.default_rng(seed)
    pairs = []
    for p in range(count):
        a = int(rng.integers(len(objects)))
        label = p % 2 == 0
        b = a if label else int((a + rng.integers(1, len(objects))) % len(objects))
        pool = views[b] if views is not None and len(views[b]) else [objects[b]]
        obj = pool[int(rng.integers(len(pool)))]
        target, box = paste(obj, backgrounds[int(rng.integers(len(backgrounds)))], rng, area)
        pairs.append(Pair(objects[a], target, int(label), box))
    return pairs
