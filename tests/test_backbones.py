"""Backbones: the embedded EfficientNet, torchvision/timm weights files, cirtorch checkpoints."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import collections
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from skimage import data as skdata

from matchlens.errors import ConfigError, WeightsError
from matchlens.models import Backbone, backbone_names, load_backbone
from matchlens.models.backbones import EMBEDDED_NAME

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def embedded() -> Backbone:
    return load_backbone(EMBEDDED_NAME)


@pytest.fixture(scope="module")
def resnet50() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval()


@pytest.fixture(scope="module")
def vgg16() -> torch.nn.Module:
    torch.manual_seed(1)
    return torchvision.models.vgg16(weights=None).eval()


@pytest.fixture(scope="module")
def image64() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))


def resnet_trunk(model: torch.nn.Module) -> torch.nn.Module:
    """Reference truncation written independently of the library: conv1 ... layer4."""
    return torch.nn.Sequential(*list(model.children())[:-2])


def vgg_trunk(model: torch.nn.Module) -> torch.nn.Module:
    return model.features[:-1]


def features_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # VGG16's classifier is 0.5 GB; feature extraction does not need it.
    return {k: v for k, v in state.items() if not k.startswith("classifier.")}


def assert_one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


@torch.no_grad()
def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


# --- embedded ---------------------------------------------------------------------------------


def test_embedded_classifies_chelsea_as_a_cat(embedded: Backbone) -> None:
    image = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)[None].float() / 255.0
    image = F.interpolate(image, size=(224, 224), mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(embedded.mean).view(1, 3, 1, 1)
    std = torch.tensor(embedded.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = embedded.classify((image - mean) / std)
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) in IMAGENET_CATS


def test_embedded_feature_map_shape_and_metadata(embedded: Backbone) -> None:
    out = run(embedded, torch.randn(1, 3, 240, 320))
    assert out.shape == (1, 1280, 8, 10)  # stride 32, 'same' padding rounds up
    assert embedded.out_channels == 1280
    assert embedded.mean == embedded.std == (0.5, 0.5, 0.5)
    assert embedded.name == EMBEDDED_NAME
    assert embedded.checkpoint_meta == {}
    assert not embedded.training
    assert next(embedded.parameters()).device.type == "cpu"


def test_embedded_weights_id_is_stable_hex(embedded: Backbone) -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", embedded.weights_id)
    assert load_backbone(EMBEDDED_NAME).weights_id == embedded.weights_id


def test_embedded_accepts_a_timm_named_copy_of_its_weights(
    embedded: Backbone, tmp_path: Path
) -> None:
    # Re-saving the mapped weights under timm's own names must give the same network.
    state = embedded.body.model.state_dict()
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    reloaded = load_backbone(EMBEDDED_NAME, path)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(run(reloaded, x), run(embedded, x))
    assert reloaded.weights_id != embedded.weights_id
    assert reloaded.has_classifier


def test_non_embedded_backbones_have_no_classifier(resnet50: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(resnet50.state_dict(), path)
    with pytest.raises(NotImplementedError):
        load_backbone("resnet50", path).classify(torch.zeros(1, 3, 64, 64))


# --- torchvision state dicts ------------------------------------------------------------------


def test_resnet50_plain_state_dict_matches_source(
    resnet50: torch.nn.Module, image64: torch.Tensor, tmp_path: Path
) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(resnet50.state_dict(), path)
    backbone = load_backbone("resnet50", path)
    expected = run(resnet_trunk(resnet50), image64)
    assert expected.shape == (1, 2048, 2, 2)
    torch.testing.assert_close(run(backbone, image64), expected, atol=1e-5, rtol=0)
    assert backbone.out_channels == 2048
    assert backbone.mean == (0.485, 0.456, 0.406) and backbone.std == (0.229, 0.224, 0.225)


def test_resnet50_wrapped_and_prefixed_state_dict(
    resnet50: torch.nn.Module, image64: torch.Tensor, tmp_path: Path
) -> None:
    state = {f"module.{k}": v for k, v in resnet50.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "wrapped.pth.tar"
    torch.save({"epoch": 3, "arch": "resnet50", "state_dict": state}, path)
    backbone = load_backbone("resnet50", path)
    torch.testing.assert_close(
        run(backbone, image64), run(resnet_trunk(resnet50), image64), atol=1e-5, rtol=0
    )


def test_vgg16_state_dict_matches_source(
    vgg16: torch.nn.Module, image64: torch.Tensor, tmp_path: Path
) -> None:
    path = tmp_path / "vgg16.pth"
    torch.save(features_only(vgg16.state_dict()), path)
    backbone = load_backbone("vgg16", path)
    expected = run(vgg_trunk(vgg16), image64)
    assert expected.shape == (1, 512, 4, 4)  # last max-pool dropped: stride 16
    torch.testing.assert_close(run(backbone, image64), expected, atol=1e-5, rtol=0)


def test_vgg16_wrapped_with_module_prefix(
    vgg16: torch.nn.Module, image64: torch.Tensor, tmp_path: Path
) -> None:
    state = {f"module.{k}": v for k, v in features_only(vgg16.state_dict()).items()}
    path = tmp_path / "vgg16_wrapped.pth"
    torch.save({"model_state_dict": state, "optimizer": {"lr": 0.1}}, path)
    torch.testing.assert_close(
        run(load_backbone("vgg16", path), image64),
        run(vgg_trunk(vgg16), image64),
        atol=1e-5,
        rtol=0,
    )


def test_resnet101_loads_and_weights_id_hashes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resnet101.pth"
    torch.save(torchvision.models.resnet101(weights=None).state_dict(), path)
    backbone = load_backbone("resnet101", path)
    assert run(backbone, torch.randn(1, 3, 64, 64)).shape == (1, 2048, 2, 2)
    assert backbone.weights_id == hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# --- timm ------------------------------------------------------------------------------------


def test_timm_architecture_by_prefixed_name(image64: torch.Tensor, tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path / "timm_resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbone = load_backbone("timm:resnet18", path)
    assert backbone.name == "timm:resnet18"
    assert backbone.out_channels == 512
    assert backbone.mean == tuple(source.pretrained_cfg["mean"])
    with torch.no_grad():
        expected = source.forward_features(image64)
    torch.testing.assert_close(run(backbone, image64), expected, atol=1e-5, rtol=0)


def test_backbone_names_lists_registry() -> None:
    names = backbone_names()
    assert {EMBEDDED_NAME, "resnet50", "resnet101", "vgg16"} <= set(names)
    assert names == sorted(names)


# --- cirtorch ---------------------------------------------------------------------------------


def cirtorch_checkpoint(
    features: torch.nn.Sequential, arch: str, p: float, whiten: torch.nn.Linear | None
) -> dict[str, object]:
    """Build a checkpoint exactly as cirtorch's ImageRetrievalNet + torch.save would."""
    state = collections.OrderedDict(
        (f"features.{k}", v) for k, v in features.state_dict().items()
    )
    state["pool.p"] = torch.ones(1) * p
    if whiten is not None:
        state["whiten.weight"] = whiten.weight.detach().clone()
        state["whiten.bias"] = whiten.bias.detach().clone()
    dim = 2048 if arch.startswith("resnet") else 512
    meta = {
        "architecture": arch,
        "local_whitening": False,
        "pooling": "gem",
        "regional": False,
        "whitening": whiten is not None,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "outputdim": dim,
    }
    return {"epoch": 10, "meta": meta, "state_dict": state, "min_loss": 0.5}


