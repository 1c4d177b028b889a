"""Learned R-MAC regions as a pipeline configuration: ``train-regions`` on an index, the
``learned-rmac`` pooling in ``index``/``search``, resume, and the refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import paste_patch, run_cli, texture_image
from matchlens.errors import ConfigError
from matchlens.pooling.proposals import LearnedRMAC, load_head, save_head
from matchlens.train.learned_regions import RegionsHeadConfig, train_head

SIDE = 128


@pytest.fixture(scope="module")
def views_dir(tmp_path_factory):
    """Three textured objects, each pasted into two different backgrounds at another place and
    size (6 images that verify in pairs), and two unrelated images."""
    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("views")
    for obj in range(3):
        patch = texture_image(rng, 120, 150)
        first = paste_patch(texture_image(rng, 240, 320), patch, 20 + 40 * obj, 50)
        bigger = np.asarray(Image.fromarray(patch).resize((180, 144), Image.BICUBIC))
        second = paste_patch(texture_image(rng, 260, 360), bigger, 150 - 30 * obj, 90)
        Image.fromarray(first).save(folder / f"obj{obj}_a.png")
        Image.fromarray(second).save(folder / f"obj{obj}_b.png")
    for extra in range(2):
        Image.fromarray(texture_image(rng, 240, 320)).save(folder / f"other{extra}.png")
    return folder


@pytest.fixture(scope="module")
def rigid_index(tmp_path_factory, views_dir):
    import matchlens
    from matchlens.config import PipelineSpec

    torch.set_num_threads(1)
    return matchlens.build_index(views_dir, tmp_path_factory.mktemp("rigid") / "idx",
                                 spec=PipelineSpec(max_side=SIDE, pooling="rmac", pooling_params={"levels": 2}))


@pytest.fixture(scope="module")
def head_file(tmp_path_factory, rigid_index):
    """A head trained through the CLI (one epoch, 4 regions)."""
    from matchlens.cli import main

    path = tmp_path_factory.mktemp("head") / "head.pt"
    exclude = path.with_name("test-images.txt")
    exclude.write_text("other1.png\n")  # a test set left out of training, by file name
    try:
        main(["train-regions", str(rigid_index.root), "--out", str(path), "--epochs", "1", "--k", "4",
              "--knn", "3", "--negatives", "2", "--exclude", str(exclude), "--threads", "1", "-q"])
    except SystemExit as exc:
        assert not exc.code
    return path


def test_train_regions_writes_a_head_trained_on_the_verified_pairs(head_file, rigid_index):
    model, meta = load_head(head_file)
    assert isinstance(model, LearnedRMAC) and model.k == 4
    assert meta["backbone"] == rigid_index.spec.backbone
    assert meta["trained_on"] == rigid_index.spec.fingerprint()
    assert meta["pairs"] >= 3 and meta["images"] == 7  # the three objects' pairs verify; other1 left out
    assert len(meta["losses"]) == 1 and np.isfinite(meta["losses"][0])
    assert not head_file.with_name(head_file.name + ".partial").exists()


def test_learned_rmac_index_pools_over_the_heads_regions_and_searches(capsys, tmp_path, views_dir, head_file):
    import matchlens
    from matchlens.extract.extractor import Extractor
    from matchlens.linalg import l2_normalize

    target = tmp_path / "learned"
    code, _, err = run_cli(capsys, "index", views_dir, "-i", target, "--max-side", SIDE, "--pooling", "learned-rmac",
                           "--pooling-params", f"head={head_file}", "--whitening", "none", "-q")
    assert code == 0, err
    idx = matchlens.open_index(target)
    assert idx.spec.pooling == "learned-rmac"
    assert idx.spec.pooling_params["head"] == str(head_file.resolve()) and len(idx.spec.pooling_params["head_id"]) == 16
    # the stored descriptor is the head's learned-region pooling of the backbone map
    extractor, (model, _) = Extractor(idx.spec), load_head(head_file)
    row = next(r for r in range(idx.size) if idx.entry_for_row(r).path.endswith("obj1_a.png"))
    image = extractor.load(idx.entry_for_row(row).path)
    with torch.no_grad():  # the preset's scales: each pooled, L2-normalised, summed, L2-normalised
        pooled = [l2_normalize(model(extractor.feature_map(image, s)[0]).numpy()[None])[0] for s in idx.spec.scales]
    expected = l2_normalize(np.sum(pooled, axis=0)[None])[0]
    assert idx.spec.whitening == "none" and len(idx.spec.scales) == 3
    np.testing.assert_allclose(np.asarray(idx.vectors()[row]), expected, atol=1e-5)
    # a query is encoded the same way: an indexed image finds itself at cosine 1
    results = idx.search(views_dir / "obj1_a.png", k=2)
    assert results[0].path.endswith("obj1_a.png") and results[0].score == pytest.approx(1.0, abs=1e-4)
    assert results[1].score < 0.9999


def test_a_changed_missing_or_foreign_head_is_refused_in_one_line(capsys, tmp_path, views_dir, head_file):
    import shutil

    head = tmp_path / "head.pt"
    shutil.copy(head_file, head)
    target = tmp_path / "learned"
    code, _, err = run_cli(capsys, "index", views_dir, "-i", target, "--max-side", SIDE, "--pooling", "learned-rmac",
                           "--pooling-params", f"head={head}", "--whitening", "none", "-q")
    assert code == 0, err
    model, meta = load_head(head)
    save_head(head, LearnedRMAC(model.channels, k=2), meta)  # retrained in place: other descriptors
    code, _, err = run_cli(capsys, "search", target, views_dir / "obj0_a.png", "-k", "2")
    assert code != 0 and "changed since the index was built" in err and "Traceback" not in err
    head.unlink()
    code, _, err = run_cli(capsys, "search", target, views_dir / "obj0_a.png", "-k", "2")
    assert code != 0 and "not found" in err and len(err.strip().splitlines()) == 1
    foreign = tmp_path / "foreign.pt"
    save_head(foreign, LearnedRMAC(model.channels, k=2), {**meta, "backbone": "resnet50"})
    code, _, err = run_cli(capsys, "index", views_dir, "-i", tmp_path / "other", "--max-side", SIDE, "--pooling",
                           "learned-rmac", "--pooling-params", f"head={foreign}", "-q")
    assert code != 0 and "trained on resnet50" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    code, _, err = run_cli(capsys, "index", views_dir, "-i", tmp_path / "junk", "--max-side", SIDE, "--pooling",
                           "learned-rmac", "--pooling-params", f"head={junk}", "-q")
    assert code != 0 and "is not a regions head" in err
    with pytest.raises(ConfigError, match="needs head=FILE"):
        from matchlens.config import PipelineSpec

        PipelineSpec(pooling="learned-rmac", pooling_params={})


def test_no_verified_pairs_is_a_one_line_error(capsys, tmp_path, built_index):
    code, _, err = run_cli(capsys, "train-regions", built_index.root, "--out", tmp_path / "h.pt", "--epochs", "1", "-q")
    assert code != 0 and "no verified pairs" in err and "Traceback" not in err
    assert not (tmp_path / "h.pt").exists()


def test_resuming_after_an_epoch_equals_training_straight_through():
    torch.manual_seed(0)
    maps = [torch.rand(8, 5, 6) for _ in range(6)]
    targets = {i: torch.tensor([[1.0, 1.0, 4.0, 4.0]]) for i in range(6)}
    tuples = [[0, 1, 2, 3], [1, 0, 4, 5], [2, 3, 0, 1]]
    config = RegionsHeadConfig(k=3, epochs=2, hidden=8, negatives=2)
    saved: dict = {}

    def keep(model, optimiser, epoch, losses):
        if epoch == 1:
            saved.update(model=copy.deepcopy(model.state_dict()), optimiser=copy.deepcopy(optimiser.state_dict()),
                         losses=list(losses))

    straight, losses, _ = train_head(maps, targets, tuples, config, on_epoch=keep)
    resumed, resumed_losses, _ = train_head(maps, targets, tuples, config, state=saved)
    assert resumed_losses == pytest.approx(losses)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value)
    with pytest.raises(ConfigError, match="nothing to train"):
        RegionsHeadConfig(triplet=False, rpn_weight=0.0).check()
