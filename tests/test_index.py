"""The index: build, search, add, remove, skipped files, atomic writes, spec checks, corruption."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import matchlens
from matchlens.config import PipelineSpec
from matchlens.errors import IndexError_, SourceError
from matchlens.index import metadata, store
from tests.conftest import make_scene


def _altered(path: Path) -> Image.Image:
    """A crop + JPEG recompression + brightness change of an indexed scene."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    img = img.crop((w // 8, h // 8, w - w // 10, h - h // 12)).point(lambda v: min(255, int(v * 1.15)))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=40)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_build_and_search_ranks_the_source_first(built_index, scenes_dir):
    assert built_index.size == 10 and not built_index.skipped()
    for i in (0, 3, 7):
        results = built_index.search(_altered(scenes_dir / f"scene_{i:02d}.jpg"), k=5)
        assert [r.rank for r in results] == [1, 2, 3, 4, 5]
        assert Path(results[0].path) == (scenes_dir / f"scene_{i:02d}.jpg").resolve()
        assert all(Path(r.path).is_absolute() for r in results)
        assert results[0].score > results[1].score
        assert all(a.score >= b.score for a, b in zip(results, results[1:]))


def test_search_accepts_path_bytes_pil_array_and_box(built_index, scenes_dir):
    path = scenes_dir / "scene_04.jpg"
    expected = str(path.resolve())
    image = Image.open(path).convert("RGB")
    for query in (path, str(path), path.read_bytes(), image, np.asarray(image)):
        top = built_index.search(query, k=1)[0]
        assert top.path == expected and top.score == pytest.approx(1.0, abs=1e-4)
    # A box around most of the scene still finds it, and scores below the full image.
    boxed = built_index.search(path, box=(30, 20, 290, 220), k=1)[0]
    assert boxed.path == expected and boxed.score < 0.9999


def test_k_larger_than_collection_returns_everything(built_index, scenes_dir):
    results = built_index.search(scenes_dir / "scene_01.jpg", k=500)
    assert len(results) == 10 and len({r.path for r in results}) == 10


def test_reindex_reuses_unchanged_descriptors(tmp_path, scenes_dir, small_spec):
    _, first = matchlens.build_index_report(scenes_dir, tmp_path / "i", spec=small_spec)
    assert first.computed == 10 and first.reused == 0
    index, second = matchlens.build_index_report(scenes_dir, tmp_path / "i", spec=small_spec)
    assert second.computed == 0 and second.reused == 10 and index.size == 10


def test_add_and_remove(tmp_path, scenes_dir, small_spec):
    folder = tmp_path / "photos"
    shutil.copytree(scenes_dir, folder)
    index = matchlens.build_index(folder, tmp_path / "i", spec=small_spec)
    ids_before = {e.path: e.id for e in index.entries}
    new = tmp_path / "new scene.png"
    make_scene(99).save(new)
    index, report = index.add([str(new)])
    assert index.size == 11 and report.computed == 1
    assert index.search(new, k=1)[0].path == str(new.resolve())
    assert {e.path: e.id for e in index.entries if e.path in ids_before} == ids_before  # ids are stable
    gone = str((folder / "scene_02.jpg").resolve())
    index, report = index.remove([gone])
    assert index.size == 10 and report.removed == 1
    assert gone not in {r.path for r in index.search(folder / "scene_02.jpg", k=20)}
    with pytest.raises(SourceError, match="matches"):
        index.remove([str(tmp_path / "not-indexed.jpg")])
    index, report = index.remove([str(folder)])  # a folder removes everything under it
    assert report.removed == 9 and index.size == 1


