"""Self-supervised checkpoint layouts (matchlens.models.checkpoints): a randomly initialised
torchvision ResNet-18 (ResNet-50 for the MoCo case, the layout P4 uses) saved the way MoCo,
SimCLR, BYOL, DINO and ``backbone.`` wrappers save it must load into the backbone with every
tensor equal to the original's; wrong layouts and architectures fail in one line."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from matchlens.errors import ConfigError, WeightsError
from matchlens.models import load_backbone
from matchlens.models.backbones import backbone_state_dict
from matchlens.models.checkpoints import convert_checkpoint, detect_layout, layout_names
from tests.conftest import run_cli


def random_resnet(arch: str) -> nn.Module:
    """A randomly initialised torchvision ResNet with non-trivial BatchNorm statistics, so a lost
    buffer shows (no self-supervised weights install offline)."""
    torch.manual_seed(3)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return random_resnet("resnet18")


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return random_resnet("resnet50")


def trunk_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The original tensors a backbone must hold: every conv/BN tensor, no classifier."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def mlp(dim_in: int, dim_out: int = 128) -> dict[str, torch.Tensor]:
    head = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(), nn.Linear(dim_in, dim_out))
    return head.state_dict()


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v.clone() for k, v in state.items()}


def assert_same(loaded, model: nn.Module, name: str = "resnet18") -> None:
    got = backbone_state_dict(loaded)
    want = trunk_state(model)
    assert loaded.name == name
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def layouts(model: nn.Module) -> dict[str, dict]:
    """Each learner's file content, written as its training code writes it."""
    full, trunk = model.state_dict(), trunk_state(model)
    moco = {**prefixed(trunk, "module.encoder_q."), **prefixed(mlp(512), "module.encoder_q.fc."),
            **prefixed(trunk, "module.encoder_k."), **prefixed(mlp(512), "module.encoder_k.fc."),
            "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    dino_head = prefixed(mlp(512, 64), "head.mlp.")
    other = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in trunk.items()}
    sequential = {f"{i}.{rest}": v for k, v in trunk.items()
                  for i, rest in [(("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
                                   .index(k.split(".", 1)[0]), k.split(".", 1)[1])]}
    return {
        "moco": {"epoch": 200, "arch": "resnet18", "state_dict": moco, "optimizer": {}},
        "simclr": {**prefixed(trunk, "encoder."), **prefixed(mlp(512, 64), "projector.")},
        "byol-sthalles": {"online_network_state_dict": {**prefixed(sequential, "encoder."),
                                                        **prefixed(mlp(512), "projetion.net.")},
                          "target_network_state_dict": prefixed(sequential, "encoder.")},
        "byol-lucidrains": {**prefixed(full, "net."), **prefixed(mlp(512), "online_encoder.projector.net.")},
        "dino": {"teacher": {**prefixed(trunk, "backbone."), **dino_head},
                 "student": {**prefixed(other, "module.backbone."), **prefixed(dino_head, "module.")},
                 "epoch": 100},
        "backbone": {"state_dict": {**prefixed(trunk, "backbone."), **prefixed(mlp(512), "backbone.fc.")}},
        "model-wrapper": {"model": prefixed(full, "model.")},
        "state_dict-wrapper": {"state_dict": dict(full)},
    }


DETECTED = {"moco": "moco", "simclr": "simclr", "byol-sthalles": "byol", "byol-lucidrains": "byol",
            "dino": "dino", "backbone": "backbone", "model-wrapper": None, "state_dict-wrapper": None}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("case", sorted(DETECTED))
def test_each_layout_loads_the_original_tensors(request, tmp_path, case, arch):
    model = request.getfixturevalue(arch)
    content = layouts(model)[case]
    assert detect_layout(content) == DETECTED[case]
    path = tmp_path / f"{case}.pth"
    torch.save(content, path)
    assert_same(load_backbone(arch, path), model, arch)


def test_moco_resnet50_drops_the_mlp_head_and_the_key_encoder(tmp_path):
    torch.manual_seed(4)
    model = torchvision.models.resnet50(weights=None).eval()
    trunk = trunk_state(model)
    key = {k: torch.zeros_like(v) for k, v in trunk.items()}
    torch.save({"state_dict": {**prefixed(trunk, "module.encoder_q."), **prefixed(mlp(2048), "module.encoder_q.fc."),
                               **prefixed(key, "module.encoder_k."), "module.queue": torch.randn(128, 16)}},
               tmp_path / "moco_v2_800ep.pth.tar")
    loaded = load_backbone("resnet50", tmp_path / "moco_v2_800ep.pth.tar")
    assert_same(loaded, model, "resnet50")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), nn.Sequential(*list(model.children())[:-2])(x), atol=1e-5)


def test_named_layout_picks_dino_student(resnet18, tmp_path):
    content = layouts(resnet18)["dino"]
    path = tmp_path / "checkpoint.pth"
    torch.save(content, path)
    student = load_backbone("resnet18", f"{path}#dino-student")
    got = backbone_state_dict(student)
    want = {k[len("module.backbone."):]: v for k, v in content["student"].items() if k.startswith("module.backbone.")}
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert not torch.equal(got["conv1.weight"], resnet18.state_dict()["conv1.weight"])
    assert_same(load_backbone("resnet18", f"{path}#dino"), resnet18)  # the teacher, as detected


def test_timm_resnet_takes_the_same_layouts(resnet18, tmp_path):
    path = tmp_path / "moco.pth"
    torch.save(layouts(resnet18)["moco"], path)
    loaded = load_backbone("timm:resnet18", path)
    state = loaded.body.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trunk_state(resnet18).items())


def test_errors_are_one_line(resnet18, tmp_path):
    path = tmp_path / "simclr.pth"
    torch.save(layouts(resnet18)["simclr"], path)
    with pytest.raises(ConfigError, match="unknown checkpoint layout 'swav'; choose one of: backbone, byol"):
        load_backbone("resnet18", f"{path}#swav")
    with pytest.raises(WeightsError, match=r"is not a moco checkpoint: no tensor under module.encoder_q."):
        load_backbone("resnet18", f"{path}#moco")
    with pytest.raises(WeightsError, match="is not a dino checkpoint.*in its 'teacher' entry"):
        load_backbone("resnet18", f"{path}#dino")
    with pytest.raises(WeightsError, match=r"tensor 'layer1.0.conv1.weight' has shape \(64, 64, 3, 3\) but resnet50 expects"):
        load_backbone("resnet50", path)  # a ResNet-18 encoder named as ResNet-50
    missing = {k: v for k, v in layouts(resnet18)["simclr"].items() if "layer4.1.bn2" not in k}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="lacks tensor 'layer4.1.bn2.weight'"):
        load_backbone("resnet18", tmp_path / "missing.pth")
    only_head = {"encoder.fc.weight": torch.zeros(3, 3)}
    with pytest.raises(WeightsError, match="holds only head tensors"):
        convert_checkpoint(only_head, Path("x.pth"))


def test_cli_reports_a_wrong_layout_in_one_line(resnet18, tmp_path, capsys):
    path = tmp_path / "byol.pth"
    torch.save(layouts(resnet18)["byol-lucidrains"], path)
    code, _, err = run_cli(capsys, "index", str(tmp_path), "-i", str(tmp_path / "idx"), "--backbone", "resnet18",
                           "--weights", f"{path}#moco", "-q")
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("matchlens: error:") and "not a moco checkpoint" in lines[0]
    assert "dino-student" in layout_names()
