"""MoCo v2 (matchlens.train.selfsup / matchlens.train.moco): the queue is FIFO, the key encoder
follows θ_k ← m·θ_k + (1-m)·θ_q, InfoNCE equals a hand computation, and ``--selfsup moco``
trains, checkpoints a loadable encoder without the head, and resumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from matchlens.errors import ConfigError
from matchlens.models import load_backbone
from matchlens.train import TrainConfig
from matchlens.train.moco import train_selfsup
from matchlens.train.selfsup import MoCo, info_nce_loss, momentum_update
from tests.conftest import make_scene, run_cli


class TinyEncoder(nn.Module):
    """images (B, 3, h, w) → L2 descriptors (B, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.conv(x.float()).mean(dim=(2, 3)), dim=1)


def test_info_nce_equals_a_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    k = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]])
    tau = 0.2
    # query 0: positive 0.8; negatives 0, -1, 0.6. query 1: positive 0.8; negatives 0.8, -0.6, -0.28
    first = -math.log(math.exp(0.8 / tau) / (math.exp(0.8 / tau) + math.exp(0) + math.exp(-1 / tau) + math.exp(0.6 / tau)))
    second = -math.log(math.exp(0.8 / tau) / (math.exp(0.8 / tau) + math.exp(0.8 / tau) + math.exp(-0.6 / tau)
                                              + math.exp(-0.28 / tau)))
    assert float(info_nce_loss(q, k, queue, tau)) == pytest.approx((first + second) / 2, rel=1e-6)


def test_momentum_update_formula():
    torch.manual_seed(0)
    query, key = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in key.parameters()]
    momentum_update(key, query, 0.9)
    for old, new, q in zip(before, key.parameters(), query.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * q.detach(), atol=1e-7)


def test_queue_is_fifo_and_wraps():
    moco = MoCo(TinyEncoder(), width=4, queue_size=5, dim=3)
    keys = [torch.full((2, 3), float(i)) for i in range(1, 5)]  # batches of 2 keys: 1,1 2,2 3,3 4,4
    moco.enqueue(keys[0])
    moco.enqueue(keys[1])
    assert int(moco.pointer) == 4
    assert moco.queue[:4, 0].tolist() == [1, 1, 2, 2]
    moco.enqueue(keys[2])  # fills row 4, wraps to row 0
    assert moco.queue[:, 0].tolist() == [3, 1, 2, 2, 3] and int(moco.pointer) == 1
    moco.enqueue(keys[3])  # the oldest (rows 1, 2) go first
    assert moco.queue[:, 0].tolist() == [3, 4, 4, 2, 3] and int(moco.pointer) == 3


def test_step_updates_key_encoder_and_enqueues_its_keys():
    torch.manual_seed(1)
    moco = MoCo(TinyEncoder(), width=4, queue_size=8, dim=3, momentum=0.5, temperature=0.2)
    with torch.no_grad():
        for p in moco.encoder_q.parameters():
            p.add_(1.0)  # the query encoder moved away from its copy
    key_before = [p.clone() for p in moco.encoder_k.parameters()]
    views = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    queue_before = moco.queue.clone()
    loss = moco.step_loss(*views)
    for old, new, q in zip(key_before, moco.encoder_k.parameters(), moco.encoder_q.parameters()):
        assert torch.allclose(new, 0.5 * old + 0.5 * q.detach())
    with torch.no_grad():
        keys = nn.functional.normalize(moco.head_k(moco.encoder_k(views[1])), dim=1)
        q = nn.functional.normalize(moco.head_q(moco.encoder_q(views[0])), dim=1)
    assert torch.allclose(moco.queue[:2], keys, atol=1e-6) and torch.equal(moco.queue[2:], queue_before[2:])
    assert float(loss.detach()) == pytest.approx(float(info_nce_loss(q, keys, queue_before, 0.2)), rel=1e-5)
    loss.backward()
    assert moco.head_q[0].weight.grad is not None and moco.head_k[0].weight.grad is None
    assert all(p.grad is None for p in moco.encoder_k.parameters())


def test_moco_run_trains_checkpoints_and_resumes(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        make_scene(500 + i, (64, 48)).save(images / f"s{i}.jpg")
    config = dict(data=str(images), out=str(tmp_path / "run"), positives="selfsup", selfsup="moco", max_side=48,
                  crop=32, tuples=4, batch=2, epochs=1, threads=1, lw=False, queue=16, lr=0.05)
    result = train_selfsup(TrainConfig(**config))
    assert np.isfinite(result.history[1]["loss"])
    loaded = load_backbone("tf_efficientnet_lite0", result.last_checkpoint)  # the encoder, head dropped
    original = load_backbone("tf_efficientnet_lite0")
    changed = [k for k, v in loaded.state_dict().items() if not torch.equal(v, original.state_dict()[k])]
    assert changed, "MoCo's step did not move the encoder"
    again = train_selfsup(TrainConfig(**{**config, "epochs": 2}))  # resumes from last.pt
    assert again.resumed_from == (1, 0) and len(again.history) == 3


def test_bad_moco_options_are_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown self-supervised method 'byol'"):
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "o"), positives="selfsup", selfsup="byol")
    with pytest.raises(ConfigError, match="MoCo needs"):
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "o"), positives="selfsup", selfsup="moco", moco_momentum=1.0)
    code, _, err = run_cli(capsys, "train", str(tmp_path), "--out", str(tmp_path / "o"), "--selfsup", "moco")
    assert code != 0 and [line for line in err.splitlines() if line.strip()] == [
        "matchlens: error: --selfsup moco trains on two views of each image: add --positives selfsup"]