def test_unreadable_files_are_skipped_counted_and_listed(tmp_path, small_spec):
    folder = tmp_path / "mixed"
    folder.mkdir()
    make_scene(1).save(folder / "good.jpg")
    make_scene(2).save(folder / "also good.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    data = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    index, report = matchlens.build_index_report(folder, tmp_path / "i", spec=small_spec)
    assert index.size == 2 and report.skipped == 3
    reasons = {Path(e.path).name: e.error for e in index.skipped()}
    assert set(reasons) == {"notes.txt", "empty.jpg", "truncated.jpg"}
    assert all(reason and "\n" not in reason for reason in reasons.values())
    assert "empty" in reasons["empty.jpg"] and "truncat" in reasons["truncated.jpg"]


def test_duplicate_files_are_both_indexed_with_equal_scores(tmp_path, small_spec):
    folder = tmp_path / "dups"
    folder.mkdir()
    make_scene(5).save(folder / "a.jpg")
    shutil.copy(folder / "a.jpg", folder / "b.jpg")
    make_scene(6).save(folder / "c.jpg")
    index = matchlens.build_index(folder, tmp_path / "i", spec=small_spec)
    top = index.search(folder / "a.jpg", k=3)
    assert {Path(r.path).name for r in top[:2]} == {"a.jpg", "b.jpg"}
    assert top[0].score == pytest.approx(top[1].score, abs=1e-6)
    assert len({e.sha256 for e in index.entries}) == 2


def test_bad_sources_fail_with_one_line(tmp_path, small_spec):
    with pytest.raises(SourceError, match="no such file"):
        matchlens.build_index(tmp_path / "missing", tmp_path / "i", spec=small_spec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no files"):
        matchlens.build_index(tmp_path / "empty", tmp_path / "i", spec=small_spec)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("x")
    with pytest.raises(SourceError, match="no image could be indexed"):
        matchlens.build_index(junk, tmp_path / "i", spec=small_spec)
    assert not store.is_index_dir(tmp_path / "i")


def test_list_file_source(tmp_path, scenes_dir, small_spec):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two scenes\n{scenes_dir / 'scene_00.jpg'}\n\n{scenes_dir / 'scene_01.jpg'}\n{tmp_path / 'gone.jpg'}\n")
    index = matchlens.build_index(listing, tmp_path / "i", spec=small_spec)
    assert index.size == 2 and len(index.skipped()) == 1
    assert "no such file" in index.skipped()[0].error.lower()


def test_different_spec_is_refused(tmp_path, scenes_dir, small_spec):
    index = matchlens.build_index(scenes_dir, tmp_path / "i", spec=small_spec)
    other = small_spec.replace(pooling="mac", pooling_params={})
    with pytest.raises(IndexError_, match="built with"):
        matchlens.build_index(scenes_dir, tmp_path / "i", spec=other)
    with pytest.raises(IndexError_, match="built with"):
        index.search(scenes_dir / "scene_00.jpg", spec=other)
    with pytest.raises(IndexError_, match="width"):
        index.search_vector(np.ones(7, np.float32))
    rebuilt = matchlens.build_index(scenes_dir, tmp_path / "i", spec=other, rebuild=True)
    assert rebuilt.spec.pooling == "mac" and rebuilt.size == 10


def test_foreign_and_corrupt_folders(tmp_path, scenes_dir, small_spec):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(IndexError_, match="not a matchlens index"):
        matchlens.open_index(foreign)
    with pytest.raises(IndexError_, match="not a matchlens index"):
        matchlens.build_index(scenes_dir, foreign, spec=small_spec)
    with pytest.raises(IndexError_, match="does not exist"):
        matchlens.open_index(tmp_path / "nowhere")

    root = tmp_path / "i"
    index = matchlens.build_index(scenes_dir, root, spec=small_spec)
    gen = root / index.generation
    vectors = gen / "vectors.npy"
    vectors.write_bytes(vectors.read_bytes()[:-100])  # truncated by a bad copy
    with pytest.raises(IndexError_, match="corrupt"):
        matchlens.open_index(root)
    (gen / "manifest.json").write_text("{not json")
    with pytest.raises(IndexError_, match="corrupt"):
        matchlens.open_index(root)
    (root / "CURRENT").write_text("gen-999999\n")
    with pytest.raises(IndexError_, match="corrupt"):
        matchlens.open_index(root)


def test_failed_write_leaves_previous_index_intact(tmp_path, scenes_dir, small_spec, monkeypatch):
    root = tmp_path / "i"
    index = matchlens.build_index(scenes_dir, root, spec=small_spec)
    before = (index.generation, index.size, np.array(index.vectors()))
    new = tmp_path / "extra.jpg"
    make_scene(50).save(new)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metadata, "write_entries", disk_full)
    with pytest.raises(IndexError_, match="previous index is intact"):
        index.add([str(new)])
    monkeypatch.undo()
    reopened = matchlens.open_index(root)
    assert (reopened.generation, reopened.size) == before[:2]
    np.testing.assert_array_equal(np.array(reopened.vectors()), before[2])
    assert not list(root.glob(".tmp-*"))
    assert reopened.store.verify() == []
    # The descriptor computed before the failure is kept: the retry does not recompute it.
    index, report = reopened.add([str(new)])
    assert index.size == 11 and report.computed == 0 and report.reused == 1


def test_second_writer_is_refused(tmp_path, scenes_dir, small_spec):
    root = tmp_path / "i"
    matchlens.build_index(scenes_dir, root, spec=small_spec)
    with store.writer_lock(root):
        with pytest.raises(IndexError_, match="another matchlens process"):
            matchlens.build_index(scenes_dir, root, spec=small_spec)


def test_reader_keeps_its_generation_while_a_writer_publishes(tmp_path, scenes_dir, small_spec):
    root = tmp_path / "i"
    reader = matchlens.build_index(scenes_dir, root, spec=small_spec)
    new = tmp_path / "n.jpg"
    make_scene(77).save(new)
    writer, _ = matchlens.open_index(root).add([str(new)])
    assert reader.size == 10 and writer.size == 11
    assert len(reader.search(scenes_dir / "scene_00.jpg", k=20)) == 10  # old generation still readable
    # The generation a reader holds stays on disk; once released, the next commit deletes it.
    assert sorted(p.name for p in root.glob("gen-*")) == sorted([reader.generation, writer.generation])
    reader.store.close()
    writer.store.close()
    latest, _ = writer.remove([str(new)])
    assert [p.name for p in root.glob("gen-*")] == [latest.generation]


def test_manifest_records_spec_counts_and_checksums(built_index):
    manifest = json.loads((built_index.store.path / "manifest.json").read_text())
    assert manifest["format"] == "matchlens-index" and manifest["counts"] == {"indexed": 10, "skipped": 0}
    assert PipelineSpec.from_dict(manifest["spec"]).fingerprint() == built_index.spec.fingerprint()
    assert len(manifest["spec"]["weights_id"]) == 16
    assert set(manifest["files"]) >= {"descriptors.npy", "vectors.npy", "meta.sqlite"}


def test_pca_whitening_on_the_collection(tmp_path, small_spec):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(24):
        make_scene(200 + i, size=(160, 120)).save(folder / f"s{i}.png")
    pending = small_spec.replace(whitening="pcaw", whitening_params={"dim": 8})
    index, report = matchlens.build_index_report(folder, tmp_path / "a", spec=pending)
    assert report.whitening.startswith("pending") and index.dim == 1280
    fitted = small_spec.replace(whitening="pcaw", whitening_params={"dim": 8, "min_images": 16})
    index, report = matchlens.build_index_report(folder, tmp_path / "b", spec=fitted)
    assert report.whitening == "fitted" and index.dim == 8
    assert np.allclose(np.linalg.norm(index.vectors(), axis=1), 1, atol=1e-5)
    top = index.search(folder / "s3.png", k=1)[0]
    assert Path(top.path).name == "s3.png" and top.score == pytest.approx(1, abs=1e-4)


def test_a_folder_of_every_awkward_kind_of_file(tmp_path, small_spec):
    """Odd but valid images are indexed; broken ones and bombs are skipped with a reason each."""
    from tests.test_images import _bomb_png

    folder = tmp_path / "odd"
    (folder / "sub dir").mkdir(parents=True)
    rgba = make_scene(1).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    Image.fromarray((np.asarray(make_scene(2).convert("L"), np.uint16) * 257)).save(folder / "sixteen.png")
    make_scene(3).convert("CMYK").save(folder / "cmyk.jpg")
    make_scene(4).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    make_scene(5).save(folder / "rotated.jpg", exif=exif.tobytes())
    make_scene(6).save(folder / "sub dir" / "ünïcödé name 東京.jpg")
    Image.fromarray(np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20000, 800))).save(folder / "huge.jpg", quality=50)
    (folder / "bomb.png").write_bytes(_bomb_png(100_000, 100_000))
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "readme.md").write_text("# not an image")
    (folder / ".hidden.jpg").write_bytes(b"ignored")
    index = matchlens.build_index(folder, tmp_path / "i", spec=small_spec)
    indexed = {Path(e.path).name for e in index.entries if e.status == "indexed"}
    skipped = {Path(e.path).name: e.error for e in index.skipped()}
    assert indexed == {"alpha.png", "sixteen.png", "cmyk.jpg", "palette.png", "rotated.jpg",
                       "ünïcödé name 東京.jpg", "huge.jpg"}
    assert set(skipped) == {"bomb.png", "zero.jpg", "readme.md"}
    assert "pixels" in skipped["bomb.png"] and "empty" in skipped["zero.jpg"]
    hit = index.search(folder / "sub dir" / "ünïcödé name 東京.jpg", k=1)[0]
    assert hit.path.endswith("ünïcödé name 東京.jpg") and hit.score == pytest.approx(1, abs=1e-4)


