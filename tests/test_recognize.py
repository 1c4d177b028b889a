"""Retrieve, then identify (matchlens.recognize): BBN's branches and schedule, the baselines,
SICoT's title stream, the kNN vote, rec.pt, train-recognizer and search --identify, bad input.

The images are generated: each class is crops of one synthetic scene, long-tailed 8/4/2/1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ImageEnhance

from matchlens.errors import ConfigError, SourceError
from matchlens.recognize import METHODS, RecognitionNet, fit, load_recognizer, read_labelled, vote
from matchlens.recognize.bbn import cumulative_alpha
from matchlens.recognize.heads import ReWeighting
from matchlens.recognize.sicot import TitleStream, encode_titles
from tests.conftest import make_scene, run_cli

COUNTS = (8, 4, 2, 1)
SIZE = "64"


def _crop(base, rng):
    x, y = rng.integers(0, 60, 2)
    image = base.crop((int(x), int(y), int(x) + 240, int(y) + 180))
    return ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.85, 1.15)))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """class0..class3 folders (8/4/2/1 images), labels.csv, titles.csv and one held-out query per class."""
    root = tmp_path_factory.mktemp("labelled")
    rows = []
    for c, n in enumerate(COUNTS):
        base, rng = make_scene(100 + c), np.random.default_rng(c)
        (root / "data" / f"class{c}").mkdir(parents=True)
        for i in range(n + 1):
            path = root / ("queries" if i == n else f"data/class{c}") / f"{'q' if i == n else ''}{c}_{i}.jpg"
            path.parent.mkdir(exist_ok=True)
            _crop(base, rng).save(path)
            if i < n:
                rows.append((path, f"class{c}"))
    (root / "labels.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    (root / "titles.csv").write_text("path,title\n" + "".join(f"{p.name},free shipping {c} sale\n" for p, c in rows))
    make_scene(999).save(root / "unknown.jpg")
    return root


@pytest.fixture(scope="module")
def backbone():
    from matchlens.models import load_backbone

    torch.set_num_threads(1)
    return load_backbone("tf_efficientnet_lite0")


# --- methods -------------------------------------------------------------------------------------

def test_methods_registry_and_reweighting():
    assert METHODS.names() == ["bbn", "ce", "rs", "rw"]
    assert METHODS.get("rs").sampler == "balanced" and METHODS.get("bbn").branches == 2
    counts = np.array([80.0, 15.0, 5.0])
    weight = ReWeighting(counts).weight.numpy()
    np.testing.assert_allclose(weight * counts, np.full(3, counts.sum() / 3), rtol=1e-5)  # w ∝ 1/N
    assert (weight * counts).sum() == pytest.approx(counts.sum(), rel=1e-5)  # average example weight 1


def test_cumulative_alpha_schedule():
    assert cumulative_alpha(0, 10) == 1.0
    assert cumulative_alpha(5, 10) == pytest.approx(0.75)
    assert cumulative_alpha(10, 10) == 0.0


def test_bbn_branches_are_copies_of_the_last_stage_and_test_uses_half(backbone):
    net = RecognitionNet(backbone, 3, branches=2).eval()
    a, b = net.branches
    assert a is not b and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(a.parameters(), b.parameters()))
    maps = torch.randn(2, 192, 2, 2)
    with torch.no_grad():
        expected = 0.5 * net.classifiers[0](net.feature(maps, 0)) + 0.5 * net.classifiers[1](net.feature(maps, 1))
        torch.testing.assert_close(net.logits(maps), expected)


def test_bbn_loss_is_alpha_weighted_over_both_samplers(backbone):
    net = RecognitionNet(backbone, 3, branches=2).eval()
    method = METHODS.get("bbn")(np.array([5, 3, 1]))
    maps = [torch.randn(4, 192, 2, 2), torch.randn(4, 192, 2, 2)]
    yc, yr = torch.tensor([0, 0, 1, 0]), torch.tensor([2, 2, 1, 2])
    with torch.no_grad():
        loss = method.loss(net, maps, [yc, yr], progress=0.5)
        alpha = 0.75
        z = alpha * net.classifiers[0](net.feature(maps[0], 0)) + (1 - alpha) * net.classifiers[1](net.feature(maps[1], 1))
        expected = alpha * torch.nn.functional.cross_entropy(z, yc) + (1 - alpha) * torch.nn.functional.cross_entropy(z, yr)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    rows = method.draw(np.array([0] * 90 + [1] * 9 + [2]), 4000, np.random.default_rng(0))
    labels = np.array([0] * 90 + [1] * 9 + [2])
    assert np.mean(labels[rows[0]] == 2) < 0.02 and np.mean(labels[rows[1]] == 2) > 0.8  # uniform vs reversed


def test_fit_trains_only_the_last_stages_on_frozen_maps(backbone, labelled):
    from matchlens.recognize import image_batch, trunk_features

    data = read_labelled(labelled / "labels.csv")
    net = RecognitionNet(backbone, len(data.classes), branches=2)
    maps = trunk_features(net, image_batch(data.paths, int(SIZE)))
    trunk_before = [p.detach().clone() for p in net.trunk.parameters()]
    branch_before = [p.detach().clone() for p in net.branches[1].parameters()]
    losses = fit(net, "bbn", maps, data.labels, epochs=10, batch=8, lr=0.01)
    assert all(torch.equal(p, q) for p, q in zip(net.trunk.parameters(), trunk_before))
    assert any(not torch.equal(p, q) for p, q in zip(net.branches[1].parameters(), branch_before))
    with torch.no_grad():
        predicted = net.eval().logits(maps).argmax(1).numpy()
    assert (predicted == data.labels).mean() >= 0.9 and len(losses) == 10


# --- SICoT -----------------------------------------------------------------------------------------

def test_bilinear_word_attention_ignores_padding_and_mixes_by_max():
    ids, mask, table, frozen = encode_titles(["red shoe", "", "blue shoe free shipping"], "learned")
    assert not frozen and ids.shape == (3, 4) and mask[1].sum() == 0
    stream = TitleStream(table, frozen, width=8)
    weights = stream.attention(ids, mask)
    np.testing.assert_allclose(weights.sum(1).detach().numpy(), [1.0, 0.0, 1.0], atol=1e-6)
    assert float(weights[0, 2:].detach().abs().sum()) == 0.0  # padding gets no attention
    feature = torch.rand(3, 8)
    classifier = torch.nn.Linear(8, 2)
    targets = torch.tensor([0, 1, 1])
    loss = stream.loss(feature, classifier, ids, mask, targets)
    has = torch.tensor([True, False, True])
    mixed = torch.maximum(feature[has], stream(ids[has], mask[has]))
    expected = torch.nn.functional.cross_entropy(classifier(mixed), targets[has])
    assert float(loss.detach()) == pytest.approx(float(expected.detach()))


def test_minilm_word_pieces_feed_the_title_stream():
    pytest.importorskip("tokenizers")
    try:
        from matchlens.models.text import WordPieces

        pieces = WordPieces()
    except ConfigError as exc:  # the optional text model is not installed
        pytest.skip(str(exc))
    ids, mask, table, frozen = encode_titles(["running shoes sale", "free shipping"], "minilm")
    assert frozen and table.shape[1] == 384 and torch.equal(table[0], torch.zeros(384))
    original, original_mask = pieces.ids(["running shoes sale"])
    n = int(original_mask.sum())
    assert int(mask[0].sum()) == n
    # each title piece's vector is the MiniLM table's row for that word piece (kept rows only)
    torch.testing.assert_close(table[ids[0, :n]], pieces.table[original[0, :n]])


# --- labels and bad input --------------------------------------------------------------------------

def test_labels_csv_folders_and_single_image_class(labelled):
    from_csv, from_dirs = read_labelled(labelled / "labels.csv"), read_labelled(labelled / "data")
    assert from_csv.classes == from_dirs.classes == ["class0", "class1", "class2", "class3"]
    assert list(from_csv.counts) == list(COUNTS) and sorted(from_csv.paths) == sorted(from_dirs.paths)
    assert any("single image" in note and "class3" in note for note in from_csv.notes)


def test_missing_file_and_one_class_are_one_line_errors(labelled, tmp_path, capsys):
    bad = tmp_path / "labels.csv"
    bad.write_text(f"{labelled / 'data/class0/0_0.jpg'},a\nnope/missing.jpg,b\n")
    with pytest.raises(SourceError, match=r"line 2: image 'nope/missing.jpg' does not exist"):
        read_labelled(bad)
    code, _, err = run_cli(capsys, "train-recognizer", bad, "--out", tmp_path / "r.pt", "-q")
    assert code == 2 and "missing.jpg" in err and len(err.strip().splitlines()) == 1
    one = tmp_path / "one.csv"
    one.write_text(f"{labelled / 'data/class0/0_0.jpg'},a\n")
    with pytest.raises(ConfigError, match="at least two classes"):
        read_labelled(one)
    with pytest.raises(ConfigError, match="not bbn"):
        from matchlens.recognize import RecognizerConfig
        RecognizerConfig(data=".", out="r.pt", method="bbn", titles="t.csv")


# --- end to end: train-recognizer, rec.pt, search --identify ----------------------------------------

@pytest.fixture(scope="module")
def trained(labelled, tmp_path_factory):
    """rs and bbn recognizers (the second with SICoT titles is ce) through the CLI, and an index."""
    import matchlens
    from matchlens.cli import main
    from matchlens.config import PipelineSpec

    out = tmp_path_factory.mktemp("rec")
    for method, extra in (("rs", []), ("ce", ["--titles", str(labelled / "titles.csv"), "--words", "learned"])):
        try:
            main(["train-recognizer", str(labelled / "labels.csv"), "--method", method, "--out", str(out / f"{method}.pt"),
                  "--epochs", "15", "--size", SIZE, "--lr", "0.02", "--threads", "1", "-q", *extra])
        except SystemExit as exc:
            assert not exc.code
    index = matchlens.build_index(labelled / "data", out / "idx", spec=PipelineSpec(max_side=128))
    return out, index


def test_recognizer_file_records_what_it_was_trained_for(trained, labelled):
    out, _ = trained
    rec = load_recognizer(out / "rs.pt")
    assert rec.classes == ["class0", "class1", "class2", "class3"] and rec.method == "rs"
    assert rec.backbone == "tf_efficientnet_lite0" and rec.size == int(SIZE) and not rec.trunk_trained
    assert rec.info["counts"] == list(COUNTS)
    payload = torch.load(out / "rs.pt", weights_only=True)
    assert not any(k.startswith("trunk.") for k in payload["state"])  # frozen trunk: rebuilt from the backbone
    train_paths = read_labelled(labelled / "labels.csv").paths
    predictions = rec.predict(train_paths)
    accuracy = np.mean([p.label == Path(path).parent.name for p, path in zip(predictions, train_paths)])
    assert accuracy >= 0.9
    queries = rec.predict([labelled / "queries" / f"q{c}_{n}.jpg" for c, n in enumerate(COUNTS)][:2])
    assert [p.label for p in queries] == ["class0", "class1"]
    titled = load_recognizer(out / "ce.pt")
    assert titled.info["titles"] and titled.info["words"] == "learned"


def test_search_identify_prints_the_class_above_the_results(trained, labelled, capsys):
    out, index = trained
    query = labelled / "queries" / "q0_8.jpg"
    code, text, err = run_cli(capsys, "search", index.root, query, "--identify", out / "rs.pt", "-k", "3")
    assert code == 0, err
    assert text.index("identified: class0") < text.index("rank")
    code, text, _ = run_cli(capsys, "search", index.root, query, "--identify", out / "rs.pt", "-k", "3", "--json")
    payload = json.loads(text)
    assert payload["identified"]["label"] == "class0" and 0.0 < payload["identified"]["confidence"] <= 1.0
    assert len(payload["results"]) == 3
    code, text, _ = run_cli(capsys, "search", index.root, query, "--identify", f"knn=3:{labelled / 'labels.csv'}", "--json")
    payload = json.loads(text)
    assert payload["identified"]["source"] == "knn" and payload["identified"]["label"] == "class0"


def test_unknown_class_gets_a_confidence_not_a_crash(trained, labelled, capsys):
    out, index = trained
    code, text, _ = run_cli(capsys, "search", index.root, labelled / "unknown.jpg", "--identify", out / "rs.pt",
                            "-k", "2", "--jsonl")
    assert code == 0
    identified = json.loads(text)["identified"]
    assert identified["label"] in {"class0", "class1", "class2", "class3"}
    assert identified["uncertain"] == (identified["confidence"] < 0.5)


def test_recognizer_for_another_backbone_is_refused(trained, labelled, tmp_path, capsys):
    out, index = trained
    payload = torch.load(out / "rs.pt", weights_only=True)
    payload["backbone"] = "tf_efficientnet_lite1"
    torch.save(payload, tmp_path / "other.pt")
    code, _, err = run_cli(capsys, "search", index.root, labelled / "unknown.jpg", "--identify", tmp_path / "other.pt")
    assert code == 2 and "trained for backbone 'tf_efficientnet_lite1'" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    code, _, err = run_cli(capsys, "search", index.root, labelled / "unknown.jpg", "--identify", tmp_path / "junk.pt")
    assert code != 0 and "not a recognizer file" in err


def test_knn_vote_weights_by_score():
    prediction = vote(["a", "b", "b"], [0.9, 0.3, 0.3])
    assert prediction.label == "a" and prediction.confidence == pytest.approx(0.6, abs=1e-3)
    empty = vote([], [])
    assert empty.label == "" and empty.uncertain


def test_service_names_the_class_above_the_results(trained, labelled):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from matchlens.service import create_app

    out, index = trained
    client = TestClient(create_app(index.root, identify=str(out / "rs.pt"), allowed_hosts=["testserver"]))
    info = client.get("/index").json()
    assert info["identify"] == {"kind": "recognizer", "method": "rs", "classes": 4, "backbone": "tf_efficientnet_lite0"}
    data = (labelled / "queries" / "q1_4.jpg").read_bytes()
    body = client.post("/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "3"}).json()
    assert body["identified"]["label"] == "class1" and body["identified"]["source"] == "recognizer"
    assert len(body["results"]) == 3
    page = client.get("/static/app.js").text
    assert "showIdentified(body.identified)" in page
    knn = TestClient(create_app(index.root, identify=f"knn=1:{labelled / 'labels.csv'}", allowed_hosts=["testserver"]))
    body = knn.post("/search", files={"image": ("q.jpg", data, "image/jpeg")}).json()
    assert body["identified"]["source"] == "knn" and body["identified"]["label"] == "class1"


def test_full_network_training_saves_and_reloads_the_trunk(labelled, backbone, tmp_path, capsys):
    """--full (the default when a GPU is present) trains the trunk too; rec.pt then carries it."""
    path = tmp_path / "full.pt"
    code, text, err = run_cli(capsys, "train-recognizer", labelled / "labels.csv", "--method", "bbn", "--full",
                              "--epochs", "1", "--size", "64", "--batch", "8", "--out", path, "-q", "--threads", "1")
    assert code == 0, err
    assert "whole network" in text and "note: 1 class(es) with a single image" in err
    payload = torch.load(path, weights_only=True)
    assert payload["trunk_trained"] and any(k.startswith("trunk.") for k in payload["state"])
    rec = load_recognizer(path)
    fresh = RecognitionNet(backbone, 4, 2)
    changed = [not torch.equal(a, b) for a, b in zip(rec.net.trunk.state_dict().values(), fresh.trunk.state_dict().values())
               if a.dtype.is_floating_point]
    assert any(changed)  # the trained trunk was saved and loaded, not rebuilt from ImageNet weights
