"""Many queries in one process: read a query set (folder or list file) and its boxes.

``boxes.json`` maps a query — its path as listed, its absolute path or its file name — to a box
``[x0, y0, x1, y1]`` (or ``"x0,y0,x1,y1"``) in pixels of the upright image; queries not named
there are searched whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from matchlens.fileio import read_json_object
from matchlens.errors import BoxError, SourceError
from matchlens.io.collection import listed_path, scan_source
from matchlens.io.images import parse_box
from matchlens.pipeline.search import Query

__all__ = ["read_boxes", "read_queries"]

Box = tuple[float, float, float, float]


def read_queries(source: str | os.PathLike, boxes: str | os.PathLike | None = None) -> list[Query]:
    """The queries of a folder (recursive) or list file, each with its box from ``boxes``."""
    paths = scan_source(source)
    table = read_boxes(boxes) if boxes is not None else {}
    queries = [Query(path, _box_for(path, table), name=path) for path in paths]
    unused = set(table) - {k for q in queries for k in _keys(str(q.source))}
    if unused:
        raise SourceError(f"boxes file names {len(unused)} file(s) that are not queries, e.g. {sorted(unused)[0]!r}")
    return queries


def read_boxes(path: str | os.PathLike) -> dict[str, Box]:
    """The boxes of a ``boxes.json`` file (one-line errors for a missing or malformed file)."""
    raw = read_json_object(path, "boxes file", SourceError, "mapping query files to [x0, y0, x1, y1]")
    return {str(name): _parse(value, name) for name, value in raw.items()}


def _parse(value: Any, name: str) -> Box:
    if isinstance(value, str):
        return parse_box(value)
    if isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        return parse_box(",".join(str(v) for v in value))
    raise BoxError(f"box of {name!r} must be [x0, y0, x1, y1] or 'x0,y0,x1,y1', got {value!r}")


def _keys(path: str) -> tuple[str, ...]:
    return (path, listed_path(path), Path(path).name)


def _box_for(path: str, table: dict[str, Box]) -> Box | None:
    return next((table[k] for k in _keys(path) if k in table), None)
