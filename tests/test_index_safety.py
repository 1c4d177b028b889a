"""A user mistake never costs data, and readers never fail because of a writer.

Regression tests for the failures a hostile test found: str arguments taken as lists of
characters, writers that silently dropped or replaced images, index paths with URI characters,
readers racing commits, and ``--weights`` ignored on an existing index.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest

import matchlens
from matchlens.errors import IndexError_, MatchlensError
from matchlens.index import store
from tests.conftest import make_scene, run_cli


def _paths(index) -> list[str]:
    return sorted(e.path for e in index.entries)


@pytest.fixture()
def idx(tmp_path, built_index) -> Path:
    """A private copy of the session's 10-scene index (tests here write to it)."""
    target = tmp_path / "copy.idx"
    shutil.copytree(built_index.root, target)
    return target


# --- str arguments are one path --------------------------------------------------------------

def test_remove_with_a_str_removes_that_one_path(idx, scenes_dir):
    index = matchlens.open_index(idx)
    new, report = index.remove(str(scenes_dir / "scene_03.jpg"))
    assert report.removed == 1 and new.size == 9
    assert str(scenes_dir / "scene_03.jpg") not in _paths(new)


def test_remove_with_a_str_that_matches_nothing_removes_nothing(idx, scenes_dir, monkeypatch):
    monkeypatch.chdir(scenes_dir)  # "." (one of the characters of "a.jpg") was the folder of every image
    index = matchlens.open_index(idx)
    with pytest.raises(MatchlensError, match="matches"):
        index.remove("a.jpg")  # once: its characters, and "/" matched every image
    assert matchlens.open_index(idx).size == 10


def test_add_with_a_str_adds_that_one_file(idx, tmp_path):
    make_scene(42).save(tmp_path / "new.jpg")
    new, _ = matchlens.open_index(idx).add(str(tmp_path / "new.jpg"))
    assert new.size == 11 and str(tmp_path / "new.jpg") in _paths(new)


def test_add_of_a_missing_str_path_is_refused_without_walking_anything(idx):
    with pytest.raises(MatchlensError, match="no such file"):
        matchlens.open_index(idx).add("a.jpg")
    assert matchlens.open_index(idx).size == 10


def test_add_and_remove_refuse_non_path_arguments(idx):
    index = matchlens.open_index(idx)
    for bad in (3, None, [3]):
        with pytest.raises(TypeError):
            index.add(bad)
        with pytest.raises(TypeError):
            index.remove(bad)


# --- writers that would drop images need a flag --------------------------------------------------

def test_create_index_on_an_existing_index_is_refused_and_keeps_it(idx, small_spec):
    with pytest.raises(IndexError_, match="already"):
        matchlens.create_index(idx, spec=small_spec)
    assert matchlens.open_index(idx).size == 10


def test_building_another_source_onto_an_index_refuses_to_drop_its_images(idx, tmp_path, small_spec):
    other = tmp_path / "other"
    other.mkdir()
    make_scene(50).save(other / "o.jpg")
    with pytest.raises(IndexError_, match="--replace"):
        matchlens.build_index(other, idx, spec=small_spec)
    assert matchlens.open_index(idx).size == 10
    replaced = matchlens.build_index(other, idx, spec=small_spec, replace=True)
    assert _paths(replaced) == [str(other / "o.jpg")]


def test_rebuilding_the_same_source_drops_files_deleted_from_disk(tmp_path, scenes_dir, small_spec):
    photos = tmp_path / "photos"
    shutil.copytree(scenes_dir, photos)
    matchlens.build_index(photos, tmp_path / "i.idx", spec=small_spec)
    (photos / "scene_00.jpg").unlink()
    again = matchlens.build_index(photos, tmp_path / "i.idx", spec=small_spec)  # a sync, not a replacement
    assert again.size == 9


def test_cli_index_other_source_onto_existing_index_exits_2_and_keeps_it(capsys, idx, tmp_path):
    make_scene(51).save(tmp_path / "lone.jpg")
    code, _, err = run_cli(capsys, "index", tmp_path / "lone.jpg", "-i", idx, "-q")
    assert code == 2 and "--replace" in err and "Traceback" not in err
    assert matchlens.open_index(idx).size == 10


def test_cli_remove_of_everything_needs_yes(capsys, idx):
    code, _, err = run_cli(capsys, "remove", idx, "/")
    assert code == 2 and "--yes" in err
    assert matchlens.open_index(idx).size == 10
    code, out, _ = run_cli(capsys, "remove", idx, "/", "--yes")
    assert code == 0 and matchlens.open_index(idx).size == 0


