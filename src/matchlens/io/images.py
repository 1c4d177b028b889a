"""Image loading: turn any image source into an upright 8-bit RGB :class:`PIL.Image.Image`.

Every way a user's image can be unusable (missing file, wrong format, truncated data, a
decompression bomb, an odd array) ends in a one-line :class:`~matchlens.errors.ImageLoadError`
that names the source and says what is wrong; raw Pillow and ``OSError`` exceptions never escape.
Query boxes are parsed and applied here too, with :class:`~matchlens.errors.BoxError`.

Pillow guards against decompression bombs with the process-wide ``PIL.Image.MAX_IMAGE_PIXELS``
(about 89 MP by default: a warning above it, an error above twice it), which would refuse
legitimate large photos below our own :data:`MAX_PIXELS`. While a call of this module runs,
Pillow's limit is raised to the limit that call asked for (the loosest one if several threads are
inside at once) and put back when the last one leaves, so Pillow still guards the sizes it checks
while decoding (ICO frames, TIFF tiles) but never fires for an image our limit allows.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

from matchlens.errors import BoxError, ImageLoadError

__all__ = ["MAX_PIXELS", "crop_to_box", "image_size", "load_image", "parse_box"]

MAX_PIXELS: int = 2**29
"""Default limit on the *declared* width*height of an image (~537 MP), checked before decoding."""

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO is the multi-picture JPEG many cameras write
_DRAFT_SCALES = (8, 4, 2)  # the DCT scalings libjpeg can decode at, coarsest first
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # transposes and quarter turns
_BOX_SYNTAX = "expected four comma-separated numbers x0,y0,x1,y1"

# What Pillow's decoders raise on bad data; anything else is a bug and should surface as one.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
# EXIF blocks are often mangled by editors; a damaged one costs the orientation, not the photo.
_EXIF_ERRORS = (SyntaxError, ValueError, EOFError, KeyError, TypeError, struct.error, OSError)


# --------------------------------------------------------------------------------------------
# Public API


def load_image(
    source: ImageSource,
    *,
    max_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Return an upright 8-bit RGB image, fully loaded and detached from any file.

    Args:
        source: a path; the encoded bytes of an image file; a PIL image; or a numpy array of
            shape HxW, HxWx1, HxWx3 or HxWx4 with dtype uint8, uint16, bool or float in [0, 1].
        max_side: a hint that the caller will shrink the image so that its longest side is
            about this long. JPEG files and bytes are then decoded at the coarsest 1/2, 1/4 or
            1/8 scale whose longest side is still at least ``max_side`` (cheap even for
            20000x20000 files). Nothing is resized otherwise, nothing is ever upscaled, and PIL
            images and arrays keep their size.
        name: for bytes, the file they were read from, used in error messages.
        max_pixels: refuse, before decoding, any file or lazy PIL image whose declared
            width*height exceeds this (decompression-bomb guard). Arrays are already in memory
            and are not limited.

    EXIF orientation is applied, transparency is composited on white, 16-bit and 32-bit data is
    scaled to 8 bits, and only the first frame of an animation or multi-page file is kept.

    Raises:
        ImageLoadError: the source cannot be read or decoded, is too large, or the array has an
            unsupported shape or dtype.
        TypeError: ``source`` is none of the supported types (a programming error).
        ValueError: ``max_side`` or ``max_pixels`` is not a positive integer.
    """
    _check_limits(max_side, max_pixels)
    if isinstance(source, np.ndarray):
        return _load_array(source)
    if isinstance(source, Image.Image):
        return _load_pil(source, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_bytes(bytes(source), max_side, max_pixels, name)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(source, max_side, max_pixels)
    raise TypeError(f"cannot load an image from a {type(source).__name__}")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Return (width, height) of the upright image, reading only the file header.

    The EXIF orientation is honoured (an orientation-6 photo stored 4000x3000 reports
    (3000, 4000)), so the size matches what :func:`load_image` returns without ``max_side``. No
    pixel is decoded, so a decompression bomb reports its declared size rather than failing.

    Raises:
        ImageLoadError: the file is missing, unreadable, empty or not an image.
    """
    label = _describe_path(path)
    with _open_binary(path, label) as stream:
        _refuse_empty_file(stream, label)
        with _pillow_pixel_limit(None), _open_lazily(stream, label, None) as image:
            width, height = image.size
            if _header_orientation(image) in _SWAPPING_ORIENTATIONS:
                return height, width
            return width, height


def parse_box(text: str) -> tuple[float, float, float, float]:
    """Parse the CLI box syntax ``'x0,y0,x1,y1'`` (pixels of the upright image).

    Whitespace around the numbers is allowed; the box may extend outside the image (it is
    clipped by :func:`crop_to_box`).

    Raises:
        BoxError: not four finite numbers, or ``x1 <= x0`` or ``y1 <= y0``.
    """
    parts = text.split(",")
    if len(parts) != 4:
        raise BoxError(f"invalid box {text!r}: {_BOX_SYNTAX}")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        raise BoxError(f"invalid box {text!r}: {_BOX_SYNTAX}") from None
    return _validated_box(numbers, f"box {text!r}")


def crop_to_box(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """Return the part of ``image`` inside ``box`` = (x0, y0, x1, y1), in pixel coordinates.

    A box partly outside the image is clipped to it; pixels the box only partly covers are kept
    whole. The result is a new image of the same mode.

    Raises:
        BoxError: the box is malformed, lies entirely outside the image, or covers less than one
            pixel of it after clipping; the message gives the box and the image size.
    """
    try:
        numbers = [float(value) for value in box]
    except (TypeError, ValueError):
        raise BoxError(f"invalid box {box!r}: {_BOX_SYNTAX}") from None
    if len(numbers) != 4:
        raise BoxError(f"invalid box {box!r}: {_BOX_SYNTAX}")
    shown = "box ({:g}, {:g}, {:g}, {:g})".format(*numbers)
    x0, y0, x1, y1 = _validated_box(numbers, shown)
    width, height = image.size
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise BoxError(f"{shown} lies entirely outside the {width}x{height} image")
    left, top, right, bottom = max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)
    if right - left < 1 or bottom - top < 1:
        raise BoxError(f"{shown} covers less than one pixel of the {width}x{height} image")
    pixels = (math.floor(left), math.floor(top), math.ceil(right), math.ceil(bottom))
    # Image.crop runs Pillow's bomb check on the crop size, though a crop of pixels already in
    # memory cannot be a bomb; lift Pillow's limit to the crop's area for the call.
    with _pillow_pixel_limit((pixels[2] - pixels[0]) * (pixels[3] - pixels[1])):
        return image.crop(pixels)


# --------------------------------------------------------------------------------------------
# Sources


def _load_path(path: str | os.PathLike, max_side: int | None, max_pixels: int) -> Image.Image:
    """Decode the image file at ``path`` (see :func:`load_image`)."""
    label = _describe_path(path)
    with _open_binary(path, label) as stream:
        _refuse_empty_file(stream, label)
        return _decode_stream(stream, label, max_side, max_pixels)


def _load_bytes(data: bytes, max_side: int | None, max_pixels: int, name: str | None = None) -> Image.Image:
    """Decode an image file held in memory (see :func:`load_image`)."""
    label = _describe_path(name) if name else "in-memory image bytes"
    if not data:
        raise ImageLoadError(f"cannot read {label}: {'empty file' if name else 'empty buffer'}")
    return _decode_stream(io.BytesIO(data), label, max_side, max_pixels)


def _load_pil(image: Image.Image, max_pixels: int) -> Image.Image:
    """Validate and convert a PIL image, never modifying or returning the caller's object."""
    label = _describe_pil(image)
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageLoadError(f"cannot use {label}: it has no pixels ({width}x{height})")
    with _pillow_pixel_limit(max_pixels):
        if _is_lazy(image):  # an Image.open result the caller has not decoded yet
            _refuse_bomb(image.size, label, max_pixels)
            _decode_pixels(image, label, max_pixels)
        return _upright_rgb(image, label)


def _load_array(array: np.ndarray) -> Image.Image:
    """Convert a numpy array (see :func:`load_image` for the accepted shapes and dtypes)."""
    pixels = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
    if not _is_supported_array(pixels):
        raise ImageLoadError(
            f"cannot use array of shape {array.shape} and dtype {array.dtype} as an image: "
            "expected HxW, HxWx1, HxWx3 or HxWx4 of uint8, uint16, bool or float in [0, 1]"
        )
    eight_bit = np.ascontiguousarray(_array_to_uint8(pixels, array))
    image = Image.fromarray(eight_bit)
    # fromarray may share the caller's buffer (it does for L and RGBA); the conversions below
    # copy, and an RGB image from fromarray is already a copy.
    return _to_rgb(image)


def _is_supported_array(pixels: np.ndarray) -> bool:
    """Whether ``pixels`` (HxWx1 already squeezed) has a shape and dtype we can turn into RGB."""
    shape_ok = pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))
    kind, itemsize = pixels.dtype.kind, pixels.dtype.itemsize
    dtype_ok = kind in "bf" or (kind == "u" and itemsize in (1, 2))
    return shape_ok and dtype_ok and pixels.shape[0] > 0 and pixels.shape[1] > 0


