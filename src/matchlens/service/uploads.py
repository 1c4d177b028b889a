"""Untrusted uploads: content sniffing, decompression-bomb guard, safe file names, body deadline.

Nothing about an upload is trusted: not its file name (only a sanitised stem is kept, under a
content-hash prefix) and not its content type or extension (Pillow identifies the format from the
bytes), nor its declared length (:class:`BodyLimit` counts the body as it arrives), nor its pace
(:class:`BodyDeadline`: the whole body must arrive within the request timeout, else 408).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from matchlens.errors import BoxError, ImageLoadError, MatchlensError
from matchlens.fileio import atomic_write
from matchlens.io.images import crop_to_box

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 64_000_000  # a 8000x8000 photo; tighter than load_image's 537 MP, a server decodes in parallel
# Seconds a client has for a request head, and then for the whole body (20 MB at 30 s: 5.6 Mbit/s).
DEFAULT_REQUEST_TIMEOUT = 30.0

# Formats a browser shows as they are; other indexed formats (TIFF, PPM, ...) are sent re-encoded.
WEB_FORMATS = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
               "WEBP": "image/webp", "BMP": "image/bmp"}
_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp",
               "TIFF": ".tif"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UploadTooLarge(MatchlensError):
    """The request body, or the image it holds, is over the server's limit (HTTP 413)."""

    http_status = 413


class UnsupportedImage(ImageLoadError):
    """The uploaded bytes are not an image format Pillow recognises (HTTP 415)."""

    http_status = 415


@dataclass(frozen=True)
class Probe:
    """What the header of an uploaded image says, before any pixel is decoded."""

    format: str
    size: tuple[int, int]  # declared (width, height), before EXIF orientation


class BodyLimit:
    """ASGI middleware: answer 413 (JSON, one line) to a request whose body exceeds ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before anything is read; a chunked or
    lying body is counted as it arrives and cut off at the limit, so no request can make the
    server spool more than ``max_bytes``. (FastAPI's own ``max_body_size`` answers in plain text
    when the declared length is too large, hence this.)
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            from starlette.responses import JSONResponse

            response = JSONResponse({"detail": self.message}, status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if received > self.max_bytes:
                from starlette.exceptions import HTTPException

                # An HTTPException passes FastAPI's body parsing untouched and becomes a JSON 413;
                # the rest of the body is not read, so the connection cannot be reused.
                raise HTTPException(413, self.message, headers={"Connection": "close"})
            return message

        await self.app(scope, counting_receive, send)

    @property
    def message(self) -> str:
        return f"request body is over the server's limit of {self.max_bytes} bytes"


class BodyDeadline:
    """ASGI middleware: a request's whole body must arrive within ``seconds`` of its head, else
    408 (JSON, one line, ``Connection: close``, so the server closes the connection).

    The deadline is on the whole body, not on each read, so a client sending a byte now and then
    cannot hold a connection and a worker. Data already received is always delivered: only
    waiting for more past the deadline is refused, and once the body is complete reads are not
    timed (a response listening for a disconnect is not cut short). ``seconds`` None or 0: no
    deadline. Slow request heads and bodies nobody reads are the server's part
    (:mod:`matchlens.service.server`).
    """

    def __init__(self, app, seconds: float | None) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.seconds:
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        complete = False

        async def timed_receive():
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                from starlette.exceptions import HTTPException

                raise HTTPException(408, self.message, headers={"Connection": "close"}) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)

    @property
    def message(self) -> str:
        return f"the request body came too slowly: it must arrive within {self.seconds:g} s"


def probe_image(data: bytes, max_pixels: int, name: str = "upload") -> Probe:
    """Identify ``data`` by content (never by name or content type) and refuse bombs by header.

    Raises:
        UnsupportedImage: not an image format Pillow recognises (or empty).
        UploadTooLarge: the declared width*height is over ``max_pixels`` (decompression bomb).
        ImageLoadError: the header is corrupt.
    """
    if not data:
        raise UnsupportedImage(f"{name!r} is empty, not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                fmt, size = image.format or "unknown", image.size
        except UnidentifiedImageError:
            raise UnsupportedImage(f"{name!r} is not an image (content not recognised as any image format)") from None
        except Image.DecompressionBombError:
            raise UploadTooLarge(f"{name!r} declares too many pixels (decompression bomb refused)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageLoadError(f"cannot read {name!r}: file is truncated or corrupt: {exc}") from None
    if size[0] * size[1] > max_pixels:
        raise UploadTooLarge(f"{name!r} declares {size[0]}x{size[1]} pixels, over the server's limit of "
                             f"{max_pixels} (decompression bomb refused)")
    return Probe(fmt, size)


def decode_query(extractor, data: bytes, probe: Probe, box: Sequence[float] | None):
    """The decoded query (upright RGB, cropped to ``box``) exactly as the extractor would see it.

    ``box`` is in pixels of the full-size upright image (what a user draws on). The extractor may
    decode a large JPEG at 1/2..1/8 scale, so the box is scaled to the decoded frame before the
    crop. Returns ``(full decoded image, query image, box in the decoded frame or None)``.
    """
    image = extractor.load(data)
    if box is None:
        return image, image, None
    scaled = scale_box(box, probe, image.size)
    try:
        return image, crop_to_box(image, scaled), scaled
    except BoxError:
        if tuple(scaled) == tuple(float(c) for c in box):
            raise
        upright = probe.size if (image.width >= image.height) == (probe.size[0] >= probe.size[1]) else probe.size[::-1]
        raise BoxError("box ({:g}, {:g}, {:g}, {:g}) does not cover at least one pixel of the {}x{} image".format(
            *box, *upright)) from None


def scale_box(box: Sequence[float], probe: Probe, decoded_size: tuple[int, int]) -> tuple[float, ...]:
    """``box`` (pixels of the full-size upright image) in the frame of an image decoded at ``decoded_size``.

    JPEG draft decoding divides both sides by the same factor, and EXIF rotation may swap them,
    so the ratio of the longest sides is the scale.
    """
    factor = max(decoded_size) / max(probe.size)
    return tuple(float(c) * factor for c in box)


def safe_name(filename: str | None, fmt: str, data: bytes) -> str:
    """A file name that cannot escape a folder: ``<sha256[:16]>-<sanitised stem><ext of the real format>``.

    Only the last path component of the client's name survives (both ``/`` and ``\\`` separate),
    reduced to ``[A-Za-z0-9._-]`` without leading dots; the extension comes from the sniffed
    format. The hash prefix makes the name unique per content, so re-uploading the same image
    refreshes one entry instead of adding a copy.
    """
    base = re.split(r"[\\/]", filename or "")[-1]
    stem = _UNSAFE.sub("_", os.path.splitext(base)[0]).strip("._-")[:60] or "upload"
    ext = _EXTENSIONS.get(fmt, "." + _UNSAFE.sub("", fmt.lower())[:8])
    return f"{hashlib.sha256(data).hexdigest()[:16]}-{stem}{ext}"


def write_inside(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``folder/name`` atomically, refusing any name that resolves outside ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    target = (folder / name).resolve()
    if target.parent != folder.resolve():
        raise MatchlensError(f"refusing to write {name!r} outside the upload folder")
    with atomic_write(target, "wb") as stream:
        stream.write(data)
    return target


def read_limited(upload, max_bytes: int) -> bytes:
    """Read an uploaded file (Starlette ``UploadFile``), refusing more than ``max_bytes``."""
    upload.file.seek(0)
    data = upload.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadTooLarge(f"{upload.filename or 'upload'!r} is over the server's limit of {max_bytes} bytes")
    return data