def test_whitening_learned_on_a_separate_folder(tmp_path, small_spec):
    train, photos = tmp_path / "train", tmp_path / "photos"
    train.mkdir(), photos.mkdir()
    for i in range(20):
        make_scene(300 + i, size=(160, 120)).save(train / f"t{i}.png")
    for i in range(4):
        make_scene(400 + i, size=(160, 120)).save(photos / f"p{i}.png")
    spec = small_spec.replace(whitening="pcaw", whitening_source=str(train),
                              whitening_params={"dim": 6, "min_images": 10})
    index, report = matchlens.build_index_report(photos, tmp_path / "i", spec=spec)
    assert report.whitening == "fitted" and index.dim == 6 and index.size == 4
    assert Path(index.search(photos / "p2.png", k=1)[0].path).name == "p2.png"


def test_backbone_from_a_weights_file_and_a_changed_file_is_refused(tmp_path, scenes_dir):
    import torch
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    spec = PipelineSpec(backbone="resnet18", weights=str(weights), max_side=96)
    index = matchlens.build_index(scenes_dir, tmp_path / "i", spec=spec)
    assert index.dim == 512 and index.spec.weights_id and index.size == 10
    assert Path(index.search(scenes_dir / "scene_06.jpg", k=1)[0].path).name == "scene_06.jpg"
    before = [(r.path, round(r.score, 5)) for r in index.search(scenes_dir / "scene_02.jpg", k=3)]
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)  # someone replaced the file
    # Queries are described by the network the index was built with (its ONNX export in DIR/model),
    # so search is unaffected; describing new images with the changed file is refused.
    reopened = matchlens.open_index(tmp_path / "i")
    assert [(r.path, round(r.score, 5)) for r in reopened.search(scenes_dir / "scene_02.jpg", k=3)] == before
    make_scene(11).save(tmp_path / "extra.jpg")
    with pytest.raises(matchlens.MatchlensError, match="weights .* changed"):
        reopened.add([str(tmp_path / "extra.jpg")])
    shutil.rmtree(tmp_path / "i" / "model")  # without its export the index needs the original weights file
    with pytest.raises(matchlens.MatchlensError, match="weights .* changed"):
        matchlens.open_index(tmp_path / "i").search(scenes_dir / "scene_06.jpg")


def test_unwritable_targets_fail_with_one_line(tmp_path, scenes_dir, small_spec, monkeypatch):
    a_file = tmp_path / "file.idx"
    a_file.write_text("x")
    with pytest.raises(IndexError_, match="is a file"):
        matchlens.build_index(scenes_dir, a_file, spec=small_spec)
    import sqlite3

    from matchlens.index import journal

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(journal.Journal, "record", full)
    with pytest.raises(IndexError_, match="disk is full.*intact"):
        matchlens.build_index(scenes_dir, tmp_path / "i", spec=small_spec)


def test_create_empty_index_then_add_and_search(tmp_path, scenes_dir, small_spec):
    empty = matchlens.create_index(tmp_path / "i", spec=small_spec)
    assert empty.size == 0 and empty.search(scenes_dir / "scene_00.jpg", k=5) == []
    grown, report = empty.add([str(scenes_dir)])
    assert grown.size == 10 and report.computed == 10
    assert Path(grown.search(scenes_dir / "scene_09.jpg", k=1)[0].path).name == "scene_09.jpg"
