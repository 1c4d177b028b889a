"""Generated copies of a photo, for calibration, tests and benchmarks: one registry of edits.

``EDITS`` maps a name to ``(image, rng, **params) -> image``; each edit is deterministic for a
given ``numpy.random.Generator`` state. Three families:

* near-copy edits (the labels a near-duplicate gets): ``recompress``, ``resize``, ``crop``,
  ``recolour``, ``stretch``;
* region edits (a partial copy: applied to one relative box ``(x0, y0, x1, y1)``): ``texture``
  (pasted from another image), ``region_recolour``, ``region_mirror``, ``mosaic``, ``text``;
* ``other_view`` and ``rephotograph``: NOT copies — a simulated second photograph of the same
  scene (perspective change, a different crop, an occluder, other light), or of a flat picture
  taken square-on again (a similarity, but through a lens: radial distortion, blur, noise), the
  negatives that must stay apart.

Pure numpy, Pillow and OpenCV (for the perspective warp).
"""

from __future__ import annotations

import io
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from matchlens.registry import Registry

__all__ = ["EDITS", "Edit", "NEAR_EDITS", "REGION_EDITS", "apply_edit", "jitter", "partial_copy"]

Edit = Callable[..., Image.Image]
RelBox = Sequence[float]

#: Edit name → function ``(image, rng, **params) -> image``.
EDITS: Registry[Edit] = Registry("copy edit")
NEAR_EDITS = ("recompress", "resize", "crop", "recolour", "stretch")
REGION_EDITS = ("texture", "region_recolour", "region_mirror", "mosaic", "text")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


@EDITS.register("recompress")
def recompress(image: Image.Image, rng: np.random.Generator, low: int = 30, high: int = 70) -> Image.Image:
    """Re-encoded as JPEG at a random quality in [low, high]."""
    return _jpeg(image, int(rng.integers(low, high + 1)))


@EDITS.register("resize")
def resize(image: Image.Image, rng: np.random.Generator, low: float = 0.4, high: float = 0.8) -> Image.Image:
    """Downscaled by a random factor in [low, high], then JPEG 75."""
    f = float(rng.uniform(low, high))
    small = image.resize((max(16, round(image.width * f)), max(16, round(image.height * f))), Image.Resampling.BICUBIC)
    return _jpeg(small, 75)


@EDITS.register("crop")
def crop(image: Image.Image, rng: np.random.Generator, keep: float = 0.7) -> Image.Image:
    """A random crop keeping ``keep`` of each side (about ``keep²`` of the area)."""
    w, h = image.size
    cw, ch = round(w * keep), round(h * keep)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


