"""The one search pipeline: every caller ranks the same way, steps are timed, batches answer
many queries with one model load and survive a bad query."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import matchlens
from matchlens.evaluate.protocol import evaluate_index
from matchlens.io.datasets import Dataset, Query as GtQuery
from matchlens.pipeline import Query, SearchPipeline, SearchResponse, read_queries
from tests.conftest import make_scene, run_cli


def test_run_reports_each_step_and_the_same_ranking_as_search(built_index, scenes_dir) -> None:
    query = scenes_dir / "scene_03.jpg"
    fresh = matchlens.open_index(built_index.root)
    answer = fresh.pipeline.run(Query(query), k=5)
    assert isinstance(answer, SearchResponse)
    assert {"load_model", "decode", "extract", "search", "rerank", "total"} <= set(answer.timings_ms)
    assert answer.timings_ms["total"] >= answer.timings_ms["extract"] > 0
    assert [r.path for r in answer.results] == [r.path for r in built_index.search(query, k=5)]
    assert answer.results[0].path == str(query.resolve())
    again = fresh.pipeline.run(Query(query), k=5)  # memoised vector: no decode, no extraction, no model load
    assert again.timings_ms["extract"] == 0.0 and "load_model" not in again.timings_ms
    line = answer.to_dict()
    assert line["query"] == str(query) and [r["rank"] for r in line["results"]] == [1, 2, 3, 4, 5]


def test_rank_head_does_not_depend_on_depth(built_index, scenes_dir) -> None:
    query = scenes_dir / "scene_07.jpg"
    short = built_index.rank(query, depth=3, rerank="aqe:k=2")
    full = built_index.rank(query, depth=built_index.size, rerank="aqe:k=2")
    assert short.rows[:3].tolist() == full.rows[:3].tolist()


def test_evaluation_ranks_exactly_as_search(built_index, scenes_dir) -> None:
    images = sorted(p.name for p in scenes_dir.glob("*.jpg"))
    queries = tuple(GtQuery(image=name, positives=frozenset({name}), junk=frozenset(), group=None, box=None,
                            official=False) for name in images[:4])
    dataset = Dataset(name="scenes", root=scenes_dir, image_dir=scenes_dir, images=tuple(images), queries=queries)
    evaluation = evaluate_index(built_index.pipeline, dataset, "full")
    for outcome in evaluation.outcomes:
        ranked = built_index.search(scenes_dir / outcome.query.image, k=built_index.size)
        assert outcome.ranking == [Path(r.path).name for r in ranked]
    assert evaluation.summary["mAP"] == pytest.approx(100.0)


def test_run_many_equals_one_by_one(built_index, scenes_dir) -> None:
    queries = [Query(p) for p in sorted(scenes_dir.glob("*.jpg"))[:3]]
    batch = list(built_index.pipeline.run_many(queries, k=4, rerank="alpha_qe:k=3"))
    for query, answer in zip(queries, batch):
        single = built_index.search(query.source, k=4, rerank="alpha_qe:k=3")
        assert [(r.id, round(r.score, 5)) for r in answer.results] == [(r.id, round(r.score, 5)) for r in single]
        assert answer.rerank and answer.rerank.startswith("alpha_qe")


def test_read_queries_attaches_boxes_by_name_and_rejects_strangers(tmp_path, scenes_dir) -> None:
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"scene_01.jpg": [10, 10, 90, 90]}))
    queries = read_queries(scenes_dir, boxes)
    boxed = {Path(q.source).name: q.box for q in queries if q.box is not None}
    assert boxed == {"scene_01.jpg": (10.0, 10.0, 90.0, 90.0)}
    boxes.write_text(json.dumps({"nope.jpg": [0, 0, 5, 5]}))
    with pytest.raises(matchlens.MatchlensError, match="not queries"):
        read_queries(scenes_dir, boxes)
    boxes.write_text(json.dumps({"scene_01.jpg": [50, 10, 20, 90]}))
    with pytest.raises(matchlens.MatchlensError, match="box"):
        read_queries(scenes_dir, boxes)


def test_cli_batch_search_one_json_line_per_query_and_bad_queries_reported(capsys, tmp_path, built_index,
                                                                          scenes_dir) -> None:
    folder = tmp_path / "queries"
    folder.mkdir()
    for i in (2, 4):
        make_scene(i).save(folder / f"q{i}.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    (tmp_path / "boxes.json").write_text(json.dumps({"q4.jpg": "0,0,200,150"}))
    code, out, err = run_cli(capsys, "search", built_index.root, "--queries", folder, "--boxes",
                             tmp_path / "boxes.json", "-k", "3", "-q")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [Path(line["query"]).name for line in lines] == ["broken.jpg", "q2.jpg", "q4.jpg"]
    assert "error" in lines[0] and "Traceback" not in err
    assert Path(lines[1]["results"][0]["path"]).name == "scene_02.jpg"
    assert lines[2]["box"] == [0.0, 0.0, 200.0, 150.0] and len(lines[2]["results"]) == 3
    assert {"decode", "extract", "search", "total"} <= set(lines[1]["timings_ms"])
    assert code == 2 and "1 of 3 queries failed" in err


def test_cli_batch_and_single_query_options_are_exclusive(capsys, built_index, scenes_dir) -> None:
    code, _, err = run_cli(capsys, "search", built_index.root, scenes_dir / "scene_01.jpg", "--queries", scenes_dir)
    assert code == 2 and "not both" in err
    code, _, err = run_cli(capsys, "search", built_index.root)
    assert code == 2 and "--queries" in err
    code, _, err = run_cli(capsys, "search", built_index.root, "--queries", scenes_dir, "--box", "0,0,5,5")
    assert code == 2 and err.count("\n") == 1


def test_single_query_jsonl(capsys, built_index, scenes_dir) -> None:
    code, out, err = run_cli(capsys, "search", built_index.root, scenes_dir / "scene_06.jpg", "-k", "2", "--jsonl")
    assert code == 0, err
    line = json.loads(out)
    assert Path(line["results"][0]["path"]).name == "scene_06.jpg" and "timings_ms" in line


def test_fused_pipeline_shares_the_query_encoder(built_index) -> None:
    assert built_index.searcher(None) is built_index.pipeline
    searcher = built_index.searcher("cnn")
    assert searcher.encoder is built_index.pipeline.encoder and searcher.ranking is None
    assert isinstance(searcher, SearchPipeline) and searcher.describe() == built_index.spec.describe()


def test_exact_flat_is_searched_through_the_backend(built_index) -> None:
    vectors = np.asarray(built_index.vectors()[:2])
    scores, rows = built_index.store.search_vectors(vectors, 3)
    assert rows[:, 0].tolist() == [0, 1] and np.all(np.diff(scores, axis=1) <= 1e-6)
    assert built_index.store._open_searcher().backend.exact


def test_the_index_layer_imports_no_extraction_or_reranking() -> None:
    import subprocess

    # (the spec's validation reads the pooling and whitening registries: names, no maths)
    code = ("import sys, matchlens.index.vectors, matchlens.index.writer; "
            "bad = [m for m in sys.modules if m.startswith(('matchlens.extract', 'matchlens.rerank', "
            "'matchlens.pipeline', 'matchlens.classic', 'matchlens.evidence', 'torch', 'scipy'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
