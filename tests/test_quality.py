"""Query quality (matchlens.quality): no-reference estimates, patches, the quality head, DnCNN,
fine-tuning through the frozen quality net, feature adaptation, model files that know their index,
and the CLI (quality, train-quality, search --enhance / --quality) with its one-line errors."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image

from matchlens.errors import ImageLoadError, WeightsError
from matchlens.io.degrade import degrade
from tests.conftest import make_scene, run_cli

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return make_scene(7, (320, 240))


@pytest.fixture(scope="module")
def quality_net():
    from matchlens.quality.net import QualityNet

    return QualityNet().eval()


# --- no-reference estimates ---------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [20.0, 40.0])
def test_noise_estimate_follows_the_added_sigma(photo, sigma):
    from matchlens.quality.features import diagnose

    clean = diagnose(photo)
    noisy = diagnose(degrade(photo, "noise", sigma=sigma, seed=1))
    assert clean.noise_sigma < 6
    assert 0.7 * sigma < noisy.noise_sigma < 1.3 * sigma
    assert any(i.startswith("noisy") for i in noisy.issues) and not clean.issues


def test_blur_downsampling_and_low_light_are_named(photo):
    from matchlens.quality.features import diagnose

    sharp = diagnose(photo).detail
    for name, params, word in (("blur", {"sigma": 3.0}, "blurred"), ("downsample", {"factor": 4}, "blurred"),
                               ("low_light", {"gain": 0.12, "gamma": 2.4}, "underexposed")):
        d = diagnose(degrade(photo, name, **params))
        assert any(i.startswith(word) for i in d.issues), (name, d.issues)
    assert diagnose(degrade(photo, "downsample", factor=4)).detail < 0.5 * sharp
    small = diagnose(photo.resize((150, 110)))
    assert any(i.startswith("low resolution") for i in small.issues)


def test_patches_refuse_tiny_and_blank_queries(photo):
    from matchlens.quality.patches import PATCH, check_usable, grid_patches

    patches = grid_patches(photo)
    assert patches.shape[1:] == (PATCH, PATCH, 3) and len(patches) == 9  # 3 × 3, overlapping
    assert len(grid_patches(photo.resize((320, 128)))) == 3  # one row where only one patch fits
    with pytest.raises(ImageLoadError, match="too small to take 128×128"):
        check_usable(photo.resize((100, 90)))
    with pytest.raises(ImageLoadError, match="blank"):
        check_usable(Image.new("RGB", (300, 300), (90, 90, 90)))


# --- networks -----------------------------------------------------------------------------------
def test_quality_head_learns_ap_from_features():
    from matchlens.quality.net import QualityHead, train_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 64)).astype(np.float32)
    y = 1 / (1 + np.exp(-x[:, :4].sum(1) / 2))  # an AP-like target in (0, 1) driven by four features
    head = QualityHead(64)
    losses = train_head(head, x, y, epochs=15, lr=3e-3)
    assert losses[-1] < 0.6 * losses[0]
    with torch.no_grad():
        pred = head(torch.from_numpy(x)).numpy()
    assert ((pred >= 0) & (pred <= 1)).all()
    assert np.corrcoef(pred, y)[0, 1] > 0.8


def test_dncnn_starts_as_identity_and_learns_to_denoise(photo):
    from matchlens.quality.dncnn import DnCNN, enhance_image, make_pairs, train_mse
    from matchlens.quality.net import to_tensor

    model = DnCNN(4, 12)
    assert np.array_equal(np.asarray(enhance_image(model, photo)), np.asarray(photo.convert("RGB")))
    noisy, clean = make_pairs([photo, make_scene(8)], lambda im, s: degrade(im, "noise", sigma=40, seed=s), 192, 24)
    before = float(((to_tensor(noisy) - to_tensor(clean)) ** 2).mean())
    losses = train_mse(model, noisy, clean, epochs=4, lr=3e-3, batch=16)
    assert losses[-1] < 0.7 * before  # better than leaving the noise in


def test_qa_finetuning_raises_the_predicted_ap(photo, quality_net):
    from matchlens.quality.dncnn import DnCNN, make_pairs
    from matchlens.quality.enhance import finetune_qa
    from matchlens.quality.net import to_tensor

    noisy, clean = make_pairs([photo], lambda im, s: degrade(im, "noise", sigma=50, seed=s), 4, 128)
    model = DnCNN(3, 8)
    with torch.no_grad():
        before = float(quality_net(model(to_tensor(noisy)).clamp(0, 1)).mean())
    finetune_qa(model, quality_net, noisy, clean, lam=0.0, epochs=4, lr=1e-2, batch=4)
    with torch.no_grad():
        after = float(quality_net(model(to_tensor(noisy)).clamp(0, 1)).mean())
    assert after > before
    assert all(not p.requires_grad for p in quality_net.backbone.parameters())  # the quality net stayed frozen


def test_feature_adaptation_trades_predicted_ap_against_change(photo, quality_net):
    from matchlens.quality.enhance import FeatureAdapter, _feature_maps, train_feature_adaptation
    from matchlens.quality.patches import grid_patches

    patches = grid_patches(degrade(photo, "noise", sigma=50))
    maps = _feature_maps(quality_net, patches)

    def predicted(adapter):
        with torch.no_grad():
            return float(quality_net.head(adapter(maps).mean(dim=(2, 3))).mean())

    free, tied = FeatureAdapter(), FeatureAdapter()
    start = predicted(free)
    train_feature_adaptation(free, quality_net, patches, lam=0.0, epochs=5, lr=1e-3)
    train_feature_adaptation(tied, quality_net, patches, lam=1e6, epochs=5, lr=1e-3)
    assert predicted(free) > start
    with torch.no_grad():
        assert float(((tied(maps) - maps) ** 2).mean()) < float(((free(maps) - maps) ** 2).mean())


# --- model files and the index they belong to ---------------------------------------------------
def test_model_file_is_refused_for_another_pipeline_or_collection(built_index, tmp_path):
    from matchlens.quality.net import QualityHead
    from matchlens.quality.store import QualityModel, Target, target_of

    target = target_of(built_index)
    model = QualityModel(QualityHead(), target, 0.3, {"note": "test"})
    path = model.save(tmp_path / "q.pt")
    loaded = QualityModel.load(path, built_index)
    assert loaded.low == pytest.approx(0.3) and loaded.target == target
    other = QualityModel(QualityHead(), Target("0" * 16, "another pipeline", "x", target.images), 0.3)
    with pytest.raises(WeightsError, match="trained for pipeline 'another pipeline'"):
        QualityModel.load(other.save(tmp_path / "p.pt"), built_index)
    elsewhere = QualityModel(QualityHead(), Target(target.pipeline, target.describe, "x", ("f" * 64,) * 4), 0.3)
    with pytest.raises(WeightsError, match="another collection"):
        QualityModel.load(elsewhere.save(tmp_path / "c.pt"), built_index)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="not a matchlens quality model"):
        QualityModel.load(tmp_path / "junk.pt")


def test_self_supervised_labels_use_the_clean_original_as_positive(built_index, quality_net):
    from matchlens.quality.labels import self_labels, variant, verified_positives

    labels = self_labels(built_index, quality_net, count=2, variants=(variant("clean"), variant("noise", sigma=90)))
    assert len(labels) == 4
    rows = {e.path: e.row for e in built_index.entries}
    for lab in labels:
        positives = verified_positives(built_index, lab.query, rows[lab.query])
        assert rows[lab.query] in positives and lab.group == str(min(positives))
        if lab.variant == "clean":  # the original itself comes first: AP ≥ 1 / |positives|
            assert lab.ap >= 1 / len(positives) - 1e-9
    by_query = {}
    for lab in labels:
        by_query.setdefault(lab.query, {})[lab.variant] = lab.ap
    assert all(v["clean"] >= v["noise:sigma=90"] for v in by_query.values())
    assert all(not math.isnan(lab.top_score) and lab.features.shape[1] == 1280 for lab in labels)


# --- CLI ----------------------------------------------------------------------------------------
def test_cli_train_quality_then_quality_and_search(built_index, scenes_dir, tmp_path, capsys):
    model = tmp_path / "m" / "model.pt"
    code, _, err = run_cli(capsys, "train-quality", built_index.root, "--self-supervised", "--degradations", "clean,fog")
    assert code == 2 and "unknown degradation fog" in err and err.count("\n") == 1
    code, out, err = run_cli(capsys, "train-quality", built_index.root, "--self-supervised", "--count", 2,
                             "--degradations", "clean,noise:sigma=90", "--epochs", 3, "--out", model, "-q")
    assert code == 0, err
    assert model.is_file() and "quality model" in out
    query = scenes_dir / "scene_03.jpg"
    code, out, _ = run_cli(capsys, "quality", built_index.root, query, "--quality", model, "--json")
    assert code == 0
    shown = json.loads(out)
    assert 0 <= shown["predicted_ap"] <= 1 and isinstance(shown["issues"], list)
    noisy = tmp_path / "noisy.png"
    degrade(Image.open(query), "noise", sigma=60).save(noisy)
    code, out, _ = run_cli(capsys, "quality", built_index.root, noisy, "--quality", model, "--json")
    assert any(i.startswith("noisy") for i in json.loads(out)["issues"])
    code, out, err = run_cli(capsys, "search", built_index.root, query, "--quality", model, "-k", 3, "--json")
    assert code == 0 and len(json.loads(out)) == 3
    code, _, err = run_cli(capsys, "search", built_index.root, query, "--quality", model, "--enhance", "sr")
    assert code == 2 and err.count("\n") == 1 and "no sr model" in err


def test_cli_bad_queries_are_one_line_errors(built_index, tmp_path, capsys):
    tiny, blank, text = tmp_path / "tiny.png", tmp_path / "blank.png", tmp_path / "notes.jpg"
    make_scene(1, (90, 70)).save(tiny)
    Image.new("RGB", (300, 200), (20, 20, 20)).save(blank)
    text.write_text("not an image")
    for path, words in ((tiny, "too small"), (blank, "blank"), (text, "notes.jpg")):
        code, out, err = run_cli(capsys, "quality", built_index.root, path)
        assert code == 2 and err.startswith("matchlens: error:") and err.count("\n") == 1 and words in err, err
    code, _, err = run_cli(capsys, "search", built_index.root, tmp_path / "tiny.png", "--enhance", "auto")
    assert code == 2 and "needs a quality model" in err and err.count("\n") == 1


def test_cli_refuses_a_model_of_another_index(built_index, scenes_dir, tmp_path, capsys, small_spec):
    import matchlens
    from matchlens.quality.net import QualityHead
    from matchlens.quality.store import QualityModel, target_of

    other = matchlens.build_index([scenes_dir / "scene_00.jpg", scenes_dir / "scene_01.jpg"], tmp_path / "other",
                                  spec=small_spec.replace(max_side=96))
    path = QualityModel(QualityHead(), target_of(other), 0.3).save(tmp_path / "other.pt")
    code, _, err = run_cli(capsys, "quality", built_index.root, scenes_dir / "scene_02.jpg", "--quality", path)
    assert code == 2 and err.count("\n") == 1 and "trained for pipeline" in err


def test_cli_search_warns_and_enhances_with_the_models_beside_the_quality_model(built_index, scenes_dir, tmp_path,
                                                                                  capsys):
    from matchlens.quality.dncnn import DnCNN
    from matchlens.quality.net import QualityHead
    from matchlens.quality.store import QualityModel, save_enhancer, target_of

    head = QualityHead()
    with torch.no_grad():  # a head that predicts AP 0.1 for everything: below the 0.4 threshold
        head.layers[-1].weight.zero_()
        head.layers[-1].bias.fill_(float(torch.logit(torch.tensor(0.1))))
    model = QualityModel(head.eval(), target_of(built_index), 0.4).save(tmp_path / "q" / "model.pt")
    save_enhancer(tmp_path / "q" / "denoise.pt", DnCNN(3, 4), "denoise", target_of(built_index))
    query = scenes_dir / "scene_04.jpg"
    code, out, err = run_cli(capsys, "search", built_index.root, query, "--quality", model, "-k", 2, "--json")
    assert code == 0 and len(json.loads(out)) == 2
    assert "matchlens: warning: low query quality for this index: predicted AP 0.10" in err
    code, out, err = run_cli(capsys, "search", built_index.root, query, "--quality", model, "-k", 2, "--json",
                             "--enhance", "denoise")
    assert code == 0 and "enhance denoise: denoise (asked)" in err
    assert json.loads(out)[0]["path"].endswith("scene_04.jpg")  # an identity DnCNN keeps the answer
    code, out, err = run_cli(capsys, "search", built_index.root, query, "--quality", model, "--enhance", "auto", "--json")
    assert code == 0 and "enhance auto: none (no enhancer is predicted to help" in err  # constant head: no gain