def test_cirtorch_resnet50_with_whitening(
    resnet50: torch.nn.Module, image64: torch.Tensor, tmp_path: Path
) -> None:
    trunk = resnet_trunk(resnet50)
    whiten = torch.nn.Linear(2048, 2048)
    path = tmp_path / "retrieval-SfM-120k-resnet50-gem-w.pth"
    torch.save(cirtorch_checkpoint(trunk, "resnet50", 3.2, whiten), path)
    backbone = load_backbone("resnet50", path)
    torch.testing.assert_close(run(backbone, image64), run(trunk, image64), atol=1e-5, rtol=0)
    meta = backbone.checkpoint_meta
    assert meta["pooling"] == "gem"
    assert meta["gem_p"] == pytest.approx(3.2)
    assert meta["architecture"] == "resnet50" and meta["outputdim"] == 2048
    assert meta["whiten"]["weight"].shape == (2048, 2048)
    assert meta["whiten"]["bias"].shape == (2048,)
    assert isinstance(meta["whiten"]["weight"], np.ndarray)
    np.testing.assert_allclose(meta["whiten"]["bias"], whiten.bias.detach().numpy())


def test_cirtorch_vgg16_without_whitening(
    vgg16: torch.nn.Module, image64: torch.Tensor, tmp_path: Path
) -> None:
    trunk = vgg_trunk(vgg16)
    path = tmp_path / "vgg16-gem.pth"
    torch.save(cirtorch_checkpoint(trunk, "vgg16", 2.5, None), path)
    backbone = load_backbone("vgg16", path)
    torch.testing.assert_close(run(backbone, image64), run(trunk, image64), atol=1e-5, rtol=0)
    assert backbone.checkpoint_meta["gem_p"] == pytest.approx(2.5)
    assert backbone.checkpoint_meta["whiten"] is None