def _array_to_uint8(pixels: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Scale supported array data to uint8 (``original`` is only for the error message)."""
    kind = pixels.dtype.kind
    if kind == "u":
        if pixels.dtype.itemsize == 2:
            return _sixteen_to_eight(pixels)
        return pixels.astype(np.uint8, copy=False)
    if kind == "b":
        return pixels.astype(np.uint8) * np.uint8(255)
    if not (np.all(np.isfinite(pixels)) and pixels.min() >= 0 and pixels.max() <= 1):
        raise ImageLoadError(
            f"cannot use float array of shape {original.shape} and dtype {original.dtype} "
            "as an image: values must be finite and in [0, 1]"
        )
    return np.rint(pixels * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Decoding


def _decode_stream(
    stream: BinaryIO, label: str, max_side: int | None, max_pixels: int
) -> Image.Image:
    """Check the header of an encoded image, then decode it into an upright RGB image."""
    with _pillow_pixel_limit(max_pixels), _open_lazily(stream, label, max_pixels) as image:
        _refuse_bomb(image.size, label, max_pixels)
        if max_side is not None and image.format in _JPEG_FORMATS:
            _draft_jpeg(image, max_side)
        _decode_pixels(image, label, max_pixels)
        return _upright_rgb(image, label)


def _open_binary(path: str | os.PathLike, label: str) -> BinaryIO:
    """Open ``path`` for reading, turning OS errors into one-line messages."""
    try:
        return open(path, "rb")
    except (FileNotFoundError, NotADirectoryError):
        raise ImageLoadError(f"cannot read {label}: no such file") from None
    except IsADirectoryError:
        raise ImageLoadError(f"cannot read {label}: is a directory") from None
    except PermissionError:
        # Windows reports opening a directory as a permission error.
        problem = "is a directory" if os.path.isdir(path) else "permission denied"
        raise ImageLoadError(f"cannot read {label}: {problem}") from None
    except OSError as error:
        raise ImageLoadError(f"cannot read {label}: {error.strerror or error}") from None


def _refuse_empty_file(stream: BinaryIO, label: str) -> None:
    """Give an empty file its own message rather than 'not an image'."""
    if os.fstat(stream.fileno()).st_size == 0:
        raise ImageLoadError(f"cannot read {label}: empty file")


@contextmanager
def _open_lazily(
    stream: BinaryIO, label: str, max_pixels: int | None
) -> Iterator[ImageFile.ImageFile]:
    """Identify the image and read its header only (``Image.open`` decodes nothing)."""
    try:
        image = Image.open(stream)
    except UnidentifiedImageError:
        raise ImageLoadError(f"cannot read {label}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as error:
        raise _bomb_error(label, _pixels_in_pillow_message(error), max_pixels) from None
    except _DECODE_ERRORS as error:
        raise _corrupt_error(label, error) from None
    with image:
        yield image


def _refuse_bomb(size: tuple[int, int], label: str, max_pixels: int) -> None:
    """Refuse an image whose declared size exceeds ``max_pixels``, before any decoding."""
    width, height = size
    if width * height > max_pixels:
        raise _bomb_error(label, f"{width}x{height} = {width * height}", max_pixels)


def _draft_jpeg(image: ImageFile.ImageFile, max_side: int) -> None:
    """Ask libjpeg to decode at the coarsest scale whose longest side is still >= max_side."""
    width, height = image.size
    scale = _draft_scale(max(width, height), max_side)
    if scale > 1:
        # For a requested (w, h), draft() decodes at the largest s in 8, 4, 2, 1 that is at most
        # min(width // w, height // h). Requesting (width // scale, height // scale) puts that
        # bound in [scale, 2 * scale), so s == scale (finer only for a side shorter than scale).
        image.draft("RGB", (max(1, width // scale), max(1, height // scale)))


def _draft_scale(longest_side: int, max_side: int) -> int:
    """The largest of 8, 4, 2 that keeps ``ceil(longest_side / scale) >= max_side``, else 1."""
    for scale in _DRAFT_SCALES:
        if -(-longest_side // scale) >= max_side:
            return scale
    return 1


def _decode_pixels(image: Image.Image, label: str, max_pixels: int) -> None:
    """Force the (lazy) decode now, so bad data fails here with a clear message."""
    try:
        image.load()
    except Image.DecompressionBombError as error:  # e.g. an oversized frame inside an ICO
        raise _bomb_error(label, _pixels_in_pillow_message(error), max_pixels) from None
    except MemoryError:
        width, height = image.size
        raise ImageLoadError(
            f"cannot read {label}: not enough memory to decode {width}x{height} pixels"
        ) from None
    except _DECODE_ERRORS as error:
        raise _corrupt_error(label, error) from None


def _upright_rgb(image: Image.Image, label: str) -> Image.Image:
    """Apply the EXIF orientation and convert to RGB; always returns a new image."""
    try:
        upright = ImageOps.exif_transpose(image)
    except _EXIF_ERRORS:
        upright = image.copy()
    try:
        return _to_rgb(upright)
    except ValueError:  # a mode Pillow cannot convert, e.g. premultiplied 'La'
        raise ImageLoadError(
            f"cannot read {label}: unsupported pixel mode {image.mode!r}"
        ) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (returns ``image`` itself if already RGB)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I;16"):
        return Image.fromarray(_sixteen_to_eight(np.asarray(image))).convert("RGB")
    if mode in ("I", "F"):
        return Image.fromarray(_stretch_to_eight(np.asarray(image))).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(image)
    return image.convert("RGB")


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white, the background most images are viewed on."""
    rgba = image.convert("RGBA")
    flattened = Image.new("RGB", rgba.size, _WHITE)
    flattened.paste(rgba, mask=rgba.getchannel("A"))
    return flattened


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 onto 0..255 with rounding (65535 / 257 == 255 exactly)."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _stretch_to_eight(values: np.ndarray) -> np.ndarray:
    """Scale 32-bit int/float data by its own maximum: such files have no fixed white level."""
    data = values.astype(np.float32)
    data[~np.isfinite(data)] = 0
    np.clip(data, 0, None, out=data)
    peak = float(data.max())
    if peak > 0:
        data *= 255 / peak
    return np.rint(data).astype(np.uint8)


def _header_orientation(image: ImageFile.ImageFile) -> int:
    """The EXIF orientation (1..8) as far as the header tells, without decoding pixels."""
    # PNG keeps EXIF wherever it likes, and PngImageFile.getexif() decodes the whole image to
    # find one stored after the pixel data; only an eXIf chunk before the pixels is read here.
    if isinstance(image, PngImagePlugin.PngImageFile) and "exif" not in image.info:
        return 1
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except _EXIF_ERRORS:
        return 1


def _is_lazy(image: Image.Image) -> bool:
    """Whether ``image`` was opened from a file and its pixels are still undecoded."""
    return isinstance(image, ImageFile.ImageFile) and bool(image.tile)


# --------------------------------------------------------------------------------------------
# Pillow's global decompression-bomb limit

_limit_lock = threading.Lock()
_limits_in_use: list[int | None] = []
_pillow_limit_outside: int | None = None


@contextmanager
def _pillow_pixel_limit(limit: int | None) -> Iterator[None]:
    """Set Pillow's bomb limit to ``limit`` (None: off) for the duration, thread-safely.

    Pillow reads one module-global limit, so concurrent callers share it: it is the loosest
    limit any of them asked for, and the caller's original value returns when the last leaves.
    Our own declared-size check still applies each caller's exact limit.
    """
    global _pillow_limit_outside
    with _limit_lock:
        if not _limits_in_use:
            _pillow_limit_outside = Image.MAX_IMAGE_PIXELS
        _limits_in_use.append(limit)
        Image.MAX_IMAGE_PIXELS = _loosest(_limits_in_use)
    try:
        yield
    finally:
        with _limit_lock:
            _limits_in_use.remove(limit)
            in_use = _limits_in_use
            Image.MAX_IMAGE_PIXELS = _loosest(in_use) if in_use else _pillow_limit_outside


def _loosest(limits: list[int | None]) -> int | None:
    """The most permissive of several pixel limits (None means unlimited)."""
    return None if None in limits else max(limit for limit in limits if limit is not None)


# --------------------------------------------------------------------------------------------
# Messages and argument checks


def _bomb_error(label: str, declared: str, max_pixels: int | None) -> ImageLoadError:
    """The error for an image whose declared size is over the pixel limit."""
    limit = f"the limit of {max_pixels}" if max_pixels is not None else "Pillow's limit"
    return ImageLoadError(
        f"cannot read {label}: image declares {declared} pixels, over {limit} "
        "(possible decompression bomb; raise max_pixels to allow it)"
    )


def _pixels_in_pillow_message(error: Exception) -> str:
    """The pixel count Pillow puts in its DecompressionBombError message, if it is there."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return found.group(1) if found else "too many"


def _corrupt_error(label: str, error: BaseException) -> ImageLoadError:
    """The error for an image whose data ends early or cannot be decoded."""
    detail = str(error) or type(error).__name__
    return ImageLoadError(f"cannot read {label}: file is truncated or corrupt: {detail}")


def _validated_box(numbers: list[float], shown: str) -> tuple[float, float, float, float]:
    """Check that four numbers form a finite box with positive width and height."""
    x0, y0, x1, y1 = numbers
    if not all(math.isfinite(value) for value in numbers):
        raise BoxError(f"invalid {shown}: coordinates must be finite numbers")
    if x1 <= x0:
        raise BoxError(f"invalid {shown}: x1 ({x1:g}) must be greater than x0 ({x0:g})")
    if y1 <= y0:
        raise BoxError(f"invalid {shown}: y1 ({y1:g}) must be greater than y0 ({y0:g})")
    return x0, y0, x1, y1


def _check_limits(max_side: int | None, max_pixels: int) -> None:
    """Reject nonsensical limits, which are programming errors rather than bad images."""
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive integer or None, got {max_side!r}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")


def _describe_path(path: str | os.PathLike) -> str:
    """Quote a path for messages, as the user typed it."""
    return repr(os.fsdecode(path))


def _describe_pil(image: Image.Image) -> str:
    """Name a PIL image for messages: its file if it came from one."""
    filename = getattr(image, "filename", "")
    return repr(os.fsdecode(filename)) if filename else "in-memory image"
