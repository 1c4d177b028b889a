"""No-reference estimates of what is wrong with a query: noise σ, blur / lost resolution, size, exposure.

Pure NumPy on the grey image (at most ``ANALYSIS_SIDE`` px on its longest side), so a diagnosis costs
a few milliseconds and needs no model:

* ``noise_sigma`` — Immerkær's fast estimator (1996): the 3×3 mask
  ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` cancels locally linear image structure, so
  ``σ ≈ sqrt(π/2) · mean|I ∗ M| / 6`` (on the grey image, rescaled to per-channel σ; clipping at
  0 and 255 makes it read low above σ ≈ 60). It is taken per 16×16 block and the median block is kept, so
  textured regions do not read as noise. On the 0–255 scale, like :mod:`matchlens.io.degrade`.
* ``detail`` — the energy of the finest band (image − 3×3 box) over that of the next band
  (3×3 box − 9×9 box): a ×4 up-sampled or blurred photo has almost nothing in the finest band
  (≈ 0.1), a sharp one ≈ 0.3–0.6, a noisy one more.
* ``brightness`` (mean grey), ``dark`` / ``bright`` (fractions of pixels ≤ 16 / ≥ 240).
* ``width`` × ``height`` of the query as given.

:func:`diagnose` turns them into human-readable issues with the thresholds below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from matchlens.errors import ImageLoadError

__all__ = ["Diagnosis", "detail_ratio", "diagnose", "noise_sigma"]

ANALYSIS_SIDE = 640  # the index pipelines' usual query side; finer detail is resampled away anyway
NOISE_HIGH = 12.0     # σ on 0–255 above which noise visibly changes CNN descriptors
DETAIL_LOW = 0.12     # finest-band energy ratio below which the photo looks blurred or up-sampled
DARK_MEAN = 40.0      # mean grey below which the photo is underexposed
BRIGHT_MEAN = 205.0   # mean grey above which it is overexposed
SMALL_SIDE = 200      # shortest side (px) below which the photo is low resolution
BLANK_STD = 1.5       # grey standard deviation below which the image is blank
# Immerkær's gain, divided by the factor ITU-R 601 grey scales independent per-channel noise by
# (sqrt(0.299² + 0.587² + 0.114²)), so σ is the per-channel σ that matchlens.io.degrade adds.
_MASK_GAIN = np.sqrt(np.pi / 2.0) / 6.0 / float(np.sqrt(0.299 ** 2 + 0.587 ** 2 + 0.114 ** 2))


@dataclass
class Diagnosis:
    """The estimates and the issues they point to (empty when nothing looks wrong)."""

    width: int
    height: int
    noise_sigma: float
    detail: float
    brightness: float
    dark: float
    bright: float
    blank: bool
    issues: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (rounded)."""
        values = asdict(self)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in values.items()}


def _grey(image: Image.Image) -> np.ndarray:
    """Float grey image on 0–255, shrunk to ``ANALYSIS_SIDE`` on its longest side."""
    if not isinstance(image, Image.Image):
        raise ImageLoadError(f"a quality diagnosis needs an image, got {type(image).__name__}")
    rgb = image.convert("RGB")
    scale = ANALYSIS_SIDE / max(rgb.size)
    if scale < 1:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                         Image.Resampling.BILINEAR)
    return np.asarray(rgb.convert("L"), np.float64)


def _laplacian_mask(grey: np.ndarray) -> np.ndarray:
    """|I ∗ M| for Immerkær's mask (valid part only)."""
    g = grey
    out = (g[:-2, :-2] + g[:-2, 2:] + g[2:, :-2] + g[2:, 2:]
           - 2 * (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]) + 4 * g[1:-1, 1:-1])
    return np.abs(out)


def noise_sigma(grey: np.ndarray, block: int = 16) -> float:
    """Immerkær's noise σ (0–255 scale), the median over ``block``-px blocks."""
    response = _laplacian_mask(grey)
    h, w = (response.shape[0] // block) * block, (response.shape[1] // block) * block
    if h == 0 or w == 0:
        return float(_MASK_GAIN * response.mean()) if response.size else 0.0
    blocks = response[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3))
    return float(_MASK_GAIN * np.median(blocks))


def _box(grey: np.ndarray, size: int) -> np.ndarray:
    """Mean filter of odd ``size`` with edge padding (integral image: O(pixels))."""
    pad = size // 2
    padded = np.pad(grey, pad, mode="edge")
    integral = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = grey.shape
    total = (integral[size:size + h, size:size + w] - integral[:h, size:size + w]
             - integral[size:size + h, :w] + integral[:h, :w])
    return total / (size * size)


def detail_ratio(grey: np.ndarray) -> float:
    """Finest-band energy over the next band's (see the module docstring)."""
    box3, box9 = _box(grey, 3), _box(grey, 9)
    fine, coarse = np.mean((grey - box3) ** 2), np.mean((box3 - box9) ** 2)
    return float(fine / coarse) if coarse > 1e-9 else 0.0


def _issues(d: Diagnosis) -> list[str]:
    """Human-readable problems, worst-first order of the checks."""
    issues = []
    if d.blank:
        return ["blank image (uniform colour)"]
    if d.noise_sigma > NOISE_HIGH:
        issues.append(f"noisy (σ ≈ {d.noise_sigma:.0f} on 0–255)")
    if d.detail < DETAIL_LOW and d.noise_sigma <= NOISE_HIGH:
        issues.append(f"blurred or up-sampled (detail {d.detail:.2f} < {DETAIL_LOW})")
    if min(d.width, d.height) < SMALL_SIDE:
        issues.append(f"low resolution ({d.width}×{d.height} px)")
    if d.brightness < DARK_MEAN:
        issues.append(f"underexposed (mean grey {d.brightness:.0f}/255, {100 * d.dark:.0f}% crushed)")
    elif d.brightness > BRIGHT_MEAN:
        issues.append(f"overexposed (mean grey {d.brightness:.0f}/255, {100 * d.bright:.0f}% clipped)")
    return issues


def diagnose(image: Image.Image) -> Diagnosis:
    """Estimate noise, detail, size and exposure of ``image`` and list what looks wrong."""
    grey = _grey(image)
    blank = bool(grey.std() < BLANK_STD)
    d = Diagnosis(width=image.width, height=image.height,
                  noise_sigma=0.0 if blank else noise_sigma(grey),
                  detail=0.0 if blank else detail_ratio(grey),
                  brightness=float(grey.mean()), dark=float(np.mean(grey <= 16)), bright=float(np.mean(grey >= 240)),
                  blank=blank)
    d.issues = _issues(d)
    return d
