"""The robustness catalogue (benchmarks/robustness.py): a fast subset of its cases must pass (no
traceback, the contract's exit codes, no index losing images), and regressions for each
'internal error' it found in the CLI's own layers (train, train-verifier, explain, --scales)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from matchlens.errors import ConfigError
from tests.conftest import make_scene

ROOT = Path(__file__).resolve().parents[1]


def _load_catalogue():
    spec = importlib.util.spec_from_file_location("robustness", ROOT / "benchmarks" / "robustness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("robustness", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


robustness = _load_catalogue()

# Cases that run in about a second each (no model load), plus one of each fixed internal error
# that is quick through the real process. The whole catalogue: python benchmarks/robustness.py.
FAST_CLI = [
    "search query: corrupt-jpeg", "search query: empty", "search query: bomb", "search query: png16",
    "search query: cmyk", "search query: gif", "search query: sparse", "search query: fifo", "search query: loop",
    "search query: broken-link", "search query: non-utf8", "search query: dir-jpg",
    "search name: percent", "search name: leading-dash", "query path component over 255 bytes",
    "search query ''", "remove '' (cwd = the images' folder)", "remove /nonexistent",
    "search -k 0", "box 'a,b,c,d'", "box nan", "box outside the image", "rerank sv:k=abc", "search --kind and --fuse",
    "search query is a folder", "search --boxes not JSON",
    "search: corrupted manifest", "search: CURRENT pointing nowhere", "search: truncated vectors.npy",
    "remove IDX / (no confirmation)", "remove IDX <every image's folder> (no confirmation)",
    # fixed here (they ended in 'matchlens: internal error' with exit 1)
    "search --explain into a file", "search --explain under a file", "train-verifier --device nope",
    # fixed in the pipeline, the demo and the FAISS backend (the catalogue listed them as open)
    "index -i ''", "demo into a file", "index --factory HNSW0", "rerank ',' (an empty chain)",
    "index path inside the source folder, run twice",
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return robustness.prepare(tmp_path_factory.mktemp("robustness"))


def _failures(results):
    return [(case.name, outcome.code, robustness.problems(outcome), outcome.output[-400:])
            for case, outcome in results if outcome.failed]


def test_catalogue_is_data_and_large():
    cases = robustness.catalogue()
    names = [c.name for c in cases]
    assert len(cases) >= 70 and len(set(names)) == len(names)
    assert {c.category for c in cases} == set(robustness.CATEGORIES)
    assert all(c.expect and c.kind in ("cli", "api", "http") for c in cases)
    assert not set(FAST_CLI) - set(names), "a FAST_CLI name is not in the catalogue"
    assert all(c.fixed for c in cases if c.name in FAST_CLI)
    assert all(c.note.startswith("open:") for c in cases if not c.fixed)  # each known failure says where


def test_fast_cli_cases_pass(shared):
    cases = [c for c in robustness.catalogue() if c.name in FAST_CLI]
    results = robustness.run_all(cases, shared, jobs=2)
    assert not _failures(results)
    total = robustness.counts(results)["total"]
    assert total["traceback"] == total["wrong exit"] == total["internal"] == total["data lost"] == total["hang"] == 0


def test_api_and_http_cases_pass(shared):
    cases = [c for c in robustness.catalogue() if c.kind in ("api", "http") and c.fixed]
    results = robustness.run_all(cases, shared, jobs=1)
    assert not _failures(results)
    total = robustness.counts(results)["total"]
    assert total["traceback"] == total["wrong exit"] == total["data lost"] == 0


# --- regressions: each was 'matchlens: internal error' (exit 1) or a silently accepted mistake ------
def _train_config(tmp_path, **options):
    from matchlens.train import TrainConfig

    return TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), **options)


@pytest.mark.parametrize("lr", [-1.0, 0.0, math.nan, math.inf])
def test_train_rejects_a_bad_learning_rate(tmp_path, lr):
    with pytest.raises(ConfigError, match="lr must be a positive number"):  # was torch's ValueError
        _train_config(tmp_path, lr=lr)


def test_train_rejects_an_out_that_is_a_file(tmp_path):
    from matchlens.train import TrainConfig

    existing = tmp_path / "photo.jpg"
    existing.write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file"):  # was FileExistsError from mkdir
        TrainConfig(data=str(tmp_path), out=str(existing))


def test_train_rejects_negative_min_inliers(tmp_path):
    with pytest.raises(ConfigError, match="min_inliers"):
        _train_config(tmp_path, positives="sv", min_inliers=-1)


def test_empty_scales_are_an_error_not_the_default():
    from matchlens.config import parse_scales

    assert parse_scales(None) is None
    for text in ("", "  "):
        with pytest.raises(ConfigError, match="empty scales"):  # was None: the preset's scales, silently
            parse_scales(text)


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        make_scene(i, (96, 72)).save(folder / f"p{i}.jpg")
    return folder


@pytest.mark.parametrize("options, message", [
    ({"device": "nope"}, "unknown device"),  # was RuntimeError from torch.device
    ({"grid": (1000, 1000)}, "at most 1024"),  # was an allocation of terabytes failing inside torch
    ({"lr": math.nan}, "lr must be a positive number"),  # was torch's ValueError
])
def test_train_verifier_checks_its_settings_before_training(tmp_path, photos, options, message):
    from matchlens.evidence.config import VerifierConfig
    from matchlens.evidence.train import TrainSettings
    from matchlens.explain.workflows import train_from_source

    rows, cols = options.get("grid", (2, 2))
    with pytest.raises(ConfigError, match=message):
        train_from_source(photos, tmp_path / "v.pt", VerifierConfig(rows=rows, cols=cols, patch_px=4),
                          TrainSettings(epochs=1, batch=2, lr=options.get("lr", 1e-3)), pairs=4,
                          device=options.get("device"))


def test_train_verifier_without_cuda_says_so(tmp_path, photos):
    import torch

    from matchlens.explain.workflows import train_from_source

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="no CUDA device"):  # was torch's RuntimeError (no NVIDIA driver)
        train_from_source(photos, tmp_path / "v.pt", pairs=4, device="cuda")


@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_train_verifier_checks_out_before_training(tmp_path, photos, where):
    from matchlens.explain.workflows import train_from_source

    out = tmp_path if where == "folder" else photos / "p0.jpg" / "v.pt"
    with pytest.raises(ConfigError, match="is a folder" if where == "folder" else "cannot create"):
        # was IsADirectoryError / NotADirectoryError after the whole training
        train_from_source(photos, out, pairs=4)


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_explain_search_folder_that_cannot_be_created(tmp_path, photos, where):
    from matchlens.explain.workflows import explain_search

    query = photos / "p0.jpg"
    folder = query if where == "a file" else query / "evidence"
    with pytest.raises(ConfigError, match="cannot create the evidence folder"):  # was FileExistsError / NotADirectoryError
        explain_search(query, [(str(photos / "p1.jpg"), 0.5)], folder)


def test_explain_output_file_checks(tmp_path):
    from matchlens.explain.workflows import _output_file

    with pytest.raises(ConfigError, match="is a folder.*evidence.png"):  # `explain -o FOLDER` was IsADirectoryError
        _output_file(tmp_path, "evidence PNG", "evidence.png")
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    with pytest.raises(ConfigError, match="cannot create"):
        _output_file(blocker / "e.png", "evidence PNG", "evidence.png")
    assert _output_file(tmp_path / "new" / "e.png", "evidence PNG", "evidence.png").parent.is_dir()
