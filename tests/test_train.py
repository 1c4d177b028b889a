"""`matchlens train`: a tiny network learns a constructed task; the embedded backbone fine-tunes
for a few steps at 64 px on generated scenes, resumes after an interruption, and its checkpoint
loads with --weights (spec, learned GeM p and Lw included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from matchlens.errors import ConfigError
from matchlens.models import Backbone
from matchlens.train import TrainConfig, TrainingInterrupted, train, tuple_loss
from matchlens.train.model import ImageStore, RetrievalNet, describe, reestimate_batchnorm
from tests.conftest import make_scene, run_cli

GROUPS, VIEWS, DISTRACTORS = 4, 3, 4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one torch/BLAS thread is fastest, and far faster on a shared, busy CPU."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


def _views(seed: int) -> list[Image.Image]:
    """Three overlapping crops of one scene: 'photos' of one object."""
    scene = make_scene(seed, (160, 120))
    return [scene.crop((8 * v, 6 * v, 136 + 8 * v, 102 + 6 * v)) for v in range(VIEWS)]


@pytest.fixture(scope="module")
def gt_dataset(tmp_path_factory) -> Path:
    """A gt.json dataset: GROUPS objects x VIEWS photos (every photo a query) + distractors."""
    root = tmp_path_factory.mktemp("trainset")
    (root / "images").mkdir()
    names, queries = [], []
    for g in range(GROUPS):
        group = [f"g{g}_v{v}.jpg" for v in range(VIEWS)]
        for name, image in zip(group, _views(200 + g)):
            image.save(root / "images" / name, quality=92)
        names += group
        queries += [{"image": n, "positives": [m for m in group if m != n], "junk": [], "group": f"obj{g}"}
                    for n in group]
    for d in range(DISTRACTORS):
        make_scene(300 + d, (136, 102)).save(root / "images" / f"d{d}.jpg", quality=92)
        names.append(f"d{d}.jpg")
    (root / "gt.json").write_text(json.dumps({"name": "tiny", "images": names, "queries": queries}))
    return root


def _config(data: Path, out: Path, **changes) -> TrainConfig:
    values = dict(data=str(data), out=str(out), max_side=64, tuples=4, batch=2, epochs=1, remine=2,
                  negatives=2, threads=1, val_groups=["obj3"], holdout_groups=["obj3"], lr=1e-2)
    values.update(changes)
    return TrainConfig(**values)


def _tiny_backbone() -> Backbone:
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
    return Backbone("tiny", body, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "tiny")


def test_loss_decreases_on_a_constructed_task():
    """Class = which colour channel carries a bright square; the tiny net must pull same-class
    images together and push the others beyond the margin."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def image(cls: int) -> torch.Tensor:
        x = rng.uniform(0, 0.3, size=(3, 24, 24)).astype(np.float32)
        r, c = rng.integers(0, 12, size=2)
        x[cls, r:r + 12, c:c + 12] = 1.0
        return torch.from_numpy(x)

    model = RetrievalNet(_tiny_backbone(), p=3.0, learn_p=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tuples = [torch.stack([image(c), image(c), image((c + 1) % 3), image((c + 2) % 3)]) for c in (0, 1, 2) * 4]

    def epoch(step: bool) -> float:
        total = 0.0
        for batch in tuples:
            loss = tuple_loss("contrastive", model(batch))
            if step:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            total += float(loss.detach())
        return total / len(tuples)

    before = epoch(step=False)
    for _ in range(15):
        epoch(step=True)
    assert epoch(step=False) < 0.5 * before
    assert model.gem_p != pytest.approx(3.0)  # p is learned


def test_train_validates_checkpoints_and_loads_with_weights(gt_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    result = train(_config(gt_dataset, out))
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert all(0.0 <= h["val_map"] <= 1.0 for h in result.history)
    assert result.history[1]["loss"] is not None and np.isfinite(result.history[1]["loss"])
    assert result.best_map == max(h["val_map"] for h in result.history)
    assert result.curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trainset = json.loads((out / "trainset.json").read_text())
    assert not any("g3_" in Path(p).name for p in trainset["images"])  # held-out images never seen

    # The checkpoint loads with --weights; the index adopts its spec (64 px, GeM with learned p).
    code, stdout, stderr = run_cli(capsys, "index", gt_dataset / "images", "-i", tmp_path / "idx",
                                   "--weights", result.best_checkpoint, "-q")
    assert code == 0, stderr
    from matchlens.pipeline import open_index
    from matchlens.models.weights import read_matchlens_meta

    index = open_index(tmp_path / "idx")
    meta = read_matchlens_meta(result.best_checkpoint)
    assert index.spec.max_side == 64 and index.spec.pooling == "gem"
    assert index.spec.pooling_params["p"] == pytest.approx(meta["gem_p"], abs=1e-5)
    # ... and describes images exactly as the trained model does.
    from matchlens.models import load_backbone

    model = RetrievalNet(load_backbone("tf_efficientnet_lite0", result.best_checkpoint), p=meta["gem_p"])
    paths = [e.path for e in sorted(index.entries, key=lambda e: e.row)]
    np.testing.assert_allclose(describe(model, ImageStore(64), paths), index.vectors(), atol=2e-4)

    # Lw stored in the checkpoint is applied by the index when the spec names it.
    code, _, stderr = run_cli(capsys, "index", gt_dataset / "images", "-i", tmp_path / "idx-lw",
                              "--weights", result.best_checkpoint, "--whitening", "lw",
                              "--whitening-params", "dim=32", "-q")
    assert code == 0, stderr
    lw_index = open_index(tmp_path / "idx-lw")
    assert lw_index.dim == 32 and lw_index.manifest["whitening_state"] == "fitted"
    # The query's group (its own stored copy and its two other views) ranks first. Lw defaults to
    # cirtorch's (no shrinkage): with fewer pairs than dimensions it maps a group's views to
    # nearly one point, so their order among themselves is not defined.
    hits = lw_index.search(gt_dataset / "images" / "g0_v1.jpg", k=3)
    assert sorted(Path(h.path).name for h in hits) == ["g0_v0.jpg", "g0_v1.jpg", "g0_v2.jpg"]


def test_interrupted_run_resumes_from_saved_step(gt_dataset, tmp_path):
    def stop_after_first_step(epoch: int, step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    interrupted = tmp_path / "interrupted"
    config = _config(gt_dataset, interrupted, lw=False)
    with pytest.raises(TrainingInterrupted, match="resume"):
        train(config, on_step=stop_after_first_step)
    saved = torch.load(interrupted / "last.pt", weights_only=True)["training"]
    assert (saved["epoch"], saved["step"]) == (0, 2)
    resumed = train(config)
    assert resumed.resumed_from == (0, 2)
    assert [h["epoch"] for h in resumed.history] == [0, 1]

    straight = train(_config(gt_dataset, tmp_path / "straight", lw=False))
    a = torch.load(interrupted / "last.pt", weights_only=True)["training"]["state"]
    b = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["training"]["state"]
    for key in b:  # the resumed run ends where an uninterrupted one does
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    assert resumed.history[1]["val_map"] == pytest.approx(straight.history[1]["val_map"], abs=1e-4)


def test_resume_refuses_a_different_run_and_cli_errors_are_one_line(gt_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    train(_config(gt_dataset, out, lw=False, tuples=2))
    with pytest.raises(ConfigError, match="--restart"):
        train(_config(gt_dataset, out, lw=False, tuples=2, loss="triplet"))
    code, _, stderr = run_cli(capsys, "train", gt_dataset, "--out", tmp_path / "x", "--positives", "magic")
    assert code == 2 and "unknown positives source 'magic'" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cli(capsys, "index", gt_dataset / "images", "-i", tmp_path / "i",
                              "--whitening", "lw", "-q")
    assert code == 2 and "needs --weights" in stderr


def test_cli_trains_with_triplet_loss_and_reestimated_batchnorm(gt_dataset, tmp_path, capsys):
    code, stdout, stderr = run_cli(capsys, "train", gt_dataset, "--out", tmp_path / "run", "--max-side", "64",
                                   "--tuples", "2", "--batch", "2", "--epochs", "1", "--negatives", "2",
                                   "--loss", "triplet", "--bn", "reestimate", "--val-groups", "obj3", "--no-lw",
                                   "--holdout-groups", "obj3", "--threads", "1", "-q")
    assert code == 0, stderr
    assert "best checkpoint:" in stdout and (tmp_path / "run" / "best.pt").is_file()
    assert "epoch 1: loss" in stderr


def test_batchnorm_reestimation_changes_running_statistics(gt_dataset):
    from matchlens.models import load_backbone

    model = RetrievalNet(load_backbone("tf_efficientnet_lite0"))
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    paths = sorted(str(p) for p in (gt_dataset / "images").glob("*.jpg"))
    reestimate_batchnorm(model, ImageStore(64), paths)
    assert not torch.allclose(before, bn.running_mean) and not model.training


def test_label_free_sources(gt_dataset, tmp_path):
    """Spatial verification keeps true pairs only; manifold mining pairs images of one object."""
    from matchlens.train.positives import from_manifold, from_verification

    images = [str(gt_dataset / "images" / f"g{g}_v{v}.jpg") for g in range(GROUPS) for v in range(VIEWS)]
    images += [str(gt_dataset / "images" / f"d{d}.jpg") for d in range(DISTRACTORS)]
    group_of = [i // VIEWS if i < GROUPS * VIEWS else -1 - i for i in range(len(images))]
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(GROUPS + DISTRACTORS, 32))
    vectors = np.stack([centres[g if g >= 0 else GROUPS + (-1 - g) - GROUPS * VIEWS] + 0.1 * rng.normal(size=32)
                        for g in group_of])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    verified = from_verification(images, vectors, k=4, min_inliers=12, max_side=160)
    pairs = verified.pairs()
    assert pairs and all(group_of[q] == group_of[p] for q, p in pairs)
    manifold = from_manifold(images, vectors, anchors=6, k=3, candidates=2, protect=3)
    assert all(group_of[q] == group_of[p] for q, p in manifold.pairs())


def test_self_supervised_option_trains_on_an_unlabeled_folder(gt_dataset, tmp_path):
    result = train(TrainConfig(data=str(gt_dataset / "images"), out=str(tmp_path / "ssl"), positives="selfsup",
                               max_side=64, crop=48, tuples=8, batch=4, epochs=1, threads=1, lw=False))
    assert np.isfinite(result.history[1]["loss"]) and result.best_checkpoint.is_file()
