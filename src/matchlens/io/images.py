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

Limits on what one file may cost, each checked before the expensive step and each ending in a
one-line :class:`~matchlens.errors.ImageLoadError` that names the limit and how to raise it:

* Only regular files are read. A path is opened with ``O_NONBLOCK`` and checked with ``fstat``
  before any byte is read, so a FIFO, device or socket named like a photo is refused at once
  ("not a regular file (FIFO)") instead of blocking; broken links and symlink loops say so.
* File size: :data:`MAX_FILE_BYTES` (256 MiB), or ``MATCHLENS_MAX_FILE_MB`` in the environment
  (MiB; read at each call). Checked from ``fstat`` before reading, for paths given to
  :func:`load_image` and for :func:`read_image_file` (what the indexer reads).
* Decoding memory: :data:`MAX_DECODE_BYTES` (1 GiB), or ``MATCHLENS_MAX_DECODE_MB``. Before any
  pixel is decoded, the memory the load needs is estimated from the header: width x height x
  the bytes per pixel of the mode Pillow decodes into (after the JPEG draft reduction), plus the
  upright RGB copy made from it. Over the budget, and when ``max_side`` allows shrinking by 2 or
  more, the image is shrunk in its decoded mode right after decoding (``Image.reduce``), so only
  the decoded raster counts; if that is still over the budget, or ``max_side`` was not given,
  the image is refused. Images whose full-size load fits the budget decode exactly as before.
  The pixel-count limit :data:`MAX_PIXELS` still applies on top.
"""

from __future__ import annotations

import errno
import io
import math
import os
import re
import stat
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

from matchlens.errors import BoxError, ImageLoadError
from matchlens.io.collection import undecodable_file

__all__ = [
    "MAX_DECODE_BYTES", "MAX_FILE_BYTES", "MAX_PIXELS", "checked_box", "crop_to_box", "image_size", "load_image",
    "max_decode_bytes", "max_file_bytes", "open_regular_file", "parse_box", "read_image_file",
]

MAX_PIXELS: int = 2**29
"""Default limit on the *declared* width*height of an image (~537 MP), checked before decoding."""

MAX_FILE_BYTES: int = 256 * 2**20
"""Default limit on the size of an image file (256 MiB); ``MATCHLENS_MAX_FILE_MB`` overrides it."""

MAX_DECODE_BYTES: int = 2**30
"""Default budget for the memory one image may take to decode and convert (1 GiB);
``MATCHLENS_MAX_DECODE_MB`` overrides it."""

FILE_LIMIT_ENV = "MATCHLENS_MAX_FILE_MB"
DECODE_LIMIT_ENV = "MATCHLENS_MAX_DECODE_MB"

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO is the multi-picture JPEG many cameras write
_DRAFT_SCALES = (8, 4, 2)  # the DCT scalings libjpeg can decode at, coarsest first
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # transposes and quarter turns
_BOX_SYNTAX = "expected four comma-separated numbers x0,y0,x1,y1"
# How each EXIF orientation is undone (what ImageOps.exif_transpose does).
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_NOT_REGULAR = (
    (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)
_OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)

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

    Memory is bounded (see the module docstring): a path must be a regular file of at most
    :func:`max_file_bytes`, and a file, bytes or lazy PIL image must decode within
    :func:`max_decode_bytes`. An image whose full-size load would exceed that budget is, when
    ``max_side`` allows, shrunk by an integer factor in its decoded mode right after decoding
    (longest side still at least ``max_side``), and refused otherwise.

    Raises:
        ImageLoadError: the source cannot be read or decoded, is not a regular file, is too
            large (file size, pixel count or decoding memory), or the array has an
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
        ImageLoadError: the file is missing, unreadable, not a regular file, empty or not an image.
    """
    label = _describe_path(path)
    with _open_binary(path, label, None) as stream:
        _refuse_empty_file(stream, label)
        with _pillow_pixel_limit(None), _open_lazily(stream, label, None) as image:
            width, height = image.size
            if _header_orientation(image) in _SWAPPING_ORIENTATIONS:
                return height, width
            return width, height


def read_image_file(path: str | os.PathLike) -> tuple[bytes, os.stat_result]:
    """The whole content of the image file at ``path`` and its ``fstat``, read safely.

    Only a regular file of at most :func:`max_file_bytes` is read (checked on the open
    descriptor, so a FIFO never blocks and a huge file is never read). The content is not
    decoded; an empty file gives ``b""``.

    Raises:
        ImageLoadError: one line saying why the file cannot be read: no such file, broken link,
            symlink loop, name not valid UTF-8, permission denied, a directory, not a regular
            file (FIFO, device, socket), or over the size limit.
    """
    label = _describe_path(path)
    limit = max_file_bytes()
    with _open_binary(path, label, limit) as stream:
        info = os.fstat(stream.fileno())
        expected = min(info.st_size, limit)
        try:
            data = stream.read(expected + 1)
            if len(data) > expected:  # the file grew after fstat, or reports no size (/proc)
                data += stream.read(limit + 1 - len(data))
        except OSError as error:
            raise ImageLoadError(f"cannot read {label}: {_strerror(error)}") from None
    if len(data) > limit:
        raise _file_size_error(label, len(data), limit)
    return data, info


