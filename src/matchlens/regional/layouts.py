"""Region layouts: which boxes of an image (or of a query box) are compared region by region.

Every box is relative, ``(x0, y0, x1, y1)`` in ``[0, 1]`` of the frame it lives in: the whole
upright image for an indexed image, the query box for a query with a box. ``REGION_LAYOUTS`` is
the only list of layout names:

``garment5``
    PS-Net's five regions (P1d, Fig. 4) as fixed boxes of a garment that fills the frame:
    ``collar`` (the band at the top), ``left_sleeve`` and ``right_sleeve`` (the side strips),
    ``chest`` (the centre) and ``hem`` (the band at the bottom). Left and right are the image's
    (the viewer's), not the wearer's.
``grid2x2`` / ``grid3x3``
    A plain grid (any kind of image: a poster, a logo, a print).
``keypoints``
    Landmark-guided boxes (PS-Net's landmark branch, with the landmarks given by the user): the
    same five regions as ``garment5``, placed from each image's landmarks in a JSON file (see
    :func:`read_keypoints` for the format). An image the file does not list gets the fixed
    ``garment5`` boxes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

from matchlens.fileio import read_json_object
from matchlens.components import Component
from matchlens.errors import ConfigError
from matchlens.registry import Registry

__all__ = ["Box", "GARMENT_LANDMARKS", "Keypoints", "Layout", "REGION_LAYOUTS", "make_layout", "read_keypoints",
           "region_label", "region_names"]

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), relative to the frame

# PS-Net's five regions for a garment filling the frame (collar band, two sleeve strips, chest,
# hem). The sleeve strips overlap the collar band's height: sleeves start at the shoulders.
GARMENT5: dict[str, Box] = {
    "collar": (0.25, 0.0, 0.75, 0.2),
    "left_sleeve": (0.0, 0.1, 0.25, 0.7),
    "right_sleeve": (0.75, 0.1, 1.0, 0.7),
    "chest": (0.25, 0.2, 0.75, 0.7),
    "hem": (0.0, 0.7, 1.0, 1.0),
}
# The landmarks a keypoints entry may give (DeepFashion's eight, left/right of the image).
GARMENT_LANDMARKS = ("left_collar", "right_collar", "left_sleeve", "right_sleeve",
                     "left_waistline", "right_waistline", "left_hem", "right_hem")
_REQUIRED = ("left_collar", "right_collar", "left_sleeve", "right_sleeve", "left_hem", "right_hem")
_LABELS = {"collar": "collar band", "left_sleeve": "left sleeve", "right_sleeve": "right sleeve"}


def region_label(name: str) -> str:
    """How a region is written in verdicts and tables: ``left_sleeve`` → ``left sleeve``."""
    return _LABELS.get(name, name.replace("_", " "))


class Layout(Component):
    """A layout: region names and each image's relative boxes (``boxes``)."""

    kind: ClassVar[str] = "region layout"
    regions: ClassVar[tuple[str, ...]] = ()

    def names(self) -> list[str]:
        """The region names, in the order of the descriptor rows."""
        return list(self.regions)

    def boxes(self, image: str | None = None, size: tuple[int, int] | None = None,
              frame: Sequence[float] | None = None) -> list[Box]:
        """Relative boxes of one image (``image``: its path; ``size``: its upright (w, h) in pixels;
        ``frame``: the query box in those pixels). Fixed layouts ignore all three."""
        return [self.fixed()[name] for name in self.regions]

    def fixed(self) -> dict[str, Box]:
        """The layout's fixed boxes by region name."""
        raise NotImplementedError


REGION_LAYOUTS: Registry[type[Layout]] = Registry("region layout")


@REGION_LAYOUTS.register("garment5")
class Garment5(Layout):
    """PS-Net's five garment regions as fixed boxes: collar band, left/right sleeve strips, chest, hem."""

    regions = tuple(GARMENT5)

    def fixed(self) -> dict[str, Box]:
        return GARMENT5


def _grid(n: int) -> dict[str, Box]:
    rows = ("top", "middle", "bottom") if n == 3 else ("top", "bottom")
    cols = ("left", "centre", "right") if n == 3 else ("left", "right")
    boxes = {}
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            name = "centre" if (row, col) == ("middle", "centre") else f"{row}_{col}"
            boxes[name] = (j / n, i / n, (j + 1) / n, (i + 1) / n)
    return boxes


@REGION_LAYOUTS.register("grid2x2")
class Grid2x2(Layout):
    """Four quarters of the frame."""

    regions = tuple(_grid(2))

    def fixed(self) -> dict[str, Box]:
        return _grid(2)


