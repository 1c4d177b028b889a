"""×4 super-resolution, the paper's SR variant: the DnCNN architecture (:mod:`matchlens.quality.dncnn`,
a residual CNN in the manner of VDSR) applied to the bicubic ×4 up-sampled low-resolution image,
trained with the MSE to the original. Its input is exactly what
:func:`matchlens.io.degrade.downsample` produces (bicubic down by 4, bicubic back up), so the
query keeps its pixel size and the residual restores the lost detail.
"""

from __future__ import annotations

from PIL import Image

from matchlens.io.degrade import downsample
from matchlens.quality.dncnn import DnCNN, default_size

__all__ = ["FACTOR", "bicubic_input", "sr_degrade", "sr_model"]

FACTOR = 4


def sr_model(depth: int | None = None, channels: int | None = None) -> DnCNN:
    """A residual SR network (paper size on a GPU, the reduced size on a CPU unless given)."""
    d, c = default_size()
    return DnCNN(depth or d, channels or c)


def sr_degrade(image: Image.Image, seed: int = 0) -> Image.Image:
    """Training input of the SR network: ×4 down-sampled and bicubic up-sampled back."""
    return downsample(image, FACTOR)


def bicubic_input(small: Image.Image, factor: int = FACTOR) -> Image.Image:
    """A genuinely small photo brought to the SR network's input: bicubic up by ``factor``."""
    rgb = small.convert("RGB")
    return rgb.resize((rgb.width * factor, rgb.height * factor), Image.Resampling.BICUBIC)
