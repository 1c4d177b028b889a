"""End to end through the CLI on generated scenes: every classic kind and a fusion are added to an
index, searched, evaluated, kept up to date when images are added, and fail with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import matchlens
from matchlens.classic.features import LocalFeatureStore
from matchlens.classic.kinds import open_kind
from tests.conftest import make_scene, run_cli

# Small codebooks: 10 scenes of 320x240 have a few thousand descriptors in all.
KINDS = {
    "bow": "k=64,niter=4",
    "vlad": "k=8,niter=4,dim=8",
    "densevlad": "k=8,niter=4,dim=8,dense_step=16",
    "asmk": "k=64,niter=4",
}


@pytest.fixture(scope="module")
def scene_set(tmp_path_factory) -> Path:
    """10 scenes, a gt.json whose queries are altered views of 4 of them (not indexed)."""
    root = tmp_path_factory.mktemp("classic_set")
    (root / "images").mkdir()
    (root / "queries").mkdir()
    names = [f"scene_{i:02d}.jpg" for i in range(10)]
    for i, name in enumerate(names):
        make_scene(700 + i).save(root / "images" / name, quality=92)
    for i in range(4):  # a crop of the middle, enlarged back: same content, different scale and framing
        make_scene(700 + i).crop((30, 20, 290, 220)).resize((320, 246)).save(root / "queries" / f"q{i}.jpg", quality=90)
    queries = [{"image": names[i], "positives": [], "junk": []} for i in range(4)]
    (root / "gt.json").write_text(json.dumps({"images": names, "queries": queries}))
    return root


@pytest.fixture(scope="module")
def classic_index(tmp_path_factory, scene_set) -> Path:
    """An index of the scenes with every classic kind added through ``matchlens encode``."""
    from matchlens.cli import main

    index_dir = tmp_path_factory.mktemp("classic_idx") / "index"
    matchlens.build_index(scene_set / "images", index_dir, spec=matchlens.PipelineSpec(max_side=128))
    for kind, params in KINDS.items():
        try:
            main(["encode", str(index_dir), "--kind", kind, "--params", params, "-q"])
        except SystemExit as done:  # main exits only on failure
            raise AssertionError(f"encode --kind {kind} failed with exit code {done.code}") from None
    return index_dir


def top(capsys, index_dir: Path, query: Path, *options: str) -> list[dict]:
    code, out, err = run_cli(capsys, "search", index_dir, query, "--json", "-k", 3, *options)
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_finds_the_scene_of_an_altered_view(capsys, classic_index, scene_set, kind):
    for i in range(4):
        results = top(capsys, classic_index, scene_set / "queries" / f"q{i}.jpg", "--kind", kind)
        assert Path(results[0]["path"]).name == f"scene_{i:02d}.jpg", (kind, i, results)
        assert results[0]["score"] > results[1]["score"]


def test_fused_search_and_box_query(capsys, classic_index, scene_set):
    for fusion in ("cnn+asmk", "cnn@0.7+bow@0.3:mean_power:gamma=0.5", "cnn+vlad+asmk:min_max:alpha=0.3,norm=rank"):
        results = top(capsys, classic_index, scene_set / "queries" / "q2.jpg", "--fuse", fusion)
        assert Path(results[0]["path"]).name == "scene_02.jpg", (fusion, results)
    api = matchlens.api.search(classic_index, scene_set / "queries" / "q2.jpg", k=1, fuse="cnn+asmk:mean_power")
    assert Path(api[0].path).name == "scene_02.jpg"
    # a box query: the scene file itself with a box around its middle
    results = top(capsys, classic_index, scene_set / "images" / "scene_03.jpg", "--fuse", "cnn+asmk",
                  "--box", "40,30,280,210")
    assert Path(results[0]["path"]).name == "scene_03.jpg"


def test_kinds_listing(capsys, classic_index):
    code, out, err = run_cli(capsys, "kinds", classic_index, "--json")
    assert code == 0, err
    listed = {k["name"]: k for k in json.loads(out)}
    assert set(listed) == set(KINDS)
    assert listed["asmk"]["params"]["bits"] == 128 and listed["asmk"]["params"]["k"] == 64
    assert all(k["up_to_date"] and k["images"] == 10 for k in listed.values())
    # ASMK stores one 128-bit code and a word id per (image, word): far below the raw features
    assert listed["asmk"]["bytes_per_image"] < listed["vlad"]["bytes_per_image"]


def test_eval_with_a_kind_and_a_fusion(capsys, classic_index, scene_set, tmp_path):
    # queries of the set are indexed images: each must find itself (ignored) and have no positives,
    # so build a set whose queries are the altered views with their scene as positive
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    names = []
    for path in sorted((scene_set / "images").iterdir()) + sorted((scene_set / "queries").iterdir()):
        (root / "images" / path.name).symlink_to(path)
        names.append(path.name)
    queries = [{"image": f"q{i}.jpg", "positives": [f"scene_{i:02d}.jpg"], "junk": []} for i in range(4)]
    (root / "gt.json").write_text(json.dumps({"images": names, "queries": queries}))
    index_dir = tmp_path / "idx"
    matchlens.build_index(root / "images", index_dir, spec=matchlens.PipelineSpec(max_side=128))
    code, out, err = run_cli(capsys, "encode", index_dir, "--kind", "asmk", "--params", KINDS["asmk"], "-q")
    assert code == 0, err
    # asmk was added above; bow is missing and is added by eval itself, with a codebook fitted to the set
    for option, kind in ((["--kind", "asmk"], "asmk"), (["--fuse", "cnn+bow:ghm"], "bow")):
        code, out, err = run_cli(capsys, "eval", root, "--index", index_dir, "--json", "-q", *option)
        assert code == 0, err
        result = json.loads(out)
        assert result["summary"]["mAP"] == pytest.approx(100.0)
        assert kind in result["pipeline"] and ("ghm" in result["pipeline"]) == (option[0] == "--fuse")
    (bow,) = [k for k in matchlens.api.list_kinds(index_dir) if k.name == "bow"]
    assert 16 <= bow.params["k"] < 65536 and bow.up_to_date


def test_adding_images_encodes_only_the_new_ones_and_reuses_cached_features(capsys, classic_index, tmp_path):
    extra = tmp_path / "extra.jpg"
    make_scene(9999).save(extra, quality=92)
    code, out, err = run_cli(capsys, "add", classic_index, extra, "-q")
    assert code == 0, err
    index = matchlens.open_index(classic_index)
    before = {p.name for p in (classic_index / "cache" / "local_features").rglob("*.npz")}
    code, out, err = run_cli(capsys, "encode", classic_index, "-q")  # no --kind: update every kind
    assert code == 0, err
    for kind in ("bow", "asmk"):
        folder = next((classic_index / "kinds" / kind).glob(f"built-{index.generation}-*"))
        built = json.loads((folder / "built.json").read_text())
        assert built == {**built, "images": 11, "encoded": 1, "reused": 10}
    after = {p.name for p in (classic_index / "cache" / "local_features").rglob("*.npz")}
    assert len(after - before) == 1  # one new image: one new feature file, the others were read back
    results = top(capsys, classic_index, extra, "--kind", "asmk")
    assert Path(results[0]["path"]).name == "extra.jpg"


def test_a_stale_kind_is_refreshed_when_opened(tmp_path, scene_set):
    index_dir = tmp_path / "idx"
    index = matchlens.build_index(sorted((scene_set / "images").iterdir())[:6], index_dir,
                                  spec=matchlens.PipelineSpec(max_side=128))
    matchlens.api.encode(index_dir, "bow", params={"k": 32, "niter": 3})
    index, _ = index.add([str(scene_set / "images" / "scene_07.jpg")])
    kind = open_kind(index, "bow")
    assert len(kind.codes) == 7
    LocalFeatureStore._query_memo.clear()
    scores = kind.scores(kind.query_code(str(scene_set / "images" / "scene_07.jpg")))
    assert index.entry_for_row(int(np.argmax(scores))).path.endswith("scene_07.jpg")


def test_one_line_errors(capsys, classic_index, scene_set):
    query = scene_set / "queries" / "q0.jpg"
    cases = [
        (["search", classic_index, query, "--kind", "fisher"], "no descriptor kind 'fisher'"),
        (["search", classic_index, query, "--kind", "asmk", "--fuse", "cnn+asmk"], "not both"),
        (["search", classic_index, query, "--fuse", "cnn+asmk:median"], "unknown fusion operator"),
        (["encode", classic_index, "--kind", "fisher"], "unknown encoding"),
        (["encode", classic_index, "--kind", "bow", "--params", "k=32"], "--retrain"),
        (["encode", classic_index, "--kind", "vlad", "--name", "cnn"], "invalid kind name"),
        (["encode", classic_index, "--kind", "bow", "--name", "tiny", "--params", "k=100000", "-q"], "visual words"),
    ]
    for args, message in cases:
        code, out, err = run_cli(capsys, *args)
        assert code == 2, (args, out, err)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], (args, err)
    assert not (classic_index / "kinds" / "tiny").exists()  # a failed new kind leaves nothing behind


def test_search_parameters_change_without_re_encoding(tmp_path, scene_set):
    index_dir = tmp_path / "idx"
    matchlens.build_index(scene_set / "images", index_dir, spec=matchlens.PipelineSpec(max_side=128))
    (first,) = matchlens.api.encode(index_dir, "vlad", params={"k": 8, "niter": 3, "dim": 8})
    (second,) = matchlens.api.encode(index_dir, "vlad", params={"dim": 4, "power": 0.25})
    assert second.params == {**first.params, "dim": 4, "power": 0.25}
    built = next((index_dir / "kinds" / "vlad").glob("built-*"))
    assert json.loads((built / "built.json").read_text())["reused"] == 10  # same codebook: no image re-encoded
    assert np.load(built / "data_vectors.npy").shape == (10, 4)
    with pytest.raises(matchlens.MatchlensError, match="--retrain"):
        matchlens.api.encode(index_dir, "vlad", params={"k": 16})