@REGION_LAYOUTS.register("grid3x3")
class Grid3x3(Layout):
    """Nine cells of a 3x3 grid of the frame."""

    regions = tuple(_grid(3))

    def fixed(self) -> dict[str, Box]:
        return _grid(3)


@REGION_LAYOUTS.register("keypoints")
class KeypointsLayout(Layout):
    """PS-Net's five regions placed from landmarks given per image in a JSON file (``keypoints``)."""

    regions = tuple(GARMENT5)
    defaults: ClassVar[dict[str, Any]] = {"keypoints": ""}

    def validate(self) -> None:
        path = self.config["keypoints"]
        if not isinstance(path, str) or not path:
            raise ConfigError("layout 'keypoints' needs keypoints=FILE.json (landmarks or boxes per image)")
        self.table = read_keypoints(path)

    def fixed(self) -> dict[str, Box]:
        return GARMENT5

    def boxes(self, image: str | None = None, size: tuple[int, int] | None = None,
              frame: Sequence[float] | None = None) -> list[Box]:
        entry = self.table.find(image)
        if entry is None or size is None:
            return super().boxes()
        x0, y0, x1, y1 = frame if frame is not None else (0.0, 0.0, float(size[0]), float(size[1]))
        placed = entry.pixel_boxes()
        return [_relative(placed[name], (x0, y0, x1, y1)) for name in self.regions]


def _relative(box: Box, frame: Box) -> Box:
    """A pixel box as fractions of ``frame`` (clipped to it)."""
    fx0, fy0, fx1, fy1 = frame
    w, h = max(fx1 - fx0, 1e-9), max(fy1 - fy0, 1e-9)
    x0, y0 = min(max((box[0] - fx0) / w, 0.0), 1.0), min(max((box[1] - fy0) / h, 0.0), 1.0)
    x1, y1 = min(max((box[2] - fx0) / w, 0.0), 1.0), min(max((box[3] - fy0) / h, 0.0), 1.0)
    return (x0, y0, max(x1, x0), max(y1, y0))


# ------------------------------------------------------------------------------------------------
# Keypoints JSON


@dataclass
class Landmarks:
    """One image's entry: landmark points and/or region boxes, in pixels of the upright image."""

    points: dict[str, tuple[float, float]]
    boxes: dict[str, Box]

    def pixel_boxes(self) -> dict[str, Box]:
        """The five regions in pixels: given boxes win; the others come from the landmarks."""
        placed = dict(self.boxes)
        missing = [name for name in GARMENT5 if name not in placed]
        if missing:
            placed.update({name: box for name, box in boxes_from_landmarks(self.points).items() if name in missing})
        return placed


def boxes_from_landmarks(points: Mapping[str, tuple[float, float]]) -> dict[str, Box]:
    """The five PS-Net regions (pixels) from the garment landmarks (Fig. 4, simplified to boxes).

    Collar band: the collar points' span widened by half its width each side, from just above the
    collar points down to a fifth of the collar-to-hem height. Sleeves: the box spanning the
    collar point and the sleeve (cuff) point of that side. Chest: between the collar points,
    from the collar band down to the waistline (else 60% of the way to the hem). Hem: the hem
    points' span, a fifth of the garment's height above the hem points to a tenth below.
    """
    lc, rc = points["left_collar"], points["right_collar"]
    ls, rs = points["left_sleeve"], points["right_sleeve"]
    lh, rh = points["left_hem"], points["right_hem"]
    top = min(lc[1], rc[1])
    bottom = max(lh[1], rh[1])
    height = max(bottom - top, 1.0)
    span = max(abs(rc[0] - lc[0]), 1.0)
    collar_x0, collar_x1 = min(lc[0], rc[0]) - span / 2, max(lc[0], rc[0]) + span / 2
    band = top + height / 5
    waist = [points[k][1] for k in ("left_waistline", "right_waistline") if k in points]
    chest_bottom = max(waist) if waist else top + 0.6 * height
    return {
        "collar": (collar_x0, top - height / 20, collar_x1, band),
        "left_sleeve": _span(lc, ls, height / 10),
        "right_sleeve": _span(rc, rs, height / 10),
        "chest": (min(lc[0], rc[0]), band, max(lc[0], rc[0]), max(chest_bottom, band + 1.0)),
        "hem": (min(lh[0], rh[0]), bottom - height / 5, max(lh[0], rh[0]), bottom + height / 10),
    }


