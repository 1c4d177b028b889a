"""The `matchlens` command: output formats, one-line errors and exit codes, interruption and resume."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import make_scene, run_cli

SMALL = ["--max-side", "128"]


def matchlens_exe() -> str:
    return str(Path(sys.executable).with_name("matchlens"))


@pytest.fixture(scope="module")
def cli_index(tmp_path_factory, scenes_dir):
    root = tmp_path_factory.mktemp("cli") / "index"
    subprocess.run([matchlens_exe(), "index", str(scenes_dir), "--index", str(root), "-q", *SMALL], check=True,
                   capture_output=True)
    return root


def test_search_json_lists_rank_score_and_absolute_path(capsys, cli_index, scenes_dir):
    code, out, err = run_cli(capsys, "search", cli_index, scenes_dir / "scene_05.jpg", "-k", "4", "--json")
    assert code == 0, err
    results = json.loads(out)
    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    assert results[0]["path"] == str((scenes_dir / "scene_05.jpg").resolve())
    assert all(Path(r["path"]).is_absolute() and isinstance(r["score"], float) for r in results)
    assert results[0]["score"] >= results[1]["score"] >= results[3]["score"]


def test_search_table_and_box(capsys, cli_index, scenes_dir):
    code, out, _ = run_cli(capsys, "search", cli_index, scenes_dir / "scene_02.jpg", "--box", "20,20,300,200", "-k", "3")
    assert code == 0 and "scene_02.jpg" in out and "rank" in out


def test_info_reports_counts_and_pipeline(capsys, cli_index):
    code, out, _ = run_cli(capsys, "info", cli_index, "--json", "--check")
    assert code == 0
    data = json.loads(out[: out.rindex("}") + 1])
    assert data["images"] == 10 and data["skipped"] == 0 and data["dim"] == 1280
    assert "rmac" in data["pipeline"] and "checksums: ok" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["search", "{tmp}/nowhere", "{scene}"], "no index"),
        (["search", "{index}", "{tmp}/missing.jpg"], "no such file"),
        (["search", "{index}", "{scene}", "--box", "5000,5000,6000,6000"], "box"),
        (["search", "{index}", "{scene}", "--box", "1,2,3"], "box"),
        (["search", "{index}", "{scene}", "--preset", "mac"], "built with"),
        (["search", "{index}", "{notes}"], "not an image"),
        (["index", "{tmp}/missing-folder", "--index", "{tmp}/x"], "no such file"),
        (["index", "{empty}", "--index", "{tmp}/x"], "no files"),
        (["index", "{scenes}", "--index", "{tmp}/x", "--preset", "nope"], "unknown preset"),
        (["index", "{scenes}", "--index", "{tmp}/x", "--pooling", "avg"], "unknown pooling"),
        (["index", "{scenes}", "--index", "{tmp}/x", "--backbone", "resnet50"], "--weights"),
        (["index", "{scenes}", "--index", "{tmp}/x", "--backbone", "resnet50", "--weights", "{notes}"], "weights"),
        (["info", "{scenes}"], "not a matchlens index"),
        (["remove", "{index}", "{tmp}/never-indexed.jpg"], "matches"),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(capsys, tmp_path, cli_index, scenes_dir, args, message):
    (tmp_path / "empty").mkdir()
    notes = tmp_path / "notes.jpg"
    notes.write_text("plain text, not a JPEG")
    values = dict(tmp=tmp_path, index=cli_index, scene=scenes_dir / "scene_00.jpg", scenes=scenes_dir,
                  empty=tmp_path / "empty", notes=notes)
    code, out, err = run_cli(capsys, *[a.format(**values) for a in args])
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("matchlens: error:") and message in lines[0]
    assert "Traceback" not in err + out


def test_add_remove_info_skipped(capsys, tmp_path, scenes_dir):
    root = tmp_path / "i"
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        make_scene(i).save(folder / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    code, _, err = run_cli(capsys, "index", folder, "--index", root, "-q", *SMALL)
    assert code == 0 and "skipped 1" in err and "broken.jpg" in err
    code, out, _ = run_cli(capsys, "info", root, "--skipped")
    assert code == 0 and "broken.jpg" in out
    extra = tmp_path / "Café über 東京 photo.png"
    make_scene(42).save(extra)
    code, _, err = run_cli(capsys, "add", root, extra, "-q")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "search", root, extra, "-k", "1", "--json")
    assert json.loads(out)[0]["path"] == str(extra.resolve())
    code, out, _ = run_cli(capsys, "remove", root, extra)
    assert code == 0 and "removed 1" in out
    code, out, _ = run_cli(capsys, "info", root, "--json")
    assert json.loads(out[: out.rindex("}") + 1])["images"] == 3


def test_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run([matchlens_exe(), "search", str(tmp_path / "nope"), str(tmp_path / "q.jpg")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "no index" in proc.stderr


def _journal_count(root: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{root / 'journal.sqlite'}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM done").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_build_resumes_without_redoing_work(tmp_path, sig):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(300):  # enough work (about 10 s) that the interruption lands mid-build
        make_scene(1000 + i, size=(320, 240)).save(folder / f"img_{i:03d}.jpg", quality=85)
    root = tmp_path / "index"
    cmd = [matchlens_exe(), "index", str(folder), "--index", str(root), "-q", "--max-side", "320"]
    # A shell starts background jobs with SIGINT ignored and children inherit that; give the
    # build a default SIGINT, as a terminal's Ctrl-C would find it, whatever ran this test.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300  # generous: a loaded machine starts torch slowly
    while _journal_count(root) < 20 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the build finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "resume" in err and "Traceback" not in err
    assert not (root / "CURRENT").exists()  # nothing half-built was published
    done_before = _journal_count(root)
    assert done_before >= 20
    finished = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    reused = int(finished.stderr.split(" computed, ")[1].split(" reused")[0])
    computed = int(finished.stderr.split("(")[1].split(" computed")[0])
    assert reused >= done_before - 1 and computed + reused == 300
    assert "300 images" in finished.stdout
    assert not (root / "journal.sqlite").exists()


def test_index_replaced_atomically_for_a_concurrent_reader(tmp_path, scenes_dir):
    """A reader that opened generation N keeps working while N+1 is published."""
    import matchlens

    root = tmp_path / "i"
    subprocess.run([matchlens_exe(), "index", str(scenes_dir), "--index", str(root), "-q", *SMALL], check=True,
                   capture_output=True)
    reader = matchlens.open_index(root)
    extra = tmp_path / "e.png"
    Image.fromarray(__import__("numpy").zeros((64, 64, 3), "uint8") + 90).save(extra)
    subprocess.run([matchlens_exe(), "add", str(root), str(extra), "-q"], check=True, capture_output=True)
    assert reader.size == 10 and matchlens.open_index(root).size == 11
    assert len(reader.search(scenes_dir / "scene_03.jpg", k=3)) == 3


def test_cirtorch_checkpoint_indexes_with_its_own_gem_p(capsys, tmp_path, scenes_dir):
    """`--backbone resnet18 --weights cirtorch.pth`: the network's learned GeM p is used."""
    import torch
    import torchvision

    from tests.test_backbones import cirtorch_checkpoint, resnet_trunk

    torch.manual_seed(0)
    path = tmp_path / "retrieval-resnet18-gem.pth"
    torch.save(cirtorch_checkpoint(resnet_trunk(torchvision.models.resnet18(weights=None)), "resnet18", 2.7, None), path)
    root = tmp_path / "i"
    code, _, err = run_cli(capsys, "index", scenes_dir, "--index", root, "--backbone", "resnet18", "--weights", path,
                           "--scales", "1", "--max-side", "96", "-q")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "info", root, "--json")
    info = json.loads(out)
    assert info["spec"]["pooling"] == "gem" and info["spec"]["pooling_params"]["p"] == pytest.approx(2.7, abs=1e-5)
    assert info["dim"] == 512 and info["images"] == 10
    code, out, _ = run_cli(capsys, "search", root, scenes_dir / "scene_08.jpg", "-k", "1", "--json")
    assert Path(json.loads(out)[0]["path"]).name == "scene_08.jpg"
