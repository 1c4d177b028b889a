"""A demo collection from real photos that install with PyPI packages, plus altered query views.

Database: scikit-image's bundled photos (minus the right view of its stereo pair, and minus
``chessboard_GRAY``, the same picture as ``chessboard_RGB``, which would make the ground truth
ambiguous) and scikit-learn's two sample photos. Queries: for every database image, two altered views drawn
from crops, rotations, perspective warps, JPEG recompression, lighting changes and partial
occlusion, plus the right view of the stereo pair (a real change of viewpoint). The ground truth
of each query is the image it was made from.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

MAX_SIDE = 640
SKIMAGE_FILES = [
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "chessboard_RGB.png", "clock_motion.png", "coffee.png", "coins.png", "color.png", "grass.png",
    "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png", "logo.png", "microaneurysms.png",
    "moon.png", "motorcycle_left.png", "page.png", "phantom.png", "retina.jpg", "rocket.jpg", "text.png",
]
STEREO_QUERY = ("motorcycle_right.png", "motorcycle_left.png")
SKLEARN_FILES = ["china.jpg", "flower.jpg"]


@dataclass(frozen=True)
class DemoQuery:
    """One query image of the demo with the database image it shows."""

    image: str
    source: str
    alteration: str


def _rng_for(name: str, salt: int) -> np.random.Generator:
    # Seeded from the name (not hash(), which changes between runs) so every run makes the same views.
    return np.random.default_rng(sum(map(ord, name)) * 31 + salt)


def crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop keeping 45-65% of each side."""
    w, h = img.size
    fw, fh = rng.uniform(0.45, 0.65, size=2)
    x0, y0 = rng.uniform(0, 1 - fw) * w, rng.uniform(0, 1 - fh) * h
    return img.crop((int(x0), int(y0), int(x0 + fw * w), int(y0 + fh * h)))


def rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A rotation by ±(10-25)° (expanded canvas) or by 90°."""
    if rng.random() < 0.3:
        return img.transpose(Image.Transpose.ROTATE_90)
    angle = float(rng.uniform(10, 25) * rng.choice([-1, 1]))
    return img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(128, 128, 128))


def perspective(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A perspective warp moving each corner inwards by up to 18% of the side."""
    import cv2

    w, h = img.size
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    jitter = rng.uniform(0, 0.18, size=(4, 2)) * [w, h]
    dst = (src + jitter * [[1, 1], [-1, 1], [-1, -1], [1, -1]]).astype(np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(np.asarray(img), matrix, (w, h), borderValue=(128, 128, 128))
    return Image.fromarray(warped)


def jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Heavy JPEG recompression (quality 8-15) after a 0.6-0.8× downscale."""
    scale = rng.uniform(0.6, 0.8)
    small = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=int(rng.integers(8, 16)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def lighting(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and colour changed, and a gamma curve."""
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.5, 1.5))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.3, 1.6))
    gamma = rng.uniform(0.6, 1.6)
    return img.point(lambda v: int(255 * (v / 255) ** gamma))


def occlude(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A solid rectangle covering 20-30% of the image."""
    img = img.copy()
    w, h = img.size
    area = rng.uniform(0.2, 0.3)
    rw, rh = int(w * np.sqrt(area)), int(h * np.sqrt(area))
    x0, y0 = int(rng.uniform(0, w - rw)), int(rng.uniform(0, h - rh))
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    ImageDraw.Draw(img).rectangle((x0, y0, x0 + rw, y0 + rh), fill=colour)
    return img


ALTERATIONS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "crop": crop, "rotation": rotate, "perspective": perspective,
    "jpeg": jpeg, "lighting": lighting, "occlusion": occlude,
}


def source_photos() -> dict[str, Image.Image]:
    """The real photos bundled with scikit-image and scikit-learn, as RGB images (by file name)."""
    import skimage
    from sklearn.datasets import load_sample_image

    data_dir = Path(skimage.__file__).parent / "data"
    photos = {name: Image.open(data_dir / name).convert("RGB") for name in SKIMAGE_FILES + [STEREO_QUERY[0]]}
    photos.update({name: Image.fromarray(load_sample_image(name)) for name in SKLEARN_FILES})
    return photos


def _fit(img: Image.Image) -> Image.Image:
    scale = MAX_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    return img


def build_demo_collection(out_dir: Path, views_per_image: int = 2) -> tuple[Path, Path, list[DemoQuery]]:
    """Write ``out_dir/collection`` (database) and ``out_dir/queries``; return them and the queries.

    Deterministic: the same files and alterations on every run.
    """
    collection, queries_dir = out_dir / "collection", out_dir / "queries"
    collection.mkdir(parents=True, exist_ok=True)
    queries_dir.mkdir(parents=True, exist_ok=True)
    photos = source_photos()
    names = list(ALTERATIONS)
    queries: list[DemoQuery] = []
    database = [n for n in photos if n != STEREO_QUERY[0]]
    for i, name in enumerate(sorted(database)):
        stem = Path(name).stem
        base = _fit(photos[name])
        base.save(collection / f"{stem}.jpg", quality=92)
        for v in range(views_per_image):
            alteration = names[(i * views_per_image + v) % len(names)]
            view = _fit(ALTERATIONS[alteration](base, _rng_for(name, v)))
            qname = f"{stem}__{alteration}.jpg"
            view.save(queries_dir / qname, quality=92)
            queries.append(DemoQuery(qname, f"{stem}.jpg", alteration))
    right, left = STEREO_QUERY
    _fit(photos[right]).save(queries_dir / "motorcycle_right__stereo.jpg", quality=92)
    queries.append(DemoQuery("motorcycle_right__stereo.jpg", f"{Path(left).stem}.jpg", "stereo view"))
    (out_dir / "queries.json").write_text(json.dumps([q.__dict__ for q in queries], indent=1))
    return collection, queries_dir, queries
