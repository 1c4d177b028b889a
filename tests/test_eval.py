"""`matchlens eval`: protocols, agreement with the independent checker, reports, regression guard."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import matchlens
from matchlens.evaluate.protocol import query_metrics, select_queries
from matchlens.io.datasets import Query
from matchlens.io.formats import load_gt_json
from tests.conftest import SHARED_DATA, make_scene, run_cli

CHECKER = SHARED_DATA.parent / "tools" / "map_from_search.py"
EXPECTED = Path(__file__).parent / "expected" / "oxford5k_subset_default.json"


@pytest.fixture(scope="module")
def toy_set(tmp_path_factory) -> Path:
    """A gt.json set of 4 groups x 3 views of generated scenes, with boxes on two queries."""
    from PIL import Image

    root = tmp_path_factory.mktemp("toyset")
    (root / "images").mkdir()
    images, queries = [], []
    for g in range(4):
        base = make_scene(500 + g, size=(320, 240))
        views = [base, base.crop((20, 10, 300, 230)).resize((320, 240)), base.rotate(8, fillcolor=(120, 120, 120))]
        names = [f"g{g}_{v}.jpg" for v in range(3)]
        for view, name in zip(views, names):
            view.save(root / "images" / name, quality=90)
        images += names
        queries.append({"image": names[0], "positives": names[1:], "junk": [], "group": f"g{g}",
                        **({"official_query": True, "official_bbox_xyxy_original_res": [0, 0, 1024, 768]} if g < 2 else {})})
    for i in range(6):
        Image.fromarray(__import__("numpy").asarray(make_scene(900 + i))).save(root / "images" / f"d{i}.jpg")
        images.append(f"d{i}.jpg")
    queries[3]["junk"] = ["d0.jpg"]
    (root / "gt.json").write_text(json.dumps({"images": images, "queries": queries, "original_longest_side": 1024}))
    return root


@pytest.fixture(scope="module")
def toy_index(tmp_path_factory, toy_set):
    return matchlens.build_index(toy_set / "images", tmp_path_factory.mktemp("toyidx") / "index",
                                 spec=matchlens.PipelineSpec(max_side=128))


def test_query_metrics_follow_the_ground_truth_about_the_query_itself():
    q = Query("q.jpg", frozenset({"a", "b"}), frozenset({"j"}), None, None, False)
    m = query_metrics(q, ["q.jpg", "a", "j", "x", "b"])  # the query is ignored, the junk too
    assert m["AP"] == pytest.approx((1 + 1) / 4 + (0.5 + 2 / 3) / 4)
    assert m["P@1"] == 1.0 and m["R@1"] == 1.0
    self_positive = Query("q.jpg", frozenset({"q.jpg", "a"}), frozenset(), None, None, True)
    assert query_metrics(self_positive, ["q.jpg", "a", "x"])["AP"] == 1.0  # classic Oxford: the query counts


def test_protocol_selection_and_labels(toy_set):
    dataset = load_gt_json(toy_set)
    assert len(select_queries(dataset, "cropped")) == 2 and len(select_queries(dataset, "full")) == 4
    with pytest.raises(matchlens.MatchlensError, match="protocol"):
        select_queries(dataset, "both")


def test_eval_agrees_with_the_independent_checker(toy_set, toy_index):
    """The done-criterion of the evaluation issue, on a small set: eval == map_from_search to 0.01."""
    if not CHECKER.is_file():
        pytest.skip("../shared/tools/map_from_search.py is not present")
    [evaluation] = matchlens.evaluate_dataset(toy_set, toy_index.root, protocols=["full"])
    exe = str(Path(sys.executable).with_name("matchlens"))
    out = subprocess.run([sys.executable, str(CHECKER), exe, str(toy_index.root), str(toy_set)],
                         capture_output=True, text=True, check=True)
    assert abs(float(out.stdout.strip()) - evaluation.summary["mAP"]) < 0.01
    assert 0 < evaluation.summary["mAP"] <= 100


def test_cli_eval_table_json_and_report(capsys, toy_set, toy_index, tmp_path):
    code, out, err = run_cli(capsys, "eval", toy_set, "--index", toy_index.root, "--protocol", "cropped",
                             "--protocol", "full", "-q")
    assert code == 0, err
    assert "cropped to their boxes (standard protocol)" in out and "not the standard" in out and "mAP" in out
    code, out, _ = run_cli(capsys, "eval", toy_set, "--index", toy_index.root, "--protocol", "full", "--json",
                           "--report", tmp_path / "report")
    data = json.loads(out)
    assert data["protocol"].startswith("4 full-image queries") and len(data["queries"]) == 4
    assert {"AP", "P@1", "P@5", "AP@10", "R@1"} <= set(data["queries"][0])
    assert math.isclose(data["summary"]["mAP"], 100 * sum(q["AP"] for q in data["queries"]) / 4, abs_tol=1e-9)
    for name in ("summary.json", "per_query.csv", "pr_curves.png", "worst_queries.html", "index.html"):
        assert (tmp_path / "report" / name).is_file(), name


def test_eval_refuses_an_index_without_the_dataset_images(capsys, toy_set, tmp_path, scenes_dir):
    other = matchlens.build_index(scenes_dir, tmp_path / "other", spec=matchlens.PipelineSpec(max_side=96))
    code, _, err = run_cli(capsys, "eval", toy_set, "--index", other.root, "-q")
    assert code == 2 and "lacks" in err and "Traceback" not in err


@pytest.mark.slow
def test_regression_guard_default_preset_on_oxford5k_subset(shared_data, tmp_path):
    """Fails when the default preset loses more than 1 mAP point on oxford5k_subset."""
    expected = json.loads(EXPECTED.read_text())
    assert expected["preset"] == "default" and expected["pipeline"] == matchlens.spec_from_preset("default").describe()
    evaluations = matchlens.evaluate_dataset(shared_data / "oxford5k_subset", tmp_path / "index", protocols=["full", "cropped"])
    measured = {e.protocol.split(" (")[0]: e.summary["mAP"] for e in evaluations}
    for protocol, value in expected["mAP"].items():
        assert measured[protocol] >= value - 1.0, f"{protocol}: mAP {measured[protocol]:.2f} < expected {value:.2f} - 1"