def test_cirtorch_learned_whitening_numpy_meta_is_read(
    resnet50: torch.nn.Module, tmp_path: Path
) -> None:
    # The authors' published networks keep learned whitening as numpy arrays in meta["Lw"].
    checkpoint = cirtorch_checkpoint(resnet_trunk(resnet50), "resnet50", 3.0, None)
    lw = {"m": np.zeros((2048, 1)), "P": np.eye(2048, dtype=np.float32)[:8]}
    checkpoint["meta"]["Lw"] = {"retrieval-SfM-120k": {"ss": lw, "ms": lw}}
    path = tmp_path / "with_lw.pth"
    torch.save(checkpoint, path)
    learned = load_backbone("resnet50", path).checkpoint_meta["learned_whitening"]
    assert learned["retrieval-SfM-120k"]["ss"]["P"].shape == (8, 2048)


def test_cirtorch_architecture_disagreeing_with_name(
    resnet50: torch.nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "r50-gem.pth"
    torch.save(cirtorch_checkpoint(resnet_trunk(resnet50), "resnet50", 3.0, None), path)
    with pytest.raises(WeightsError) as exc:
        load_backbone("resnet101", path)
    message = assert_one_line(exc)
    assert "resnet50" in message and "resnet101" in message


# --- errors -----------------------------------------------------------------------------------


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as exc:
        load_backbone("resnet50", tmp_path / "nope.pth")
    assert "nope.pth" in assert_one_line(exc)


def test_text_file_as_weights(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(WeightsError) as exc:
        load_backbone("resnet50", path)
    assert "notes.pth" in assert_one_line(exc)


def test_corrupt_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(path))
    path.write_bytes(path.read_bytes()[:100])  # truncated download
    with pytest.raises(WeightsError) as exc:
        load_backbone("resnet18", path)
    assert "broken.safetensors" in assert_one_line(exc)


def test_pickled_objects_are_refused_not_executed(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pth"
    torch.save(torchvision.models.resnet18(weights=None), path)  # a pickled nn.Module
    with pytest.raises(WeightsError) as exc:
        load_backbone("resnet18", path)
    assert "weights_only" in assert_one_line(exc)


def test_wrong_architecture_names_the_mismatched_tensor(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError) as exc:
        load_backbone("resnet50", path)
    message = assert_one_line(exc)
    assert "'layer1.0.conv1.weight'" in message and "(64, 64, 3, 3)" in message


def test_bigger_sibling_architecture_is_rejected(resnet50: torch.nn.Module, tmp_path: Path) -> None:
    # resnet101 holds every resnet50 tensor with the same shape; the extras must not be ignored.
    path = tmp_path / "resnet101.pth"
    torch.save(torchvision.models.resnet101(weights=None).state_dict(), path)
    with pytest.raises(WeightsError) as exc:
        load_backbone("resnet50", path)
    assert "layer3.6" in assert_one_line(exc)


def test_missing_tensor_is_named(resnet50: torch.nn.Module, tmp_path: Path) -> None:
    state = dict(resnet50.state_dict())
    del state["layer4.2.bn3.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as exc:
        load_backbone("resnet50", path)
    assert "'layer4.2.bn3.weight'" in assert_one_line(exc)


def test_non_embedded_backbone_without_weights() -> None:
    with pytest.raises(WeightsError) as exc:
        load_backbone("resnet50")
    assert assert_one_line(exc) == (
        "backbone 'resnet50' needs --weights FILE (matchlens never downloads weights)"
    )


def test_unknown_backbone_name() -> None:
    with pytest.raises(ConfigError) as exc:
        load_backbone("resnet5O")
    message = assert_one_line(exc)
    assert "'resnet5O'" in message and "resnet50" in message and "timm:" in message


def test_unknown_timm_architecture() -> None:
    with pytest.raises(ConfigError) as exc:
        load_backbone("timm:not_a_net", None)
    assert "not_a_net" in assert_one_line(exc)