def _span(a: tuple[float, float], b: tuple[float, float], pad: float) -> Box:
    return (min(a[0], b[0]) - pad, min(a[1], b[1]) - pad, max(a[0], b[0]) + pad, max(a[1], b[1]) + pad)


class Keypoints:
    """A keypoints file read and checked: entries by path, matched as given, then by file name."""

    def __init__(self, entries: dict[str, Landmarks], source: str) -> None:
        self.entries, self.source = entries, source
        self._by_name: dict[str, Landmarks] = {}
        for key, entry in entries.items():
            self._by_name.setdefault(os.path.basename(key), entry)

    def find(self, image: str | os.PathLike | None) -> Landmarks | None:
        """The entry of ``image`` (a path, as given or resolved, or its file name)."""
        if image is None:
            return None
        text = os.fspath(image)
        for key in (text, os.path.realpath(text)):
            if key in self.entries:
                return self.entries[key]
        return self._by_name.get(os.path.basename(text))


def read_keypoints(path: str | os.PathLike) -> Keypoints:
    """Read a keypoints file; any problem is a one-line ConfigError.

    Format: a JSON object mapping image paths (as indexed, or just the file name) to an object of
    named points ``[x, y]`` and/or named boxes ``[x0, y0, x1, y1]``, in pixels of the upright,
    full-size image::

        {"shirt_01.jpg": {"left_collar": [120, 40], "right_collar": [200, 42],
                          "left_sleeve": [30, 210], "right_sleeve": [290, 205],
                          "left_hem": [70, 400], "right_hem": [250, 402]},
         "photos/dress.jpg": {"collar": [80, 10, 160, 60], "left_sleeve": [0, 40, 60, 200], ...}}

    Points: the landmarks of ``GARMENT_LANDMARKS`` (``left_waistline``/``right_waistline``
    optional); boxes: the region names of ``garment5``. An entry must place all five regions
    (by box, or by the six required landmarks).
    """
    where = os.fspath(path)
    data = read_json_object(path, "keypoints file", ConfigError, "mapping image paths to landmarks")
    base = os.path.dirname(os.path.abspath(where))
    entries: dict[str, Landmarks] = {}
    for key, value in data.items():
        entry = _entry(value, f"keypoints file '{where}', image {key!r}")
        entries[key] = entry
        if not os.path.isabs(key) and os.sep in key:  # a relative path: relative to the file
            entries.setdefault(os.path.join(base, key), entry)
    return Keypoints(entries, where)


def _entry(value: Any, where: str) -> Landmarks:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object of named points [x, y] or boxes [x0, y0, x1, y1]")
    points: dict[str, tuple[float, float]] = {}
    boxes: dict[str, Box] = {}
    for name, coords in value.items():
        numbers = _numbers(coords, f"{where}, {name!r}")
        if len(numbers) == 2 and name in GARMENT_LANDMARKS:
            points[name] = (numbers[0], numbers[1])
        elif len(numbers) == 4 and name in GARMENT5:
            if numbers[2] <= numbers[0] or numbers[3] <= numbers[1]:
                raise ConfigError(f"{where}: box {name!r} is empty or inverted: {numbers}")
            boxes[name] = (numbers[0], numbers[1], numbers[2], numbers[3])
        else:
            raise ConfigError(f"{where}: unknown entry {name!r} with {len(numbers)} numbers; points [x, y]: "
                              f"{', '.join(GARMENT_LANDMARKS)}; boxes [x0, y0, x1, y1]: {', '.join(GARMENT5)}")
    lacking = [n for n in _REQUIRED if n not in points]
    if len(boxes) < len(GARMENT5) and lacking:
        raise ConfigError(f"{where}: give a box for every region ({', '.join(GARMENT5)}) or the landmarks "
                          f"{', '.join(_REQUIRED)} (missing: {', '.join(lacking)})")
    return Landmarks(points, boxes)


def _numbers(coords: Any, where: str) -> list[float]:
    if not isinstance(coords, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in coords):
        raise ConfigError(f"{where}: expected a list of numbers, got {coords!r}")
    return [float(v) for v in coords]


# ------------------------------------------------------------------------------------------------
# By name


def make_layout(name: str, **params: Any) -> Layout:
    """The layout ``name`` of ``REGION_LAYOUTS`` (one-line ConfigError for an unknown name)."""
    return REGION_LAYOUTS.get(name)(**params)


def region_names(layout: str) -> list[str]:
    """The region names of layout ``layout`` (no keypoints file needed)."""
    return list(REGION_LAYOUTS.get(layout).regions)
