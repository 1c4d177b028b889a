"""Deterministic image degradations for robustness tests: noise, blur, ×4 downsampling, low light, night.

Every function takes an RGB :class:`PIL.Image.Image` (other modes are converted to RGB) and returns a
new RGB image of the same size; nothing is random unless a ``seed`` is given, and the same seed gives
the same image. Pixel values are on the 0–255 scale throughout; results are rounded and clipped to
8 bits. Each is registered in :data:`DEGRADATIONS` so callers pick one by name:

==============  ==================================================================================
``noise``       :func:`gaussian_noise`: add N(0, σ²) per pixel and channel (σ = 10 on 0–255)
``blur``        :func:`blur`: Gaussian blur of standard deviation σ px (2.0; Pillow's 3-pass box
                approximation)
``downsample``  :func:`downsample`: bicubic (antialiased) down by ``factor`` (4), then bicubic back
                up to the original size: the input of a ×4 super-resolution model
``low_light``   :func:`low_light`: ``255 · gain · (x / 255)^gamma`` (gain 0.3, gamma 1.8): a
                shorter exposure (gain) with a darker tone curve (gamma > 1 crushes the shadows)
``night``       :func:`night`: ``low_light`` (gain 0.3, gamma 1.8), then a warm sodium-light colour
                cast (R × 1.25, G × 1.0, B × 0.6), then sensor noise σ = 8 (seeded)
==============  ==================================================================================

:func:`degrade` applies one by name: ``degrade(image, "night", seed=0)``,
``degrade(image, "blur", sigma=3.0)``. An unknown name or parameter, or an invalid value, is a one-line
:class:`~matchlens.errors.ConfigError`. Pure numpy and Pillow.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

from matchlens.components import in_range, integer, non_negative_float, positive_float
from matchlens.errors import ConfigError
from matchlens.registry import Registry

__all__ = ["DEGRADATIONS", "NIGHT_CAST", "Degradation", "blur", "degrade", "downsample", "gaussian_noise",
           "low_light", "night"]

Degradation = Callable[..., Image.Image]

#: Name → degradation function ``(image, **params) -> image``; a function with a ``seed`` parameter is random.
DEGRADATIONS: Registry[Degradation] = Registry("degradation")

#: Per-channel (R, G, B) gains of the night colour cast: warm sodium-vapour street light.
NIGHT_CAST: tuple[float, float, float] = (1.25, 1.0, 0.6)


def _pixels(image: Image.Image) -> np.ndarray:
    """The image as a float64 (h, w, 3) array on the 0–255 scale."""
    if not isinstance(image, Image.Image):
        raise ConfigError(f"a degradation needs a PIL image, got {type(image).__name__}")
    return np.asarray(image.convert("RGB"), np.float64)


def _image(pixels: np.ndarray) -> Image.Image:
    """An 8-bit RGB image from a float array on the 0–255 scale (rounded and clipped)."""
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def _seed(seed: Any) -> int:
    return integer(seed, "degradation seed", minimum=0)


@DEGRADATIONS.register("noise")
def gaussian_noise(image: Image.Image, sigma: float = 10.0, seed: int = 0) -> Image.Image:
    """Additive Gaussian noise N(0, σ²), independent per pixel and channel (σ on the 0–255 scale)."""
    sigma = non_negative_float(sigma, "noise: sigma")
    pixels = _pixels(image)
    rng = np.random.default_rng(_seed(seed))
    return _image(pixels + rng.normal(0.0, sigma, pixels.shape))


@DEGRADATIONS.register("blur")
def blur(image: Image.Image, sigma: float = 2.0) -> Image.Image:
    """Gaussian blur with standard deviation ``sigma`` pixels (Pillow's ``GaussianBlur``; 0 = no change)."""
    sigma = non_negative_float(sigma, "blur: sigma")
    rgb = _image(_pixels(image))
    return rgb.filter(ImageFilter.GaussianBlur(sigma)) if sigma > 0 else rgb


@DEGRADATIONS.register("downsample")
def downsample(image: Image.Image, factor: float = 4) -> Image.Image:
    """Bicubic down by ``factor`` (Pillow's resize filters antialias), then bicubic back up to the same size."""
    factor = in_range(factor, "downsample: factor", 1.0)
    rgb = _image(_pixels(image))
    small = (max(1, round(rgb.width / factor)), max(1, round(rgb.height / factor)))
    return rgb.resize(small, Image.Resampling.BICUBIC).resize(rgb.size, Image.Resampling.BICUBIC)


def _tone(pixels: np.ndarray, gain: float, gamma: float) -> np.ndarray:
    """``255 · gain · (x / 255)^gamma`` on a 0–255 array."""
    return 255.0 * gain * (pixels / 255.0) ** gamma


@DEGRADATIONS.register("low_light")
def low_light(image: Image.Image, gain: float = 0.3, gamma: float = 1.8) -> Image.Image:
    """Darken: ``255 · gain · (x / 255)^gamma`` (gain in (0, 1], gamma > 0; gamma > 1 darkens the shadows most)."""
    gain = in_range(gain, "low_light: gain", 0.0, 1.0, low_open=True)
    gamma = positive_float(gamma, "low_light: gamma")
    return _image(_tone(_pixels(image), gain, gamma))


def _cast(cast: Sequence[float]) -> np.ndarray:
    """Validated (R, G, B) channel gains."""
    values = list(cast) if isinstance(cast, (list, tuple)) else []
    if len(values) != 3:
        raise ConfigError(f"night: cast must be three channel gains (R, G, B), got {cast!r}")
    return np.array([non_negative_float(v, "night: cast") for v in values])


@DEGRADATIONS.register("night")
def night(image: Image.Image, seed: int = 0, gain: float = 0.3, gamma: float = 1.8,
          cast: Sequence[float] = NIGHT_CAST, sigma: float = 8.0) -> Image.Image:
    """A night photo under street lights: darkened (``low_light`` gain 0.3, gamma 1.8), warm colour cast
    (R × 1.25, G × 1.0, B × 0.6: sodium light), then sensor noise σ = 8 (seeded), clipped to 8 bits."""
    gain = in_range(gain, "night: gain", 0.0, 1.0, low_open=True)
    gamma = positive_float(gamma, "night: gamma")
    sigma = non_negative_float(sigma, "night: sigma")
    pixels = _tone(_pixels(image), gain, gamma) * _cast(cast)
    rng = np.random.default_rng(_seed(seed))
    return _image(pixels + rng.normal(0.0, sigma, pixels.shape))


def _accepted(function: Degradation) -> list[str]:
    """The parameter names of a degradation (after the image)."""
    return list(inspect.signature(function).parameters)[1:]


def degrade(image: Image.Image, name: str, seed: int = 0, **params: Any) -> Image.Image:
    """Apply the degradation registered as ``name`` with ``params`` (``seed`` goes to random ones only)."""
    function = DEGRADATIONS.get(name)
    accepted = _accepted(function)
    unknown = [key for key in params if key not in accepted]
    if unknown:
        raise ConfigError(f"degradation {name!r} has no parameter {', '.join(unknown)}; "
                          f"valid: {', '.join(accepted) or 'none'}")
    if "seed" in accepted:
        params["seed"] = seed
    return function(image, **params)
