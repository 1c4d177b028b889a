"""MoCo v2 (matchlens.train.selfsup / matchlens.train.moco): the queue is FIFO, the key encoder
follows θ_k ← m·θ_k + (1-m)·θ_q, InfoNCE equals a hand computation, and ``--selfsup moco``
trains, checkpoints a loadable encoder without the head, and resumes exactly (heads, key encoder
and queue kept in last.pt; an older last.pt without them resumes with a note)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from matchlens.errors import ConfigError
from matchlens.models import load_backbone
from matchlens.models.backbones import backbone_state_dict
from matchlens.models.weights import read_checkpoint
from matchlens.train import TrainConfig, TrainingInterrupted, TrainResult
from matchlens.train.checkpoint import LAST, SELFSUP
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


@pytest.fixture(scope="module")
def moco_run(tmp_path_factory) -> tuple[dict[str, Any], TrainResult]:
    """A MoCo run's options (four tiny scenes, two steps an epoch) and the result of its first epoch."""
    root = tmp_path_factory.mktemp("moco")
    images = root / "images"
    images.mkdir()
    for i in range(4):
        make_scene(500 + i, (64, 48)).save(images / f"s{i}.jpg")
    config: dict[str, Any] = dict(data=str(images), out=str(root / "first"), positives="selfsup", selfsup="moco",
                                  max_side=48, crop=32, tuples=4, batch=2, epochs=1, threads=1, lw=False, queue=16,
                                  lr=0.05)
    return config, train_selfsup(TrainConfig(**config))


def copy_run(result: TrainResult, out: Path, drop_moco: bool = False) -> Path:
    """A copy of ``result``'s last.pt in a new run folder ``out`` (without MoCo's state: as
    checkpoints were written before they kept it)."""
    out.mkdir()
    content = read_checkpoint(result.last_checkpoint)
    if drop_moco:
        del content["training"][SELFSUP]
    torch.save(content, out / LAST)
    return out


def assert_states_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, dict):
            assert_states_close(got[key], value)
        else:
            assert torch.allclose(got[key].double(), value.double(), rtol=0, atol=1e-6), key


def test_moco_run_trains_and_exports_the_encoder_only(moco_run):
    _, result = moco_run
    assert np.isfinite(result.history[1]["loss"])
    loaded = load_backbone("tf_efficientnet_lite0", result.last_checkpoint)  # the encoder, head dropped
    original = load_backbone("tf_efficientnet_lite0")
    changed = [k for k, v in loaded.state_dict().items() if not torch.equal(v, original.state_dict()[k])]
    assert changed, "MoCo's step did not move the encoder"
    best, last = read_checkpoint(result.best_checkpoint), read_checkpoint(result.last_checkpoint)
    backbone_keys = set(backbone_state_dict(original))  # the --weights layout: the backbone only
    assert "training" not in best and set(best["state_dict"]) == backbone_keys
    assert set(last["state_dict"]) == backbone_keys
    moco = last["training"][SELFSUP]["moco"]
    assert set(moco) == {"head_q", "head_k", "encoder_k", "queue", "pointer"}
    assert moco["queue"].shape == (16, 128) and int(moco["pointer"]) == 4  # 2 steps of 2 keys


def test_moco_resume_continues_exactly(moco_run, tmp_path):
    """1 epoch, resumed, interrupted after the first step of epoch 2 (Ctrl-C) and resumed again,
    ends with the weights, heads, key encoder, queue and losses of 2 epochs never interrupted."""
    config, first = moco_run
    out = copy_run(first, tmp_path / "resumed")
    resumed = {**config, "out": str(out), "epochs": 2}

    def interrupt(epoch: int, done: int) -> None:
        if (epoch, done) == (1, 2):
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train_selfsup(TrainConfig(**resumed), on_step=interrupt)
    again = train_selfsup(TrainConfig(**resumed))
    assert again.resumed_from == (1, 2) and len(again.history) == 3
    straight = train_selfsup(TrainConfig(**{**config, "out": str(tmp_path / "straight"), "epochs": 2}))
    want, got = (read_checkpoint(r.last_checkpoint)["training"] for r in (straight, again))
    assert_states_close(got["state"], want["state"])
    assert_states_close(got[SELFSUP], want[SELFSUP])
    assert int(got[SELFSUP]["moco"]["pointer"]) == int(want[SELFSUP]["moco"]["pointer"]) == 8
    # (epoch 2's logged loss averages only the steps after the last resume: not compared)
    assert [h["loss"] for h in again.history[:2]] == [h["loss"] for h in straight.history[:2]]


def test_moco_resumes_an_older_checkpoint_with_a_note(moco_run, tmp_path):
    config, first = moco_run
    out = copy_run(first, tmp_path / "old", drop_moco=True)
    notes: list[str] = []
    again = train_selfsup(TrainConfig(**{**config, "out": str(out), "epochs": 2}), log=notes.append)
    assert again.resumed_from == (1, 0) and len(again.history) == 3
    assert len([n for n in notes if "holds no MoCo state" in n and "\n" not in n]) == 1
    assert SELFSUP in read_checkpoint(again.last_checkpoint)["training"]  # written from now on


def test_moco_resume_with_another_queue_size_is_one_line(moco_run, tmp_path):
    config, first = moco_run
    out = copy_run(first, tmp_path / "queue")
    with pytest.raises(ConfigError, match="resume with --queue 16"):
        train_selfsup(TrainConfig(**{**config, "out": str(out), "epochs": 2, "queue": 8}))


def test_bad_moco_options_are_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown self-supervised method 'byol'"):
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "o"), positives="selfsup", selfsup="byol")
    with pytest.raises(ConfigError, match="MoCo needs"):
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "o"), positives="selfsup", selfsup="moco", moco_momentum=1.0)
    code, _, err = run_cli(capsys, "train", str(tmp_path), "--out", str(tmp_path / "o"), "--selfsup", "moco")
    assert code != 0 and [line for line in err.splitlines() if line.strip()] == [
        "matchlens: error: --selfsup moco trains on two views of each image: add --positives selfsup"]