def test_cli_remove_of_one_image_needs_no_confirmation(capsys, idx, scenes_dir):
    code, _, _ = run_cli(capsys, "remove", idx, scenes_dir / "scene_01.jpg")
    assert code == 0 and matchlens.open_index(idx).size == 9


# --- --weights on an existing index ------------------------------------------------------------

def test_other_weights_on_an_existing_index_are_refused_not_ignored(capsys, tmp_path, scenes_dir):
    from matchlens.models import load_backbone

    backbone = load_backbone("tf_efficientnet_lite0")
    import torch

    state = backbone.model.state_dict() if hasattr(backbone, "model") else backbone.state_dict()
    torch.save(state, tmp_path / "a.pt")
    changed = {k: (v + 0.01 if v.is_floating_point() else v) for k, v in state.items()}
    torch.save(changed, tmp_path / "b.pt")
    code, _, err = run_cli(capsys, "index", scenes_dir, "-i", tmp_path / "w.idx", "--max-side", "64",
                           "--weights", tmp_path / "a.pt", "-q")
    assert code == 0, err
    first = matchlens.open_index(tmp_path / "w.idx").spec.weights_id
    code, _, err = run_cli(capsys, "index", scenes_dir, "-i", tmp_path / "w.idx", "--max-side", "64",
                           "--weights", tmp_path / "b.pt", "-q")
    assert code == 2 and "--rebuild" in err and "weights" in err
    assert matchlens.open_index(tmp_path / "w.idx").spec.weights_id == first
    code, _, err = run_cli(capsys, "index", scenes_dir, "-i", tmp_path / "w.idx", "--max-side", "64",
                           "--weights", tmp_path / "b.pt", "--rebuild", "-q")
    assert code == 0, err
    assert matchlens.open_index(tmp_path / "w.idx").spec.weights_id != first


# --- index paths with URI characters -------------------------------------------------------------

@pytest.mark.parametrize("name", ["photos #2.idx", "what?.idx", "per%41cent.idx", "semi;colon&amp.idx"])
def test_index_paths_with_uri_characters_build_open_and_search(tmp_path, scenes_dir, small_spec, name):
    target = tmp_path / name
    index, report = matchlens.build_index_report(scenes_dir, target, spec=small_spec)
    assert index.size == 10 and report.indexed == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing stray beside it
    moved = tmp_path / "moved #3.idx"
    os.rename(target, moved)
    reopened = matchlens.open_index(moved)
    assert reopened.search(scenes_dir / "scene_04.jpg", k=1)[0].path.endswith("scene_04.jpg")


# --- readers never fail because of a commit -----------------------------------------------------

def _benchmark(name: str):
    """A script of benchmarks/ as a module (its reader loop is the one this test runs)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readers_never_fail_while_a_writer_commits(idx):
    """4 reader processes open + search + read descriptors in a loop while a writer publishes
    20 generations: not one read may fail, and no superseded generation is left behind."""
    ctx = multiprocessing.get_context("fork")
    results, stop = ctx.Queue(), ctx.Event()
    reader = _benchmark("readers").reader
    readers = [ctx.Process(target=reader, args=(str(idx), stop, results)) for _ in range(4)]
    for proc in readers:
        proc.start()
    try:
        time.sleep(0.5)
        index = matchlens.open_index(idx)
        for i in range(20):
            index.store.close()
            index, _ = index.set_dba({"k": 2} if i % 2 == 0 else None)
    finally:
        stop.set()
        outcomes = [results.get(timeout=60) for _ in readers]
        for proc in readers:
            proc.join(timeout=10)
    failures = [f for _, found in outcomes for f in found]
    assert not failures, failures[:5]
    assert all(rounds > 0 for rounds, _ in outcomes)
    print("reader rounds:", [rounds for rounds, _ in outcomes])
    index.store.close()
    last = matchlens.open_index(idx)
    last.store.close()  # no reader left: the next commit deletes every superseded generation
    last.set_dba(None)[0].store.close()
    assert [p.name for p in idx.glob("gen-*")] == [store.current_generation(idx).path.name]


def test_a_file_system_without_flock_still_opens_the_index(idx, monkeypatch):
    import fcntl

    real = fcntl.flock

    def no_locks(fd, op):
        if op & fcntl.LOCK_SH:
            raise OSError(37, "No locks available")
        return real(fd, op)

    monkeypatch.setattr(store.fcntl, "flock", no_locks)
    index = matchlens.open_index(idx)
    assert index.size == 10 and index.store._reader is None
