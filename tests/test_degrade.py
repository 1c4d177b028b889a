"""Image degradations: seeded determinism, the noise level, night's darkness and colour cast, the ×4
downsampling's lost detail, and the registry's one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from matchlens.errors import ConfigError
from matchlens.io.degrade import DEGRADATIONS, blur, degrade, downsample, gaussian_noise, low_light, night
from tests.conftest import make_scene


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, np.float64)


def grey(level: int = 128, size: tuple[int, int] = (200, 150)) -> Image.Image:
    return Image.new("RGB", size, (level, level, level))


def high_frequency_energy(image: Image.Image) -> float:
    """Mean squared horizontal + vertical difference of the grey levels (fine detail)."""
    g = pixels(image.convert("L"))
    return float(np.mean(np.diff(g, axis=0) ** 2) + np.mean(np.diff(g, axis=1) ** 2))


@pytest.mark.parametrize("name", ["noise", "night"])
def test_seeded_degradations_are_deterministic(name):
    scene = make_scene(0)
    first, again, other = (pixels(degrade(scene, name, seed=s)) for s in (3, 3, 4))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("name", DEGRADATIONS.names())
def test_every_degradation_keeps_size_and_mode_and_leaves_the_input(name):
    scene = make_scene(1)
    before = pixels(scene).copy()
    out = degrade(scene, name)
    assert out.size == scene.size and out.mode == "RGB"
    assert np.array_equal(pixels(scene), before)


@pytest.mark.parametrize("sigma", [4.0, 8.0, 20.0])
def test_measured_noise_matches_sigma(sigma):
    noisy = pixels(gaussian_noise(grey(), sigma, seed=0)) - 128
    assert noisy.std() == pytest.approx(sigma, rel=0.03)
    assert abs(noisy.mean()) < 0.2


def test_night_is_darker_and_warmer():
    scene = make_scene(2)
    clean, dark = pixels(scene), pixels(night(scene, seed=0))
    assert dark.mean() < 0.5 * clean.mean()

    def red_blue(a: np.ndarray) -> float:
        return float(a[..., 0].mean() / a[..., 2].mean())

    assert red_blue(dark) > 1.5 * red_blue(clean)


def test_low_light_formula():
    out = pixels(low_light(grey(200), gain=0.5, gamma=2.0))
    assert np.all(out == round(255 * 0.5 * (200 / 255) ** 2))


def test_downsample_keeps_size_and_loses_high_frequencies():
    scene = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    small = downsample(scene, factor=4)
    assert small.size == scene.size
    assert high_frequency_energy(small) < 0.2 * high_frequency_energy(scene)
    # and blur does the same kind of thing
    assert high_frequency_energy(blur(scene, 2.0)) < 0.2 * high_frequency_energy(scene)


def test_non_rgb_input_is_converted():
    assert degrade(Image.new("L", (32, 16), 100), "blur").mode == "RGB"


@pytest.mark.parametrize("call, words", [
    (lambda im: degrade(im, "fog"), "unknown degradation 'fog'; choose one of: blur, downsample"),
    (lambda im: degrade(im, "blur", radius=2), "degradation 'blur' has no parameter radius; valid: sigma"),
    (lambda im: degrade(im, "noise", sigma=-1), "noise: sigma must be"),
    (lambda im: degrade(im, "night", seed=-1), "degradation seed must be"),
    (lambda im: degrade(im, "night", cast=(1, 2)), "night: cast must be three"),
    (lambda im: degrade(im, "low_light", gain=0), "low_light: gain must be"),
    (lambda im: degrade(im, "downsample", factor=0.5), "downsample: factor must be"),
])
def test_bad_names_and_parameters_are_one_line_config_errors(call, words):
    with pytest.raises(ConfigError) as error:
        call(grey(10, (8, 8)))
    assert words in str(error.value) and "\n" not in str(error.value)