@EDITS.register("recolour")
def recolour(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A global colour change: channel swap, grayscale, saturation or a tone curve (random)."""
    choice = int(rng.integers(0, 4))
    rgb = image.convert("RGB")
    if choice == 0:
        return Image.fromarray(np.ascontiguousarray(np.asarray(rgb)[:, :, rng.permutation(3)]))
    if choice == 1:
        return ImageOps.grayscale(rgb).convert("RGB")
    if choice == 2:
        return ImageEnhance.Color(rgb).enhance(float(rng.uniform(1.6, 2.2)))
    gamma = float(rng.uniform(0.6, 0.8))
    return Image.fromarray(np.clip(255.0 * (np.asarray(rgb) / 255.0) ** gamma, 0, 255).astype(np.uint8))


@EDITS.register("stretch")
def stretch(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Resized to another aspect ratio (width and height by different factors)."""
    fx, fy = float(rng.uniform(0.6, 0.95)), float(rng.uniform(0.6, 0.95))
    return image.resize((max(16, round(image.width * fx)), max(16, round(image.height * fy))), Image.Resampling.BICUBIC)


def _pixels(box: RelBox, size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    x0, y0, x1, y1 = box
    return round(x0 * w), round(y0 * h), max(round(x1 * w), round(x0 * w) + 1), max(round(y1 * h), round(y0 * h) + 1)


@EDITS.register("texture")
def texture(image: Image.Image, rng: np.random.Generator, box: RelBox = (0.0, 0.0, 0.5, 0.5),
            source: Image.Image | None = None) -> Image.Image:
    """The region replaced by a random patch of ``source`` (another image; noise if None)."""
    x0, y0, x1, y1 = _pixels(box, image.size)
    w, h = x1 - x0, y1 - y0
    if source is None:
        patch = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    else:
        sx = int(rng.integers(0, max(1, source.width - w) + 1))
        sy = int(rng.integers(0, max(1, source.height - h) + 1))
        patch = source.convert("RGB").crop((sx, sy, sx + w, sy + h)).resize((w, h))
    out = image.convert("RGB").copy()
    out.paste(patch, (x0, y0))
    return out


def _region_map(image: Image.Image, box: RelBox, change: Callable[[Image.Image], Image.Image]) -> Image.Image:
    x0, y0, x1, y1 = _pixels(box, image.size)
    out = image.convert("RGB").copy()
    out.paste(change(out.crop((x0, y0, x1, y1))), (x0, y0))
    return out


@EDITS.register("region_recolour")
def region_recolour(image: Image.Image, rng: np.random.Generator, box: RelBox = (0.0, 0.0, 0.5, 0.5)) -> Image.Image:
    """The region's colours changed (hue rotation by a channel permutation and inversion)."""
    order = [int(v) for v in rng.permutation(3)]
    return _region_map(image, box, lambda r: ImageOps.invert(Image.fromarray(np.ascontiguousarray(np.asarray(r)[:, :, order]))))


@EDITS.register("region_mirror")
def region_mirror(image: Image.Image, rng: np.random.Generator, box: RelBox = (0.0, 0.0, 0.5, 0.5)) -> Image.Image:
    """The region's print mirrored (left-right, and upside down at random)."""
    flip = bool(rng.integers(0, 2))
    return _region_map(image, box, lambda r: ImageOps.flip(ImageOps.mirror(r)) if flip else ImageOps.mirror(r))


@EDITS.register("mosaic")
def mosaic(image: Image.Image, rng: np.random.Generator, box: RelBox = (0.0, 0.0, 0.5, 0.5)) -> Image.Image:
    """The region pixelated into blocks of 8–16 px."""
    block = int(rng.integers(8, 17))
    return _region_map(image, box, lambda r: r.resize((max(1, r.width // block), max(1, r.height // block)),
                                                      Image.Resampling.BILINEAR).resize(r.size, Image.Resampling.NEAREST))


@EDITS.register("text")
def text(image: Image.Image, rng: np.random.Generator, box: RelBox = (0.0, 0.0, 0.5, 0.5)) -> Image.Image:
    """The region covered by a plain panel with pasted text (a slogan printed over the design)."""
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))

    def panel(region: Image.Image) -> Image.Image:
        out = Image.new("RGB", region.size, colour)
        draw = ImageDraw.Draw(out)
        ink = tuple(255 - c for c in colour)
        for line in range(0, region.height, 14):
            draw.text((4, line), "COPY " * (1 + region.width // 30), fill=ink)
        return out

    return _region_map(image, box, panel)


@EDITS.register("other_view")
def other_view(image: Image.Image, rng: np.random.Generator, strength: float = 0.12) -> Image.Image:
    """NOT a copy: another photograph of the scene — a perspective change of about ``strength``
    of the frame at the corners, a different crop, an occluder and other light."""
    w, h = image.size
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    # one side of the frame comes closer, the other recedes: a camera that turned
    sign = 1.0 if rng.random() < 0.5 else -1.0
    squeeze = np.array([[0, sign], [0, -sign], [0, sign], [0, -sign]], np.float32) * strength * h / 2
    moved = corners + squeeze + rng.uniform(-0.03, 0.03, (4, 2)).astype(np.float32) * [w, h]
    matrix = cv2.getPerspectiveTransform(corners, moved.astype(np.float32))
    warped = Image.fromarray(cv2.warpPerspective(np.asarray(image.convert("RGB")), matrix, (w, h),
                                                 borderMode=cv2.BORDER_REFLECT))
    draw = ImageDraw.Draw(warped)
    ox, oy = int(rng.integers(0, w * 3 // 4)), int(rng.integers(0, h * 3 // 4))
    draw.ellipse((ox, oy, ox + w // 5, oy + h // 4), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    left, top = int(rng.uniform(0.04, 0.12) * w), int(rng.uniform(0.04, 0.12) * h)
    cropped = warped.crop((left, top, w - int(rng.uniform(0.0, 0.08) * w), h - int(rng.uniform(0.0, 0.08) * h)))
    return ImageEnhance.Brightness(cropped).enhance(float(rng.uniform(0.8, 1.25)))


@EDITS.register("rephotograph")
def rephotograph(image: Image.Image, rng: np.random.Generator, distortion: float = 0.04) -> Image.Image:
    """NOT a copy: the picture photographed again square-on (a flat print, a poster): turned and
    scaled like a copy, but through a lens — radial distortion of about ``distortion`` at the
    corners — with blur, sensor noise and uneven light."""
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    angle, scale = float(rng.uniform(-6, 6)), float(rng.uniform(0.85, 1.1))
    turned = cv2.warpAffine(rgb, cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale), (w, h),
                            borderMode=cv2.BORDER_REFLECT)
    k = float(rng.choice([-1.0, 1.0])) * distortion * float(rng.uniform(0.6, 1.0))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    nx, ny = (xs - w / 2) / (w / 2), (ys - h / 2) / (h / 2)
    factor = (1 + k * (nx * nx + ny * ny) / 2).astype(np.float32)  # r² / 2: the corners move by about k
    lens = cv2.remap(turned, w / 2 + nx * factor * w / 2, h / 2 + ny * factor * h / 2, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)
    light = 1.0 + 0.15 * float(rng.uniform(-1, 1)) * nx[..., None]  # light falling from one side
    noisy = lens * light + rng.normal(0.0, 3.0, lens.shape)
    out = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))
    return _jpeg(out, 90)


def jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Mild global jitter of a partial copy: resized by 0.85–1.0 and re-encoded (JPEG 80–92)."""
    f = float(rng.uniform(0.85, 1.0))
    small = image.resize((max(16, round(image.width * f)), max(16, round(image.height * f))), Image.Resampling.BICUBIC)
    return _jpeg(small, int(rng.integers(80, 93)))


def apply_edit(image: Image.Image, name: str, rng: np.random.Generator, **params: Any) -> Image.Image:
    """Apply the edit registered as ``name`` (one-line ConfigError for an unknown name)."""
    return EDITS.get(name)(image, rng, **params)


def partial_copy(image: Image.Image, rng: np.random.Generator, edits: Sequence[str], boxes: Sequence[RelBox],
                 source: Image.Image | None = None) -> Image.Image:
    """A partial copy: ``edits[i]`` applied to ``boxes[i]`` (1–2 of them), then mild global jitter."""
    out = image.convert("RGB")
    for name, box in zip(edits, boxes):
        params: dict[str, Any] = {"box": box}
        if name == "texture":
            params["source"] = source
        out = apply_edit(out, name, rng, **params)
    return jitter(out, rng)
