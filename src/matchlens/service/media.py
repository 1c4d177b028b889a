"""Indexed images for the browser: the original file when a browser can show it, and thumbnails.

Only files named by the index's metadata are ever read (looked up by integer id), so no request
can reach any other file.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from matchlens.errors import ImageLoadError
from matchlens.index.metadata import Entry
from matchlens.io.images import load_image
from matchlens.service.live import NotFound
from matchlens.service.uploads import DEFAULT_MAX_PIXELS, WEB_FORMATS

THUMBNAIL_SIDE = 256
VIEW_SIDE = 2048  # longest side of an image re-encoded for the browser


def browser_type(entry: Entry) -> str | None:
    """The MIME type to send the file as is, or None if it must be re-encoded (TIFF, PPM, ...)."""
    try:
        with Image.open(entry.path) as image:
            return WEB_FORMATS.get(image.format or "")
    except FileNotFoundError:
        raise NotFound(f"the file of image {entry.id} is no longer on disk") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def reencoded(entry: Entry, side: int = VIEW_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The image as a JPEG whose longest side is at most ``side``."""
    return _jpeg(entry.path, entry.sha256, side, max_pixels)


def thumbnail(entry: Entry, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A JPEG thumbnail (longest side :data:`THUMBNAIL_SIDE`), cached in memory by content hash."""
    return _cached_thumbnail(entry.path, entry.sha256, THUMBNAIL_SIDE, max_pixels)


def _jpeg(path: str, sha256: str, side: int, max_pixels: int) -> bytes:
    if not Path(path).is_file():
        raise NotFound(f"the file {Path(path).name!r} is no longer on disk")
    try:
        image = load_image(path, max_side=side, max_pixels=max_pixels)
    except ImageLoadError as exc:
        raise NotFound(f"image cannot be shown: {exc}") from None
    image.thumbnail((side, side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


# ~15 kB per thumbnail: at most ~60 MB. sha256 is in the key, so a changed file is never served stale.
_cached_thumbnail = functools.lru_cache(maxsize=4096)(_jpeg)
