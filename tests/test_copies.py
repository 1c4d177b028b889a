"""matchlens duplicates: exact, near and partial copies grouped; other photographs kept apart;
the kNN pass is batched (never N×N); JSON, HTML and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import matchlens.api as api
from matchlens.copies import (COPY_KINDS, REGIONAL_HINT, DuplicateSettings, Geometry, PairEvidence, candidate_pairs,
                              classify, components, find_duplicates, thresholds_for)
from matchlens.copies.generate import apply_edit, partial_copy
from tests.conftest import make_scene, run_cli

FLOOR = 0.3  # the 128 px test pipeline's cosines are lower than the default preset's: a loose candidate floor


@pytest.fixture(scope="module")
def copies_dir(tmp_path_factory) -> Path:
    """Six scenes, and: an exact copy of 0, a lossless re-save of 4 (other bytes, same pixels), 1
    resized and recompressed, 2 cropped, another photograph of 3 (perspective, occluder, crop) and
    a partial copy of 5 (its centre cell replaced)."""
    folder = tmp_path_factory.mktemp("copies")
    rng = np.random.default_rng(0)
    scenes = [make_scene(200 + i, (400, 300)) for i in range(6)]
    for i, scene in enumerate(scenes):
        scene.save(folder / f"s{i}.png" if i == 4 else folder / f"s{i}.jpg", quality=92)
    shutil.copy(folder / "s0.jpg", folder / "s0_copy.jpg")
    scenes[4].save(folder / "s4_resaved.png", compress_level=1)
    apply_edit(apply_edit(scenes[1], "resize", rng), "recompress", rng).save(folder / "s1_small.jpg", quality=95)
    apply_edit(scenes[2], "crop", rng, keep=0.75).save(folder / "s2_crop.jpg", quality=92)
    apply_edit(scenes[3], "other_view", rng, strength=0.15).save(folder / "s3_view.jpg", quality=92)
    # one cell of a 3x3 grid replaced by texture from another scene: a partial copy
    partial_copy(scenes[5], rng, ["texture"], [(1 / 3, 1 / 3, 2 / 3, 2 / 3)], scenes[0]).save(folder / "s5_partial.jpg",
                                                                                              quality=92)
    return folder


@pytest.fixture(scope="module")
def copies_index(tmp_path_factory, copies_dir, small_spec):
    import matchlens

    return matchlens.build_index(copies_dir, tmp_path_factory.mktemp("copies-idx") / "index", spec=small_spec)


@pytest.fixture(scope="module")
def report(copies_index):
    return find_duplicates(copies_index, thresholds_for(FLOOR), DuplicateSettings(k=5))


def _kinds(report) -> dict[frozenset, str]:
    return {frozenset(Path(p).name for p in pair.paths): pair.kind for pair in report.accepted}


def _group_of(report, name: str) -> set[str]:
    for group in report.groups:
        names = {Path(p).name for p in group.paths}
        if name in names:
            return names
    return {name}


def test_copies_are_grouped_with_their_labels(report):
    kinds = _kinds(report)
    assert kinds[frozenset({"s0.jpg", "s0_copy.jpg"})] == "exact"
    assert kinds[frozenset({"s4.png", "s4_resaved.png"})] == "exact"  # other bytes, identical pixels
    assert kinds[frozenset({"s1.jpg", "s1_small.jpg"})] == "near"
    assert kinds[frozenset({"s2.jpg", "s2_crop.jpg"})] == "near"
    assert _group_of(report, "s1.jpg") == {"s1.jpg", "s1_small.jpg"}
    evidence = next(p for p in report.accepted if {Path(x).name for x in p.paths} == {"s2.jpg", "s2_crop.jpg"})
    g = evidence.evidence.geometry
    assert g is not None and g.inliers >= 20 and g.ratio > 0.8 and g.perspective < 0.01


def test_another_photograph_of_the_same_scene_is_not_a_copy(report):
    assert _group_of(report, "s3.jpg") == {"s3.jpg"}
    assert "s3_view.jpg" not in {Path(p).name for g in report.groups for p in g.paths}
    checked = [p for p in report.pairs if {Path(x).name for x in p.paths} == {"s3.jpg", "s3_view.jpg"}]
    if checked:  # the kNN proposed it: verification rejected it, on geometry
        assert checked[0].kind is None and checked[0].evidence.geometry is not None


class _Spy:
    """An index stand-in that records what candidate_pairs asks of search_vectors."""

    def __init__(self, index) -> None:
        self.index, self.calls = index, []
        self.size = index.size

    def vectors(self):
        return self.index.vectors()

    def search_vectors(self, vectors, k):
        self.calls.append((vectors.shape, k))
        return self.index.search_vectors(vectors, k)


def test_knn_pass_is_batched_never_n_by_n(copies_index):
    spy = _Spy(copies_index)
    found = candidate_pairs(spy, k=3, floor=FLOOR, batch=4)
    n = copies_index.size
    assert sum(shape[0] for shape, _ in spy.calls) == n and len(spy.calls) == -(-n // 4)
    assert all(shape[0] <= 4 and k == 4 for shape, k in spy.calls)  # batch rows × (k + 1) results, never n × n
    assert found.batches == [shape[0] for shape, _ in spy.calls]
    assert np.all(found.a < found.b) and len(set(zip(found.a.tolist(), found.b.tolist()))) == len(found)
    assert np.all(found.cosine >= FLOOR)


def test_partial_needs_regions_and_kinds_are_a_registry():
    t = thresholds_for(None)
    geometry = Geometry(matches=100, inliers=80, ratio=0.8, residual=0.2, perspective=0.0, frame_offset=0.0)
    plain = PairEvidence(0, 1, 0.9, geometry=geometry)
    assert COPY_KINDS.ordered() == ("exact", "partial", "near")
    assert classify(plain, t) == "near"
    regions = tuple([0.95] * 8 + [0.1])  # one region of nine replaced
    partial = PairEvidence(0, 1, 0.9, geometry=geometry, regions=regions, region_names=tuple(f"r{i}" for i in range(9)))
    assert classify(partial, t) == "partial"
    assert partial.as_dict(t)["regions_differ"] == ["r8"]
    cropped = Geometry(matches=100, inliers=80, ratio=0.8, residual=0.2, perspective=0.0, frame_offset=0.3)
    assert classify(PairEvidence(0, 1, 0.9, geometry=cropped, regions=regions), t) == "near"  # regions not aligned
    other_view = PairEvidence(0, 1, 0.9, geometry=Geometry(100, 40, 0.4, 0.7, 0.05))
    assert classify(other_view, t) is None
    assert components([(1, 2), (3, 4), (2, 5)]) == [[1, 2, 5], [3, 4]]


def test_cli_json_html_and_table(capsys, copies_index, tmp_path):
    code, out, err = run_cli(capsys, "duplicates", copies_index.root, "--threshold", FLOOR, "-k", 5, "--json",
                             "--html", tmp_path / "page")
    assert code == 0, err
    data = json.loads(out)
    assert data["counts"]["exact"] == 2 and data["regional"] is False and REGIONAL_HINT in data["notes"]
    kinds = {frozenset(Path(p).name for p in (pair["a"], pair["b"])): pair["kind"]
             for group in data["groups"] for pair in group["pairs"]}
    assert kinds[frozenset({"s1.jpg", "s1_small.jpg"})] == "near"
    near = next(pair for group in data["groups"] for pair in group["pairs"] if pair["kind"] == "near")
    assert {"cosine", "inliers", "inlier_ratio", "perspective"} <= set(near["evidence"])
    page = (tmp_path / "page" / "index.html").read_text()
    assert "http:" not in page and "https:" not in page and page.count("pairs/g") >= 4
    assert len(list((tmp_path / "page" / "pairs").glob("*.png"))) == data["counts"]["accepted"]
    code, out, _ = run_cli(capsys, "duplicates", copies_index.root, "--threshold", FLOOR, "-k", 5, "-q")
    assert code == 0 and "s1_small.jpg" in out and "near" in out and "encode IDX --kind regional" in out


@pytest.mark.parametrize("args, message", [
    (["--threshold", "1.5"], "--threshold"),
    (["--threshold", "0.5", "--auto"], "not both"),
])
def test_one_line_errors(capsys, copies_index, args, message):
    code, out, err = run_cli(capsys, "duplicates", copies_index.root, *args)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1


def test_missing_index_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "duplicates", tmp_path / "nowhere")
    assert code != 0 and err.startswith("matchlens: error:") and len(err.strip().splitlines()) == 1


def test_partial_copy_with_the_regional_kind(capsys, copies_index, report):
    # without the regional kind the partial copy is a near-duplicate (its geometry passes)
    assert _kinds(report)[frozenset({"s5.jpg", "s5_partial.jpg"})] == "near"
    api.encode(copies_index.root, kind="regional", params={"layout": "grid3x3", "side": 512})
    code, out, err = run_cli(capsys, "duplicates", copies_index.root, "--threshold", FLOOR, "-k", 5, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["regional"] is True and REGIONAL_HINT not in data["notes"]
    pairs = {frozenset(Path(p).name for p in (pair["a"], pair["b"])): pair for g in data["groups"] for pair in g["pairs"]}
    partial = pairs[frozenset({"s5.jpg", "s5_partial.jpg"})]
    assert len(partial["evidence"]["regions"]) == 9
    # the replaced centre cell stands out below the others (a neighbour may dip a little too)
    assert partial["kind"] == "partial" and "centre" in partial["evidence"]["regions_differ"], json.dumps(partial)
    assert pairs[frozenset({"s1.jpg", "s1_small.jpg"})]["kind"] == "near"
