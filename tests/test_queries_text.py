"""Text → image search: the joint embedding (VSE++), CAMP and CAAN re-rankers, train-text, search
--text and the service's /search/text, on tiny generated scenes and synthetic features."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from matchlens.errors import ConfigError
from matchlens.queries.caan import CAAN
from matchlens.queries.camp import CAMP, bce_loss
from matchlens.queries.joint import JointEmbedding, hinge_loss, train_joint
from matchlens.queries.text_data import Captions, grid_boxes
from matchlens.queries.text_model import TextModel, positives_mask
from tests.conftest import run_cli

COLOURS = ["red", "blue", "green", "yellow", "purple", "cyan"]
SHAPES = ["cube", "sphere", "cylinder"]


# --- losses ------------------------------------------------------------------------------------
def test_hinge_loss_hardest_and_sum() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.5, 0.6], [0.0, 0.1, 0.95]])
    none = torch.zeros(3, 3, dtype=torch.bool)
    # text 0: hardest image 0.8 → 0.2 - 0.9 + 0.8 = 0.1; text 1: 0.2+0.6-0.5 = 0.3; text 2: 0.2+0.1-0.95 < 0
    # image 0: hardest text 0.2 → 0.2+0.2-0.9 < 0; image 1: 0.2+0.8-0.5 = 0.5; image 2: 0.2+0.6-0.95 < 0
    assert hinge_loss(scores, none, 0.2, hardest=True).item() == pytest.approx((0.1 + 0.3) / 3 + 0.5 / 3)
    total = hinge_loss(scores, none, 0.2, hardest=False).item()
    assert total >= hinge_loss(scores, none, 0.2, hardest=True).item()
    blocked = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    assert hinge_loss(scores, blocked | torch.eye(3, dtype=torch.bool), 0.2).item() < hinge_loss(scores, none, 0.2).item()
    assert hinge_loss(torch.eye(3), none, 0.2).item() == 0.0  # every margin met


def test_bce_loss_matches_eq14_and_hardest_differs() -> None:
    logits = torch.tensor([[2.0, 1.0, -3.0], [0.5, 1.5, -1.0], [-2.0, 0.0, 3.0]])
    none = torch.zeros(3, 3, dtype=torch.bool)
    sp = torch.nn.functional.softplus
    want = torch.stack([2 * sp(-logits[i, i]) + sp(max(logits[i, j] for j in range(3) if j != i))
                        + sp(max(logits[j, i] for j in range(3) if j != i)) for i in range(3)]).mean()
    assert bce_loss(logits, none).item() == pytest.approx(want.item(), rel=1e-5)
    assert bce_loss(logits, none, hardest=False).item() < bce_loss(logits, none).item()


def test_positives_mask_marks_same_image_or_caption() -> None:
    mask = positives_mask(["a", "b", "a", "c"], np.array([0, 1, 2, 1]))
    assert mask[0, 2] and mask[2, 0] and mask[1, 3] and not mask[0, 1]


# --- models ------------------------------------------------------------------------------------
def test_joint_query_in_index_space_ranks_like_the_joint_score() -> None:
    torch.manual_seed(0)
    model = JointEmbedding(text_dim=16, image_dim=40, dim=8)
    vectors = torch.nn.functional.normalize(torch.randn(30, 40), dim=1)
    model.fit_centre(vectors)
    text = model.embed_text(torch.randn(3, 16))
    joint = text @ model.embed_image(vectors).T
    folded = model.to_index_space(text) @ vectors.T
    offsets = joint - folded  # one constant per text: the ranking is the same
    assert torch.allclose(offsets, offsets[:, :1].expand_as(offsets), atol=1e-5)
    assert (joint.argsort(1, descending=True) == folded.argsort(1, descending=True)).all()


@pytest.mark.parametrize("make", [lambda: CAMP(12, 10, hidden=16), lambda: CAMP(12, 10, hidden=16, gate=False),
                                  lambda: CAAN(12, 10, hidden=16, z=8)])
def test_cross_models_score_all_pairs_and_ignore_padding(make) -> None:
    torch.manual_seed(1)
    model = make().eval()
    regions, words = torch.randn(4, 5, 12), torch.randn(3, 6, 10)
    rmask, wmask = torch.ones(4, 5), torch.ones(3, 6)
    wmask[1, 4:] = 0
    scores = model.match(regions, rmask, words, wmask)
    assert scores.shape == (3, 4) and torch.isfinite(scores).all()
    # padding: two extra regions that the mask hides change nothing; nor do padded word values
    padded = torch.cat([regions, torch.randn(4, 2, 12)], 1)
    pmask = torch.cat([rmask, torch.zeros(4, 2)], 1)
    words2 = words.clone()
    words2[1, 4:] = 99.0
    assert torch.allclose(model.match(padded, pmask, words2, wmask), scores, atol=1e-4)
    # one pair alone scores as in the batch
    assert torch.allclose(model.match(regions[2:3], rmask[2:3], words[0:1], wmask[0:1])[0, 0], scores[0, 2], atol=1e-5)


def test_grid_boxes_are_the_rmac_regions_inside_the_image() -> None:
    boxes = grid_boxes(3)
    assert len(boxes) == 14 and all(0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 for x0, y0, x1, y1 in boxes)


def _fake_index(tmp_path: Path, n: int = 36, dim: int = 24):
    """An 'index' whose vector of image i encodes its colour and shape (plus noise)."""
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(len(COLOURS) + len(SHAPES), dim))
    texts, vecs = [], []
    for i in range(n):
        c, s = i % len(COLOURS), (i // len(COLOURS)) % len(SHAPES)
        texts.append(f"a {COLOURS[c]} {SHAPES[s]}")
        v = basis[c] + basis[len(COLOURS) + s] + 0.1 * rng.normal(size=dim)
        vecs.append(v / np.linalg.norm(v))
    vectors = np.asarray(vecs, np.float32)
    spec = SimpleNamespace(describe=lambda: "fake 24-D")
    index = SimpleNamespace(vectors=lambda: vectors, spec=spec, dim=dim, root=tmp_path, size=n)
    return index, Captions(texts, np.arange(n))


def test_train_joint_learns_colour_and_shape(tmp_path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny layers: more threads only contend
    index, captions = _fake_index(tmp_path)
    model = train_joint(index, captions, encoder="lstm:tokens=words,embed=16", epochs=20, batch=12, text_dim=32, dim=16)
    texts = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    scores = model.query_vectors(texts) @ index.vectors().T  # searched in the index's own space
    hits = [captions.texts[int(np.argmax(row))] == t for row, t in zip(scores, texts)]
    assert np.mean(hits) >= 0.8, np.mean(hits)  # chance: 1/18
    path = tmp_path / "text.pt"
    model.save(path)
    again = TextModel.load(path)
    assert np.allclose(again.query_vectors(texts), model.query_vectors(texts), atol=1e-5)
    with pytest.raises(ConfigError, match="trained for pipeline"):
        again.check(SimpleNamespace(spec=SimpleNamespace(describe=lambda: "other"), dim=24, root=tmp_path))
    with pytest.raises(ConfigError, match="empty"):
        from matchlens.queries.text_model import check_text
        check_text("  ", again.encoder)
    with pytest.raises(ConfigError, match="seen in training"):
        check_text("zebra giraffe", again.encoder)


# --- the CLI and the service on tiny scenes ----------------------------------------------------
@pytest.fixture(scope="module")
def scene_index(tmp_path_factory):
    import matchlens
    from matchlens.queries.scenes import SceneConfig, generate, write_collection

    folder = tmp_path_factory.mktemp("text-scenes")
    write_collection(generate(SceneConfig(seed=3, train_references=6, test_references=0, mods_per_reference=2)),
                     folder / "scenes")
    matchlens.build_index(folder / "scenes" / "images", folder / "index", spec=matchlens.PipelineSpec(max_side=64))
    return folder


@pytest.fixture(scope="module")
def text_model_file(scene_index):
    from matchlens.cli import main

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = scene_index / "text.pt"
    captions, index = scene_index / "scenes" / "captions.csv", scene_index / "index"
    try:
        for extra in (["--epochs", "3"], ["--model", "camp", "--epochs", "1", "--side", "96"],
                      ["--model", "caan", "--epochs", "1", "--side", "96"]):
            try:
                main(["train-text", str(captions), "--index", str(index), "--out", str(model), "-q", *extra])
            except SystemExit as exc:
                assert not exc.code
    finally:
        torch.set_num_threads(before)
    return model


def test_search_text_cli_with_rerankers(capsys, scene_index, text_model_file) -> None:
    index = scene_index / "index"
    caption = (scene_index / "scenes" / "captions.csv").read_text().splitlines()[1].split(",", 1)[1].rsplit(",", 1)[0]
    caption = caption.strip('"')
    for chain in ([], ["--rerank", "camp:k=5"], ["--rerank", "caan:k=5"]):
        code, out, err = run_cli(capsys, "search", index, "--text", caption, "--text-model", text_model_file,
                                 "-k", "4", "--jsonl", *chain)
        assert code == 0, err
        line = json.loads(out)
        assert len(line["results"]) == 4 and line["query"] == caption
        scores = [r["score"] for r in line["results"]]
        assert scores == sorted(scores, reverse=True)
        assert (line.get("rerank") is not None) == bool(chain) and "extract" in line["timings_ms"]
    code, out, err = run_cli(capsys, "search", index, "--text", "", "--text-model", text_model_file)
    assert code == 2 and err.count("\n") == 1 and "empty" in err
    code, out, err = run_cli(capsys, "search", index, "--text", "zebra giraffe", "--text-model", text_model_file)
    assert code == 2 and err.count("\n") == 1 and "seen in training" in err
    code, out, err = run_cli(capsys, "search", index, "--text", "a red cube")
    assert code == 2 and "--text-model" in err
    code, out, err = run_cli(capsys, "search", index, "some.jpg", "--text", "a red cube", "--text-model", text_model_file)
    assert code == 2 and "no query image" in err


def test_a_model_of_another_pipeline_is_refused(capsys, scene_index, text_model_file, tmp_path) -> None:
    other = tmp_path / "other.pt"
    model = TextModel.load(text_model_file)
    model.pipeline = "tf_efficientnet_lite0 999px x(1) gem(p=3) none"
    model.save(other)
    code, out, err = run_cli(capsys, "search", scene_index / "index", "--text", "a red cube", "--text-model", other)
    assert code == 2 and err.count("\n") == 1 and "trained for pipeline" in err


def test_service_search_text(scene_index, text_model_file) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from matchlens.service import create_app

    client = TestClient(create_app(scene_index / "index", allowed_hosts=["testserver"], text_model=text_model_file))
    assert client.get("/index").json()["text_model"] is True
    answer = client.post("/search/text", data={"text": "a large red cube at top-left", "k": "3", "rerank": "camp:k=5"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["results"]) == 3 and body["rerank"].startswith("camp:k=5") and body["results"][0]["image_url"].startswith("/images/")
    bad = client.post("/search/text", data={"text": "   "})
    assert bad.status_code == 400 and "empty" in bad.json()["detail"]
    plain = TestClient(create_app(scene_index / "index", allowed_hosts=["testserver"]))
    assert plain.post("/search/text", data={"text": "a red cube"}).status_code == 404
    assert 'id="text-form"' in plain.get("/").text
