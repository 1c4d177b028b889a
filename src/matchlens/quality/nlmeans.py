"""The classical baseline: OpenCV's non-local means (``fastNlMeansDenoisingColored``).

The filter strength follows the noise: ``h`` = 0.8·σ (luminance) and the same for colour, with σ
either given or estimated by :func:`matchlens.quality.features.noise_sigma` — the rule of thumb of
OpenCV's documentation (h ≈ σ gives the best PSNR for 7×7 templates and a 21×21 search window).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from matchlens.quality.features import noise_sigma

__all__ = ["nl_means"]


def nl_means(image: Image.Image, sigma: float | None = None, template: int = 7, search: int = 21) -> Image.Image:
    """Denoise an RGB photo with OpenCV's coloured non-local means."""
    import cv2  # deferred: OpenCV only where it runs

    rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    if sigma is None:
        sigma = noise_sigma(np.asarray(image.convert("L"), np.float64))
    h = float(max(3.0, 0.8 * sigma))
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    out = cv2.fastNlMeansDenoisingColored(bgr, None, h, h, template, search)
    return Image.fromarray(cv2.cvtColor(out, cv2.COLOR_BGR2RGB), "RGB")
