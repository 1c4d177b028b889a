"""Small helpers shared by the HTML pages (the demo's results page, the evaluation report).

Every image is embedded as a data URI, so each page works offline and can be moved or mailed as
one file; nothing refers to a network resource.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from matchlens.errors import ImageLoadError
from matchlens.io.images import load_image

__all__ = ["STYLE", "THUMB", "thumbnail_html", "thumbnail_uri"]

#: Longest side, in pixels, of the thumbnails.
THUMB = 160

#: Base style: blue outline for the query, green / red / grey for positive / negative / junk.
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em} .summary{margin-bottom:1em}
table{border-collapse:collapse} td{padding:6px;vertical-align:top;text-align:center;font-size:12px}
tr{border-bottom:1px solid #ddd} img{display:block;max-width:160px;max-height:160px;margin:auto}
.q img{outline:3px solid #36c} .positive img{outline:4px solid #2a2} .negative img{outline:4px solid #d33}
.junk img{outline:4px solid #aaa} .tag{font-weight:bold} .positive .tag{color:#2a2} .negative .tag{color:#d33}
"""

Box = Sequence[float]


def thumbnail_uri(path: str | Path, side: int = THUMB, box: Box | None = None) -> str:
    """A JPEG data URI of a small thumbnail of ``path``.

    Args:
        path: the image file.
        side: longest side of the thumbnail, in pixels.
        box: optional ``(x0, y0, x1, y1)`` in pixels of the upright image (EXIF orientation
            applied, as query boxes are everywhere in matchlens); drawn in yellow.

    Raises:
        ImageLoadError: the file is missing or is not an image that can be read safely.
    """
    # A box needs the full upright width to scale it; without one a reduced JPEG decode is enough.
    img = load_image(path, max_side=None if box is not None else side)
    full_width = img.width
    img.thumbnail((side, side))
    if box is not None:
        _draw_box(img, box, img.width / full_width)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _draw_box(img: Image.Image, box: Box, scale: float) -> None:
    """Draw ``box`` (full-resolution pixels) on the thumbnail ``img``, scaled by ``scale``."""
    x0, y0, x1, y1 = (float(v) * scale for v in box)
    # Drawn after downscaling so the line stays 2 px wide whatever the original size.
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), outline=(255, 215, 0), width=2)


def thumbnail_html(
    path: str | Path, label: str, side: int = THUMB, box: Box | None = None,
    cache: dict[tuple[str, tuple[float, ...] | None], str] | None = None,
) -> str:
    """An ``<img>`` with an embedded thumbnail of ``path``, or a placeholder naming ``label``
    when the file is missing or unreadable (a report must not die on one bad image).

    ``cache`` (optional) maps ``(path, box)`` to an already built data URI, so an image shown
    several times on one page is decoded once.
    """
    key = (str(path), None if box is None else tuple(float(v) for v in box))
    uri = cache.get(key) if cache is not None else None
    if uri is None:
        try:
            uri = thumbnail_uri(path, side, box)
        except (OSError, ValueError, Image.DecompressionBombError, ImageLoadError):
            return (f"<div class=missing style='width:{side}px;height:{side * 3 // 4}px'>"
                    f"<span>{html.escape(label)}</span><br><em>image not found</em></div>")
        if cache is not None:
            cache[key] = uri
    return f"<img src='{uri}' alt='{html.escape(label)}'>"