def open_regular_file(path: str | os.PathLike, max_bytes: int | None = None) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file (of at most ``max_bytes``).

    The check is made on the open descriptor (opened with ``O_NONBLOCK``), so a FIFO, device or
    socket is refused without blocking. Use it wherever a user's path is read.

    Raises:
        ImageLoadError: the one-line reason the file cannot be read (see :func:`read_image_file`).
    """
    return _open_binary(path, _describe_path(path), max_bytes)


def max_file_bytes() -> int:
    """The file-size limit in bytes: ``MATCHLENS_MAX_FILE_MB`` (MiB) if set, else :data:`MAX_FILE_BYTES`.

    Raises:
        ImageLoadError: the variable is set but is not a positive number.
    """
    return _limit_from_env(FILE_LIMIT_ENV, MAX_FILE_BYTES)


def max_decode_bytes() -> int:
    """The decoding-memory budget in bytes: ``MATCHLENS_MAX_DECODE_MB`` (MiB) if set, else
    :data:`MAX_DECODE_BYTES`.

    Raises:
        ImageLoadError: the variable is set but is not a positive number.
    """
    return _limit_from_env(DECODE_LIMIT_ENV, MAX_DECODE_BYTES)


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


def checked_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """``box`` as four finite floats (x0, y0, x1, y1) with x1 > x0 and y1 > y0.

    Raises:
        BoxError: not a sequence of four numbers, or an empty or inverted box.
    """
    try:
        numbers = [float(value) for value in box]
    except (TypeError, ValueError):
        raise BoxError(f"invalid box {box!r}: {_BOX_SYNTAX}") from None
    if len(numbers) != 4:
        raise BoxError(f"invalid box {box!r}: {_BOX_SYNTAX}")
    return _validated_box(numbers, "box ({:g}, {:g}, {:g}, {:g})".format(*numbers))


def crop_to_box(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """Return the part of ``image`` inside ``box`` = (x0, y0, x1, y1), in pixel coordinates.

    A box partly outside the image is clipped to it; pixels the box only partly covers are kept
    whole. The result is a new image of the same mode.

    Raises:
        BoxError: the box is malformed, lies entirely outside the image, or covers less than one
            pixel of it after clipping; the message gives the box and the image size.
    """
    x0, y0, x1, y1 = checked_box(box)
    shown = "box ({:g}, {:g}, {:g}, {:g})".format(x0, y0, x1, y1)
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
    with _open_binary(path, label, max_file_bytes()) as stream:
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
            _shrink_factor_within_budget(image, label, None)
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
        factor = _shrink_factor_within_budget(image, label, max_side)
        _decode_pixels(image, label, max_pixels)
        return _upright_rgb(image, label, factor)


def _open_binary(path: str | os.PathLike, label: str, max_bytes: int | None) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file of at most ``max_bytes`` (None: any
    size), turning OS errors into one-line messages.

    The path is checked with ``stat`` before opening (opening some devices has side effects) and
    the descriptor with ``fstat`` after (the path may have changed in between); ``O_NONBLOCK``
    makes opening a FIFO return at once instead of waiting for a writer.
    """
    try:
        _refuse_irregular(os.stat(path), label)
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as error:
        raise _open_error(path, label, error) from None
    try:
        info = os.fstat(fd)
        _refuse_irregular(info, label)
        if max_bytes is not None and info.st_size > max_bytes:
            raise _file_size_error(label, info.st_size, max_bytes)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _refuse_irregular(info: os.stat_result, label: str) -> None:
    """Refuse anything but a regular file, naming what it is."""
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise ImageLoadError(f"cannot read {label}: is a directory")
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), "special file")
    raise ImageLoadError(f"cannot read {label}: not a regular file ({kind})")


def _open_error(path: str | os.PathLike, label: str, error: OSError) -> ImageLoadError:
    """The one-line error for a path that cannot be opened."""
    code = error.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        if os.path.islink(path):
            problem = "broken link (its target does not exist)"
        elif undecodable_file(path):
            problem = "file name is not valid UTF-8; rename it"
        else:
            problem = "no such file"
    elif code == errno.ELOOP:
        problem = "symlink loop"
    elif code == errno.EISDIR:
        problem = "is a directory"
    elif code in (errno.EACCES, errno.EPERM):
        # Windows reports opening a directory as a permission error.
        problem = "is a directory" if os.path.isdir(path) else "permission denied"
    else:
        problem = _strerror(error)
    return ImageLoadError(f"cannot read {label}: {problem}")


