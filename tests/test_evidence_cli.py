"""End to end through the CLI: train-verifier on generated scenes, explain, search --rerank indicative --explain."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from matchlens.evidence import EvidenceModel
from matchlens.rerank import Shortlist, parse_chain
from tests.conftest import run_cli


# ``verifier`` (a tiny checkpoint trained through the CLI) comes from conftest.py.


def test_train_verifier_writes_a_checkpoint_with_its_configuration(verifier, scenes_dir):
    model = EvidenceModel.load(verifier, device="cpu")
    assert (model.config.rows, model.config.cols, model.config.patch_px) == (4, 4, 6)
    assert model.config.metrics == ("cosine", "euclidean", "mahalanobis")
    assert model.meta["pairs"] == 24 and "label-free" in model.meta["origin"]
    assert len(model.meta["history"]) == 1


def test_explain_writes_side_by_side_png(capsys, verifier, built_index, scenes_dir, tmp_path):
    png = tmp_path / "e.png"
    code, out, err = run_cli(capsys, "explain", built_index.root, scenes_dir / "scene_03.jpg", "scene_05.jpg",
                             "--model", verifier, "--out", png)
    assert code == 0, err
    assert "score" in out and png.is_file()
    image = Image.open(png)
    assert image.width > image.height  # two panels side by side
    # the two halves are heatmap overlays: strongly coloured, unlike the source scene alone
    assert np.asarray(image).std() > 10


def test_search_rerank_indicative_and_explain_dir(capsys, verifier, built_index, scenes_dir, tmp_path):
    folder = tmp_path / "ev"
    code, out, err = run_cli(capsys, "search", built_index.root, scenes_dir / "scene_02.jpg", "-k", "4", "--json",
                             "--rerank", f"indicative:k=6,model={verifier}", "--explain", folder)
    assert code == 0, err
    results = json.loads(out)
    assert len(results) == 4
    assert all(r["score"] >= 1.0 for r in results)  # re-scored entries sit above cosine scores
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert sorted(p.name[:3] for p in folder.glob("*.png")) == ["001", "002", "003", "004"]


def test_indicative_reranker_orders_by_verifier_and_supports_prf(verifier, built_index, scenes_dir):
    from matchlens.pipeline.context import IndexContext
    from matchlens.rerank import QueryInput

    reranker = parse_chain(f"indicative:k=5,model={verifier},prf=max,prf_k=2")[0]
    query = Image.open(scenes_dir / "scene_01.jpg").convert("RGB")
    shortlist = Shortlist(np.arange(8), np.linspace(0.9, 0.2, 8))
    new = reranker.rerank(QueryInput(vector=np.zeros(4, np.float32), image=query), shortlist, IndexContext(built_index.store))
    assert sorted(new.rows[:5].tolist()) == list(range(5)) and new.rows[5:].tolist() == [5, 6, 7]
    probs = [reranker.last_scores[r] for r in new.rows[:5].tolist()]
    assert probs == sorted(probs, reverse=True)
    np.testing.assert_allclose(new.scores[:5], 1.0 + np.array(probs), rtol=1e-5)
    assert reranker.last_query_mask is not None and reranker.last_query_mask.shape == (4, 4)


def test_bad_verifier_inputs_give_one_line_errors(capsys, built_index, scenes_dir, tmp_path):
    code, _, err = run_cli(capsys, "search", built_index.root, scenes_dir / "scene_02.jpg", "--rerank", "indicative:k=3")
    assert code == 2 and "model=PATH is required" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "search", built_index.root, scenes_dir / "scene_02.jpg", "--explain", tmp_path / "ev",
                           "--explain-model", tmp_path / "missing.pt")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("nope")
    code, _, err = run_cli(capsys, "explain", built_index.root, scenes_dir / "scene_02.jpg", "scene_03.jpg",
                           "--model", bogus)
    assert code == 2 and "not a readable verifier checkpoint" in err
    code, _, err = run_cli(capsys, "train-verifier", scenes_dir, "--out", tmp_path / "x.pt", "--grid", "4by4", "-q")
    assert code == 2 and "ROWSxCOLS" in err
