"""The ensemble descriptor kind (P4) end to end through the CLI: stored beside an index of the
embedded Lite0 at 128 px with a second pipeline of the same network (GeM at 96 px, so no other
weights are needed), equal to :class:`matchlens.ensemble.Ensemble` computed by hand, searched,
kept up to date when images are added, and refused in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import matchlens
from matchlens.classic.kinds import open_kind
from matchlens.config import PipelineSpec
from matchlens.ensemble import Ensemble
from matchlens.extract import Extractor
from tests.conftest import make_scene, run_cli

SECOND = "backbone=tf_efficientnet_lite0,pooling=gem,max_side=96"


@pytest.fixture(scope="module")
def ensemble_index(tmp_path_factory, built_index) -> Path:
    """A copy of the session's index (10 scenes) with the ensemble kind added through ``matchlens encode``."""
    from matchlens.cli import main

    index_dir = tmp_path_factory.mktemp("ensemble_idx") / "index"
    shutil.copytree(built_index.root, index_dir)
    try:
        main(["encode", str(index_dir), "--kind", "ensemble", "--params", SECOND, "-q"])
    except SystemExit as done:  # main exits only on failure
        raise AssertionError(f"encode --kind ensemble failed with exit code {done.code}") from None
    return index_dir


def by_hand(index_dir: Path, dim: int, power: float = 0.25, weight: float = 1.0) -> np.ndarray:
    """The ensemble vectors from the two pipelines' descriptors: the index's stored raw ones and
    the second pipeline's computed here, in the index's row order."""
    store = matchlens.open_index(index_dir).store
    paths = [store.entry_for_row(r).path for r in range(store.size)]
    second = np.stack([d.vector for d in Extractor(PipelineSpec(max_side=96, pooling_params={})).describe_files(paths)])
    parts = [np.asarray(store.descriptors(), np.float32), second]
    return Ensemble(dim, power, [1.0, weight]).fit(parts).transform(parts)


def top(capsys, index_dir: Path, query: Path) -> list[dict]:
    code, out, err = run_cli(capsys, "search", index_dir, query, "--kind", "ensemble", "--json", "-k", 3)
    assert code == 0, err
    return json.loads(out)


def test_stored_vectors_are_the_ensemble_of_the_two_pipelines(capsys, ensemble_index):
    kind = open_kind(matchlens.open_index(ensemble_index).store, "ensemble", refresh=False)
    vectors = np.asarray(kind.data["vectors"])
    assert vectors.shape == (10, 9)  # dim: 256 at most, and at most the number of images - 1
    assert np.abs(vectors - by_hand(ensemble_index, 9)).max() < 1e-5
    code, out, err = run_cli(capsys, "kinds", ensemble_index, "--json")
    listed = {k["name"]: k for k in json.loads(out)}
    assert code == 0 and listed["ensemble"]["type"] == "ensemble" and listed["ensemble"]["up_to_date"]


def test_search_by_the_ensemble_finds_each_image_first(capsys, ensemble_index, scenes_dir):
    for i in (0, 4, 7):
        results = top(capsys, ensemble_index, scenes_dir / f"scene_{i:02d}.jpg")
        assert Path(results[0]["path"]).name == f"scene_{i:02d}.jpg", results
        assert results[0]["score"] > results[1]["score"]
    code, out, err = run_cli(capsys, "search", ensemble_index, scenes_dir / "scene_02.jpg", "--fuse", "cnn+ensemble",
                             "--json", "-k", 1)
    assert code == 0 and Path(json.loads(out)[0]["path"]).name == "scene_02.jpg", err


def test_added_images_are_encoded_and_the_pca_refitted(capsys, ensemble_index, tmp_path):
    index_dir = tmp_path / "index"
    shutil.copytree(ensemble_index, index_dir)
    extra = tmp_path / "extra.jpg"
    make_scene(42).save(extra, quality=92)
    code, _, err = run_cli(capsys, "add", index_dir, extra, "-q")
    assert code == 0, err
    code, out, err = run_cli(capsys, "encode", index_dir, "-q")  # updates every stored kind
    assert code == 0, err
    built = json.loads(next((index_dir / "kinds" / "ensemble").glob("built-*/built.json")).read_text())
    assert (built["images"], built["encoded"], built["reused"]) == (11, 1, 10)
    assert Path(top(capsys, index_dir, extra)[0]["path"]).name == "extra.jpg"
    # dim, power and weight only shape the PCA: changed without describing any image again
    code, _, err = run_cli(capsys, "encode", index_dir, "--kind", "ensemble", "--params", "dim=6,power=0.5,weight=2", "-q")
    assert code == 0, err
    built = json.loads(next((index_dir / "kinds" / "ensemble").glob("built-*/built.json")).read_text())
    assert (built["encoded"], built["reused"]) == (0, 11)
    kind = open_kind(matchlens.open_index(index_dir).store, "ensemble", refresh=False)
    assert np.abs(np.asarray(kind.data["vectors"]) - by_hand(index_dir, 6, power=0.5, weight=2.0)).max() < 1e-5


def test_refusals_are_one_line(capsys, ensemble_index):
    cases = [
        ("preset=nope", "unknown preset 'nope'"),
        ("backbone=nonet", "unknown backbone 'nonet'"),
        ("max_side=64", "needs its second pipeline"),
        ("backbone=tf_efficientnet_lite0,max_side=128", "is the index's own"),
        (f"{SECOND},dim=20", "needs at least 21 images; the index has 10"),
        (f"{SECOND},weight=0", "weight must be"),
    ]
    for params, message in cases:
        code, out, err = run_cli(capsys, "encode", ensemble_index, "--kind", "ensemble", "--name", "e2",
                                 "--params", params, "-q")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (params, out, err)
    assert not (ensemble_index / "kinds" / "e2").exists()  # a refused kind leaves nothing behind


def test_the_library_registers_the_kind_on_import():
    """`matchlens encode --kind ensemble` in a fresh process finds the kind (api imports the package)."""
    code = "import matchlens.api; from matchlens.classic import ENCODINGS; assert 'ensemble' in ENCODINGS"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