def _strerror(error: OSError) -> str:
    return str(error.strerror or error)


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


def _shrink_factor_within_budget(image: Image.Image, label: str, max_side: int | None) -> int:
    """The factor to shrink by right after decoding (1: none) so the load fits the decoding
    budget; refuses, before decoding, an image that cannot fit it."""
    budget = max_decode_bytes()
    width, height = image.size
    pixels = width * height
    decoded = pixels * _bytes_per_pixel(image.mode)
    full_size = decoded + pixels * _conversion_bytes_per_pixel(image)
    if _header_orientation(image) in _TRANSPOSES:
        full_size += decoded  # the transposed copy
    if full_size <= budget:
        return 1
    factor = max(width, height) // max_side if max_side is not None else 1
    # Image.reduce premultiplies LA and RGBA into a full-size copy first.
    shrinking = decoded + (pixels * 4 if image.mode in ("LA", "RGBA") else 0)
    if factor >= 2 and shrinking <= budget:
        return factor
    needed = shrinking if factor >= 2 else full_size
    raise ImageLoadError(
        f"cannot read {label}: its {width}x{height} {image.mode} pixels need about {_mib(needed)} MiB "
        f"to decode, over the decoding limit of {_mib(budget)} MiB (set {DECODE_LIMIT_ENV} to raise it)"
    )


def _bytes_per_pixel(mode: str) -> int:
    """How many bytes Pillow stores per pixel of ``mode`` (several bands take 4)."""
    if mode.startswith("I;16"):
        return 2
    if mode in ("I", "F") or Image.getmodebands(mode) > 1:
        return 4
    return 1


def _conversion_bytes_per_pixel(image: Image.Image) -> int:
    """About how many bytes per pixel turning the decoded image into RGB adds."""
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return 4 + 5  # the RGBA copy and its alpha band, then the RGB result
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return 4 + 10  # numpy's wider intermediates, then the RGB result
    return 4  # the RGB result (or, for RGB, the detached copy)


def _shrink(image: Image.Image, factor: int) -> Image.Image:
    """A new image 1/``factor`` the size (rounded up), in the same mode."""
    if image.mode in ("1", "P", "PA") or image.mode.startswith("I;16"):
        size = (-(-image.width // factor), -(-image.height // factor))
        # Averaging palette indices would invent colours; Image.reduce has no 16-bit modes.
        resample = Image.Resampling.BOX if image.mode.startswith("I;16") else Image.Resampling.NEAREST
        return image.resize(size, resample)
    return image.reduce(factor)


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


def _upright_rgb(image: Image.Image, label: str, factor: int = 1) -> Image.Image:
    """Shrink by ``factor`` (in the decoded mode, so the copies below are small), apply the EXIF
    orientation and convert to RGB; always returns a new image."""
    orientation = _orientation(image)  # read before shrinking: TIFF keeps it in the file's tags
    try:
        if factor > 1:
            upright = _shrink(image, factor)
            if orientation in _TRANSPOSES:
                upright = upright.transpose(_TRANSPOSES[orientation])
        elif orientation in _TRANSPOSES:
            try:
                upright = ImageOps.exif_transpose(image)
            except _EXIF_ERRORS:
                upright = image
        else:
            upright = image
        rgb = _to_rgb(upright)
    except ValueError:  # a mode Pillow cannot convert, e.g. premultiplied 'La'
        raise ImageLoadError(
            f"cannot read {label}: unsupported pixel mode {image.mode!r}"
        ) from None
    return rgb.copy() if rgb is image else rgb


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation of a decoded image (1 when absent or unreadable)."""
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except _EXIF_ERRORS:
        return 1


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


def _header_orientation(image: Image.Image) -> int:
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


def _limit_from_env(variable: str, default: int) -> int:
    """A byte limit given in MiB by ``variable``, else ``default``."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        mib = float(text)
    except ValueError:
        mib = math.nan
    if not (math.isfinite(mib) and mib > 0):
        raise ImageLoadError(f"invalid {variable}={text!r}: expected a positive number of MiB")
    return max(1, int(mib * 2**20))


def _mib(size: int) -> str:
    """A byte count in MiB for messages: 4 significant digits, whole MiB from 1000 MiB."""
    value = size / 2**20
    return f"{value:.0f}" if value >= 1000 else f"{value:.4g}"


def _file_size_error(label: str, size: int, limit: int) -> ImageLoadError:
    """The error for a file over the file-size limit."""
    return ImageLoadError(
        f"cannot read {label}: file is {_mib(size)} MiB, over the limit of {_mib(limit)} MiB "
        f"for image files (set {FILE_LIMIT_ENV} to raise it)"
    )


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
