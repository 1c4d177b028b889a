"""Readers of official benchmark layouts: the real official ground-truth files (read in place,
without their photos) and small generated folders in the same layouts."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io

from matchlens.errors import SourceError
from matchlens.io.datasets import Dataset, Query
from matchlens.io.formats import (
    DATASET_FORMATS,
    detect_format,
    load_dataset,
    load_gnd_file,
    load_gt_json,
    load_holidays,
    load_instre,
    load_oxford_classic,
    load_revisited,
    load_ukbench,
)

# The shared data lives beside the repository (../shared/data) and must never be copied into it.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OFFICIAL = SHARED_DATA / "official_gt"
needs_official = pytest.mark.skipif(
    not (OFFICIAL / "gnd_oxford5k.mat").is_file(), reason=f"official gt files not at {OFFICIAL}"
)
needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "ukbench_subset" / "gt.json").is_file(),
    reason=f"shared evaluation data not found at {SHARED_DATA}",
)

OXFORD_LANDMARKS = ["all_souls", "ashmolean", "balliol", "bodleian", "christ_church",
                    "cornmarket", "hertford", "keble", "magdalen", "pitt_rivers",
                    "radcliffe_camera"]
PARIS_LANDMARKS = ["defense", "eiffel", "invalides", "louvre", "moulinrouge", "museedorsay",
                   "notredame", "pantheon", "pompidou", "sacrecoeur", "triomphe"]


@functools.lru_cache(maxsize=None)
def official(file_name: str) -> Dataset:
    """An official gt file, read once per test session (the photos are not present)."""
    return load_gnd_file(OFFICIAL / file_name, OFFICIAL / "no_images_here", check_images=False)


def touch(folder: Path, *names: str) -> None:
    """Create empty files: the readers list names and never decode pixels."""
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# ============================================================ official files (real, read in place)

# (file, images, queries, first query, its positives / junk as published (the query included
#  where the file lists it), its box, group, total positives, total junk). Oxford's first gnd
#  record lists 78 ok (query included) and 33 junk; Holidays has 1491 images of which 500 are
#  queries, so 991 positives in all, and each query is its own junk (500).
OFFICIAL_COUNTS = [
    ("gnd_oxford5k.mat", 5063, 55, "all_souls_000013.jpg", 78, 33,
     (136.5, 34.1, 648.5, 955.7), "all_souls", 2840, 1495),
    ("oxford5k_gnd.json", 5063, 55, "all_souls_000013.jpg", 78, 33,
     (136.5, 34.1, 648.5, 955.7), "all_souls", 2840, 1495),
    ("gnd_paris6k.mat", 6392, 55, "paris_defense_000605.jpg", 117, 116,
     (130.0, 17.0, 843.0, 732.0), "defense", 8955, 8245),
    ("paris6k_gnd.json", 6392, 55, "paris_defense_000605.jpg", 117, 116,
     (130.0, 17.0, 843.0, 732.0), "defense", 8955, 8245),
    ("gnd_holidays.mat", 1491, 500, "100000.jpg", 2, 1, None, "holidays_1000", 991, 500),
]


@needs_official
@pytest.mark.parametrize(
    "file_name, n_images, n_queries, first, n_pos, n_junk, box, group, total_pos, total_junk",
    OFFICIAL_COUNTS,
)
def test_official_file_counts(
    file_name: str, n_images: int, n_queries: int, first: str, n_pos: int, n_junk: int,
    box: Any, group: str, total_pos: int, total_junk: int,
) -> None:
    ds = official(file_name)
    assert len(ds.images) == n_images == len(set(ds.images))
    assert len(ds.queries) == n_queries
    assert all(q.official and q.image in ds.images for q in ds.queries)
    q = ds.queries[0]
    assert (q.image, len(q.positives), len(q.junk), q.group) == (first, n_pos, n_junk, group)
    assert q.box == (pytest.approx(box) if box else None)
    assert sum(len(q.positives) for q in ds.queries) == total_pos
    assert sum(len(q.junk) for q in ds.queries) == total_junk
    # Lists are kept as published: Oxford/Paris list every query among its own positives,
    # Holidays lists it as its own junk; every listed image is in the database.
    known = set(ds.images)
    for q in ds.queries:
        assert q.image in (q.junk if file_name == "gnd_holidays.mat" else q.positives)
        assert q.positives <= known and q.junk <= known
        assert q.positives and not (q.positives & q.junk)


@needs_official
def test_holidays_mat_first_queries() -> None:
    ds = official("gnd_holidays.mat")
    assert ds.images[:3] == ("100000.jpg", "100001.jpg", "100002.jpg")
    assert ds.queries[0].positives == {"100001.jpg", "100002.jpg"}
    # qidx(2) = 4 (1-based) → 100100.jpg; its group 1001 has two images.
    assert ds.queries[1].image == ds.images[3] == "100100.jpg"
    assert ds.queries[1].positives == {"100101.jpg"}
    assert all(q.image.endswith("00.jpg") for q in ds.queries)


@needs_official
@pytest.mark.parametrize("mat, js", [("gnd_oxford5k.mat", "oxford5k_gnd.json"),
                                     ("gnd_paris6k.mat", "paris6k_gnd.json")])
def test_official_mat_and_json_agree(mat: str, js: str) -> None:
    from_mat, from_json = official(mat), official(js)
    assert from_mat.images == from_json.images
    assert len(from_mat.queries) == len(from_json.queries)
    for a, b in zip(from_mat.queries, from_json.queries):
        assert (a.image, a.group) == (b.image, b.group)
        assert a.positives == b.positives, a.image
        assert a.junk == b.junk, a.image
        assert a.box == pytest.approx(b.box, abs=0.05)


@needs_official
@pytest.mark.parametrize("file_name, landmarks", [("gnd_oxford5k.mat", OXFORD_LANDMARKS),
                                                  ("paris6k_gnd.json", PARIS_LANDMARKS)])
def test_official_groups_are_the_landmarks(file_name: str, landmarks: list[str]) -> None:
    groups = [q.group for q in official(file_name).queries]
    assert groups == [name for name in landmarks for _ in range(5)]


@needs_official
def test_oxford_positive_counts_match_the_subset_notes() -> None:
    """oxford5k_subset/gt.json records each landmark's full Oxford5k positive count (good+ok,
    query included); ours exclude the query, so they are one less."""
    notes = json.loads((SHARED_DATA / "oxford5k_subset" / "gt.json").read_text())["landmark_counts"]
    ds = official("oxford5k_gnd.json")
    for q in ds.queries:
        assert len(q.positives) == notes[q.group]["positives_full_oxford5k"], q.image
    assert notes["all_souls"]["positives_full_oxford5k"] == 78


@needs_official
def test_oxford_subset_official_queries_follow_the_gnd() -> None:
    """The subset's 10 official queries = the gnd lists restricted to the subset's images."""
    subset_dir = SHARED_DATA / "oxford5k_subset"
    raw = json.loads((subset_dir / "gt.json").read_text())
    present = set(raw["images"])
    gnd = {q.image: q for q in official("oxford5k_gnd.json").queries}
    checked = 0
    for entry in raw["queries"]:
        if not entry.get("official_query"):
            continue
        full = gnd[entry["image"]]
        # gt.json leaves the query out of its own positives (the published list has it)
        assert set(entry["positives"]) == (full.positives & present) - {entry["image"]}
        assert set(entry["junk"]) == full.junk & present
        assert entry["group"] == full.group
        assert tuple(entry["official_bbox_xyxy_original_res"]) == pytest.approx(full.box, abs=0.25)
        checked += 1
    assert checked == 10


@needs_official
def test_holidays_naming_rule_agrees_with_gnd_holidays_mat(tmp_path: Path) -> None:
    """1491 empty files named as in gnd_holidays.mat: the naming rule alone gives the mat's
    queries, and with the mat beside them the reader accepts it."""
    gnd = official("gnd_holidays.mat")
    touch(tmp_path / "jpg", *gnd.images)
    by_rule = load_holidays(tmp_path)
    assert by_rule.images == gnd.images
    # The rule gives the same answers; the mat also lists each query as its own junk.
    assert [(q.image, q.positives, q.group) for q in by_rule.queries] == [
        (q.image, q.positives, q.group) for q in gnd.queries]
    assert all(q.junk == frozenset() and g.junk == {g.image} for q, g in zip(by_rule.queries, gnd.queries))
    (tmp_path / "gnd_holidays.mat").symlink_to(OFFICIAL / "gnd_holidays.mat")
    with_mat = load_holidays(tmp_path)
    assert (with_mat.images, with_mat.queries) == (gnd.images, gnd.queries)
    assert with_mat.image_dir == tmp_path / "jpg"


@needs_official
def test_holidays_gnd_that_disagrees_is_refused(tmp_path: Path) -> None:
    gnd = official("gnd_holidays.mat")
    touch(tmp_path / "jpg", *gnd.images, "999900.jpg")  # a 501st group the mat does not know
    (tmp_path / "gnd_holidays.mat").symlink_to(OFFICIAL / "gnd_holidays.mat")
    with pytest.raises(SourceError, match="999900.jpg"):
        load_holidays(tmp_path)


@needs_official
def test_official_file_with_missing_images(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"5063 image\(s\).*all_souls_000000.jpg"):
        load_gnd_file(OFFICIAL / "oxford5k_gnd.json", tmp_path)


# ============================================================ Oxford5k / Paris6k classic layout


def make_classic(root: Path) -> Path:
    """Two all_souls queries and one magdalen query, in Oxford's gt-file format."""
    touch(root / "jpg", "all_souls_000013.jpg", "all_souls_000014.jpg", "oxford_002985.jpg",
          "all_souls_000015.jpg", "magdalen_000002.jpg", "magdalen_000003.jpg",
          "radcliffe_camera_000001.jpg", "notes.txt")
    files = {
        "all_souls_1": ("oxc1_all_souls_000013 136.5 34.1 648.5 955.9",
                        "all_souls_000013\nall_souls_000014\n", "oxford_002985\n",
                        "all_souls_000015\n"),
        "all_souls_10": ("oxc1_oxford_002985 1 2 3 4", "all_souls_000013\nall_souls_000014\n",
                         "oxford_002985\n", "all_souls_000015\n"),
        "magdalen_1": ("oxc1_magdalen_000002 10 20 300 400", "magdalen_000002\nmagdalen_000003\n",
                       "", ""),
    }
    for stem, (query, good, ok, junk) in files.items():
        for kind, text in (("query", query + "\n"), ("good", good), ("ok", ok), ("junk", junk)):
            write(root / f"{stem}_{kind}.txt", text)
    return root


def test_oxford_classic(tmp_path: Path) -> None:
    ds = load_oxford_classic(make_classic(tmp_path / "oxford5k"))
    assert ds.name == "oxford5k" and ds.image_dir == tmp_path / "oxford5k" / "jpg"
    assert len(ds.images) == 7 and "notes.txt" not in ds.images  # every image file is ranked
    assert [q.image for q in ds.queries] == [
        "all_souls_000013.jpg", "oxford_002985.jpg", "magdalen_000002.jpg"]  # 1 < 10, then magdalen
    first, second, magdalen = ds.queries
    assert first == Query("all_souls_000013.jpg",
                          frozenset({"all_souls_000013.jpg", "all_souls_000014.jpg", "oxford_002985.jpg"}),
                          frozenset({"all_souls_000015.jpg"}), "all_souls",
                          (136.5, 34.1, 648.5, 955.9), True)
    assert second.positives == {"all_souls_000013.jpg", "all_souls_000014.jpg", "oxford_002985.jpg"}
    assert (magdalen.positives, magdalen.junk, magdalen.group) == (
        {"magdalen_000002.jpg", "magdalen_000003.jpg"}, frozenset(), "magdalen")
    assert magdalen.box == (10.0, 20.0, 300.0, 400.0)


def test_paris_classic_without_prefix_and_images_folder(tmp_path: Path) -> None:
    root = tmp_path / "paris"
    touch(root / "images", "paris_defense_000605.jpg", "paris_defense_000050.jpg",
          "paris_general_000001.jpg")
    write(root / "defense_1_query.txt", "paris_defense_000605 130 17 843 732\n")
    write(root / "defense_1_good.txt", "paris_defense_000605\nparis_defense_000050\n")
    write(root / "defense_1_ok.txt", "")
    write(root / "defense_1_junk.txt", "paris_general_000001\n")
    assert detect_format(root) == "paris"
    ds = load_dataset(root)
    assert ds.name == "paris6k" and ds.image_dir == root / "images"
    (q,) = ds.queries
    assert (q.image, q.positives, q.junk, q.group, q.box) == (
        "paris_defense_000605.jpg", {"paris_defense_000605.jpg", "paris_defense_000050.jpg"},
        {"paris_general_000001.jpg"}, "defense", (130.0, 17.0, 843.0, 732.0))


def test_oxford_classic_given_image_dir(tmp_path: Path) -> None:
    root = make_classic(tmp_path / "gt")
    (root / "jpg").rename(tmp_path / "photos")
    ds = load_oxford_classic(root, name="ox", image_dir=tmp_path / "photos")
    assert (ds.name, ds.image_dir, len(ds.queries)) == ("ox", tmp_path / "photos", 3)
    with pytest.raises(SourceError, match="image folder not found"):
        load_oxford_classic(root, image_dir="nowhere")


def test_oxford_classic_errors(tmp_path: Path) -> None:
    root = make_classic(tmp_path / "ox")
    (root / "jpg" / "magdalen_000002.jpg").unlink()
    with pytest.raises(SourceError, match=r"magdalen_1_query\.txt.*'magdalen_000002'"):
        load_oxford_classic(root)
    root = make_classic(tmp_path / "ox2")
    (root / "magdalen_1_ok.txt").unlink()
    with pytest.raises(SourceError, match=r"magdalen_1_ok\.txt"):
        load_oxford_classic(root)
    root = make_classic(tmp_path / "ox3")
    write(root / "magdalen_1_query.txt", "oxc1_magdalen_000002 10 20 300\n")
    with pytest.raises(SourceError, match="expected one line"):
        load_oxford_classic(root)
    write(root / "magdalen_1_query.txt", "oxc1_magdalen_000002 300 20 10 400\n")
    with pytest.raises(SourceError, match="empty"):
        load_oxford_classic(root)


# ================================================================== ROxford5k / RParis6k (pkl)

IMLIST = ["all_souls_000000", "all_souls_000001", "oxford_000002", "bodleian_000003",
          "magdalen_000004", "christ_church_000005"]
QIMLIST = ["all_souls_000099", "magdalen_000098"]


def revisited_gnd() -> dict[str, Any]:
    """Query 0: easy {0, 1}, hard {2}, junk {3}; query 1: easy {4}, no hard, junk {5}."""
    return {
        "imlist": IMLIST,
        "qimlist": QIMLIST,
        "gnd": [
            {"bbx": [10.0, 20.0, 110.0, 220.0], "easy": np.array([0, 1]), "hard": np.array([2]),
             "junk": np.array([3])},
            {"bbx": np.array([1.0, 2.0, 3.0, 4.0]), "easy": [4], "hard": [], "junk": [5]},
        ],
    }


def make_revisited(parent: Path, protocol: int = 2, gnd: dict | None = None) -> Path:
    data = parent / "roxford5k"
    touch(data / "jpg", *(n + ".jpg" for n in IMLIST + QIMLIST))
    data.joinpath("gnd_roxford5k.pkl").write_bytes(
        pickle.dumps(gnd or revisited_gnd(), protocol=protocol))
    return parent


def names(*indices: int) -> frozenset[str]:
    return frozenset(IMLIST[i] + ".jpg" for i in indices)


@pytest.mark.parametrize("pickle_protocol", [2, 5])
@pytest.mark.parametrize("protocol, pos0, junk0, pos1, junk1", [
    ("easy", (0, 1), (3, 2), (4,), (5,)),
    ("medium", (0, 1, 2), (3,), (4,), (5,)),
    ("hard", (2,), (3, 0, 1), (), (5, 4)),  # query 1 has no hard positive: kept, AP is NaN
])
def test_revisited_protocols(tmp_path: Path, pickle_protocol: int, protocol: str,
                             pos0: tuple, junk0: tuple, pos1: tuple, junk1: tuple) -> None:
    ds = load_revisited(make_revisited(tmp_path, pickle_protocol), "roxford5k", protocol)
    assert ds.name == "roxford5k" and ds.image_dir == tmp_path / "roxford5k" / "jpg"
    assert ds.images == tuple(n + ".jpg" for n in IMLIST)  # queries are not database images
    q0, q1 = ds.queries
    assert (q0.image, q1.image) == ("all_souls_000099.jpg", "magdalen_000098.jpg")
    assert (q0.positives, q0.junk) == (names(*pos0), names(*junk0))
    assert (q1.positives, q1.junk) == (names(*pos1), names(*junk1))
    assert q0.box == (10.0, 20.0, 110.0, 220.0) and q1.box == (1.0, 2.0, 3.0, 4.0)
    assert q0.official and q0.group is None


def test_revisited_layouts_and_load_dataset(tmp_path: Path) -> None:
    parent = make_revisited(tmp_path)
    inside = load_revisited(parent / "roxford5k", "roxford5k")  # the dataset folder itself
    assert inside.images == load_revisited(parent, "roxford5k").images
    assert detect_format(parent / "roxford5k") == "revisited"
    auto = load_dataset(parent / "roxford5k", protocol="hard")
    assert auto.name == "roxford5k" and auto.queries[0].positives == names(2)
    assert load_dataset(parent, "roxford5k").queries[0].positives == names(0, 1, 2)  # medium
    with pytest.raises(SourceError, match="unknown protocol 'difficult'"):
        load_dataset(parent, "roxford5k", protocol="difficult")
    with pytest.raises(SourceError, match="gnd_rparis6k.pkl"):
        load_dataset(parent, "rparis6k")


def test_revisited_with_r1m_distractors(tmp_path: Path) -> None:
    parent = make_revisited(tmp_path / "data")
    r1m = tmp_path / "revisitop1m"
    touch(r1m / "jpg", "00/0a.jpg", "01/1b.jpg")
    write(r1m / "revisitop1m.txt", "00/0a.jpg\n01/1b.jpg\n")
    ds = load_revisited(parent, "roxford5k", distractors=r1m)
    assert len(ds.images) == len(IMLIST) + 2
    extra = ds.images[-2:]
    assert all(os.path.isabs(n) for n in extra)
    assert ds.image_path(extra[1]) == (r1m / "jpg" / "01" / "1b.jpg").absolute()
    assert all(ds.image_path(n).is_file() for n in ds.images)
    assert ds.image_path(ds.images[0]) == parent / "roxford5k" / "jpg" / "all_souls_000000.jpg"
    (r1m / "jpg" / "01" / "1b.jpg").unlink()
    with pytest.raises(SourceError, match="1b.jpg"):
        load_revisited(parent, "roxford5k", distractors=r1m)
    (r1m / "revisitop1m.txt").unlink()
    with pytest.raises(SourceError, match="revisitop1m.txt"):
        load_revisited(parent, "roxford5k", distractors=r1m, check_images=False)


class _Payload:
    """A pickle that would create a folder when loaded by a plain ``pickle.load``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.target),))


def test_revisited_pickle_cannot_run_code(tmp_path: Path) -> None:
    gnd = revisited_gnd()
    gnd["gnd"][0]["junk"] = _Payload(tmp_path / "pwned")
    parent = make_revisited(tmp_path, gnd=gnd)
    with pytest.raises(SourceError, match=r"refusing to load (posix|nt|os)\.mkdir"):
        load_revisited(parent, "roxford5k")
    assert not (tmp_path / "pwned").exists()


def test_revisited_bad_contents(tmp_path: Path) -> None:
    gnd = revisited_gnd()
    gnd["gnd"][1]["easy"] = [6]  # 0-based: one past the 6 images
    parent = make_revisited(tmp_path / "a", gnd=gnd)
    with pytest.raises(SourceError, match=r"index 6 is outside 'imlist' \(6 images, 0-based"):
        load_revisited(parent, "roxford5k")
    parent = make_revisited(tmp_path / "b")
    (parent / "roxford5k" / "jpg" / "magdalen_000098.jpg").unlink()
    with pytest.raises(SourceError, match="magdalen_000098.jpg"):
        load_revisited(parent, "roxford5k")
    assert len(load_revisited(parent, "roxford5k", check_images=False).queries) == 2
    (parent / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(b"not a pickle")
    with pytest.raises(SourceError, match="gnd_roxford5k.pkl"):
        load_revisited(parent, "roxford5k")


def test_gnd_file_protocol_rules(tmp_path: Path) -> None:
    parent = make_revisited(tmp_path)
    pkl = parent / "roxford5k" / "gnd_roxford5k.pkl"
    ds = load_gnd_file(pkl, protocol="easy")  # image_dir defaults to jpg/ beside the file
    assert ds.image_dir == parent / "roxford5k" / "jpg" and ds.queries[0].positives == names(0, 1)
    ok_style = {"imlist": IMLIST, "qimlist": QIMLIST,
                "gnd": [{"ok": [0], "junk": []}, {"ok": [1, 2]}]}
    (tmp_path / "gnd_x.pkl").write_bytes(pickle.dumps(ok_style))
    ds = load_gnd_file(tmp_path / "gnd_x.pkl", check_images=False)
    assert ds.name == "x" and ds.queries[1].positives == names(1, 2) and not ds.queries[1].junk
    with pytest.raises(SourceError, match="protocol applies only"):
        load_gnd_file(tmp_path / "gnd_x.pkl", check_images=False, protocol="hard")


def test_gnd_file_errors(tmp_path: Path) -> None:
    write(tmp_path / "bad_gnd.json", "{not json")
    with pytest.raises(SourceError, match="bad_gnd.json is not valid JSON"):
        load_gnd_file(tmp_path / "bad_gnd.json", check_images=False)
    write(tmp_path / "x_gnd.json", json.dumps(
        {"imlist": ["a", "b"], "queries": [{"query": "a", "positives": ["c"], "junk": []}]}))
    with pytest.raises(SourceError, match="'positives' names 'c'"):
        load_gnd_file(tmp_path / "x_gnd.json", check_images=False)
    write(tmp_path / "y_gnd.json", json.dumps(
        {"imlist": ["../../etc/passwd"], "queries": []}))
    with pytest.raises(SourceError, match="invalid image name"):
        load_gnd_file(tmp_path / "y_gnd.json", check_images=False)
    write(tmp_path / "gnd.txt", "")
    with pytest.raises(SourceError, match="unknown ground-truth file type"):
        load_gnd_file(tmp_path / "gnd.txt")
    with pytest.raises(SourceError, match="not found"):
        load_gnd_file(tmp_path / "gnd_missing.mat")


# ==================================================================================== Holidays


def make_holidays(root: Path, folder: str = "jpg") -> Path:
    touch(root / folder, "100000.jpg", "100001.jpg", "100002.jpg", "100100.jpg", "100101.jpg")
    return root


def test_holidays_generated(tmp_path: Path) -> None:
    root = make_holidays(tmp_path / "holidays")
    touch(root / "jpg", "readme.png")  # not a Holidays name: ignored
    ds = load_holidays(root)
    assert ds.images == ("100000.jpg", "100001.jpg", "100002.jpg", "100100.jpg", "100101.jpg")
    assert ds.queries == (
        Query("100000.jpg", frozenset({"100001.jpg", "100002.jpg"}), frozenset(),
              "holidays_1000", None, True),
        Query("100100.jpg", frozenset({"100101.jpg"}), frozenset(), "holidays_1001", None, True),
    )
    assert detect_format(root) == "holidays"
    assert load_dataset(root).queries == ds.queries


def test_holidays_upright(tmp_path: Path) -> None:
    root = make_holidays(tmp_path / "holidays")
    with pytest.raises(SourceError, match="jpg_rotated"):
        load_holidays(root, upright=True)
    make_holidays(root, "jpg_rotated")
    ds = load_dataset(root, "holidays", upright=True)
    assert ds.image_dir == root / "jpg_rotated"
    assert ds.queries == load_holidays(root).queries


def test_holidays_group_without_query(tmp_path: Path) -> None:
    root = make_holidays(tmp_path / "h")
    touch(root / "jpg", "100201.jpg")
    with pytest.raises(SourceError, match="group 1002 has no query image 100200.jpg"):
        load_holidays(root)


@needs_shared
def test_holidays_sample_agrees_with_its_gt_json() -> None:
    sample = SHARED_DATA / "holidays_sample"
    by_rule = load_holidays(sample)
    gt = load_gt_json(sample)
    assert by_rule.images == gt.images
    assert by_rule.queries == gt.official_queries()
    assert by_rule.image_dir == sample / "images"


# ===================================================================================== UKBench


@needs_shared
def test_ukbench_subset_matches_its_gt_json() -> None:
    subset = SHARED_DATA / "ukbench_subset"
    ds = load_ukbench(subset)
    gt = load_gt_json(subset)
    assert len(ds.images) == 56 and ds.images == gt.images
    # Every UKBench image is an official query; the subset's gt.json leaves the flag unset.
    assert all(q.official for q in ds.queries)
    assert tuple(dataclasses.replace(q, official=False) for q in ds.queries) == gt.queries
    q = ds.queries[5]  # ukbench00005: object 1 = images 4..7
    assert (q.image, q.group) == ("ukbench00005.jpg", "ukb_obj0001")
    assert q.positives == {"ukbench00004.jpg", "ukbench00006.jpg", "ukbench00007.jpg"}


def test_ukbench_generated_full_folder(tmp_path: Path) -> None:
    touch(tmp_path / "ukb" / "full", *(f"ukbench{n:05d}.jpg" for n in range(8)))
    assert detect_format(tmp_path / "ukb") == "ukbench"
    ds = load_dataset(tmp_path / "ukb")
    assert ds.image_dir == tmp_path / "ukb" / "full" and len(ds.queries) == 8
    assert ds.queries[7].positives == {"ukbench00004.jpg", "ukbench00005.jpg", "ukbench00006.jpg"}
    with pytest.raises(SourceError, match="no UKBench images"):
        load_ukbench(tmp_path)


# ====================================================================================== INSTRE


def cell(strings: list[str]) -> np.ndarray:
    """A 1×n MATLAB cell array of strings."""
    out = np.empty((1, len(strings)), dtype=object)
    out[0, :] = strings
    return out


def make_instre(root: Path, ok_second: list[int] | None = None) -> Path:
    imlist = ["INSTRE-S1/01a_canada_book/001.jpg", "INSTRE-S1/01a_canada_book/002.jpg",
              "INSTRE-S2/02_mug/001.jpg", "INSTRE-S2/02_mug/002.jpg", "INSTRE-M/01/001.jpg"]
    qimlist = ["INSTRE-S1/01a_canada_book/000.jpg", "INSTRE-S2/02_mug/000.jpg"]
    gnd = np.zeros((1, 2), dtype=[("ok", object), ("bbx", object)])
    gnd[0, 0] = (np.array([[1, 2, 5]], dtype=np.uint16), np.array([[5.0, 6.0, 50.0, 60.0]]))
    gnd[0, 1] = (np.array([ok_second or [3, 4]], dtype=np.uint16), np.array([[0, 0, 9, 9.5]]))
    root.mkdir(parents=True)
    scipy.io.savemat(root / "gnd_instre.mat", {"imlist": cell(imlist), "qimlist": cell(qimlist),
                                               "gnd": gnd})
    touch(root, *imlist, *qimlist)
    return root


def test_instre_generated(tmp_path: Path) -> None:
    root = make_instre(tmp_path / "instre")
    ds = load_instre(root)
    assert ds.image_dir == root and len(ds.images) == 5
    q0, q1 = ds.queries
    assert q0 == Query("INSTRE-S1/01a_canada_book/000.jpg",
                       frozenset({"INSTRE-S1/01a_canada_book/001.jpg",
                                  "INSTRE-S1/01a_canada_book/002.jpg", "INSTRE-M/01/001.jpg"}),
                       frozenset(), "INSTRE-S1/01a_canada_book", (5.0, 6.0, 50.0, 60.0), True)
    assert q1.positives == {"INSTRE-S2/02_mug/001.jpg", "INSTRE-S2/02_mug/002.jpg"}
    assert q1.box == (0.0, 0.0, 9.0, 9.5) and q1.group == "INSTRE-S2/02_mug"
    assert detect_format(root) == "instre"
    assert load_dataset(root).queries == ds.queries


def test_instre_bad_index(tmp_path: Path) -> None:
    root = make_instre(tmp_path / "instre", ok_second=[0])  # MATLAB indices start at 1
    with pytest.raises(SourceError, match=r"index 0 is outside 'imlist' \(5 images, 1-based"):
        load_instre(root)
    with pytest.raises(SourceError, match="gnd_instre.mat"):
        load_instre(tmp_path)


# ================================================================================ load_dataset


def test_format_registry_names() -> None:
    assert set(DATASET_FORMATS.names()) >= {
        "gtjson", "oxford", "paris", "roxford5k", "rparis6k", "holidays", "ukbench", "instre",
        "gnd"}


def test_load_dataset_detects_and_passes_options(tmp_path: Path) -> None:
    root = make_classic(tmp_path / "ox")
    assert detect_format(root) == "oxford"
    ds = load_dataset(root)
    assert ds.name == "oxford5k" and len(ds.queries) == 3
    assert load_dataset(root, "oxford", name="mine").name == "mine"


def test_load_dataset_refusals(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"format 'coco'; formats: .*gtjson.*ukbench"):
        load_dataset(tmp_path, "coco")
    with pytest.raises(SourceError, match="'holidays' does not take option.*colour.*upright"):
        load_dataset(make_holidays(tmp_path / "h"), "holidays", colour=True)
    with pytest.raises(SourceError, match="'gtjson' does not take option.*it takes: no options"):
        load_dataset(tmp_path, "gtjson", protocol="hard")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="cannot tell the dataset format.*instre"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(SourceError, match="not found"):
        load_dataset(tmp_path / "nowhere")


@needs_shared
def test_load_dataset_gtjson_and_gnd_file() -> None:
    sample = SHARED_DATA / "holidays_sample"
    assert detect_format(sample) == "gtjson"
    assert load_dataset(sample) == load_gt_json(sample)
    if (OFFICIAL / "gnd_holidays.mat").is_file():
        ds = load_dataset(OFFICIAL / "gnd_holidays.mat", check_images=False)
        assert (len(ds.images), len(ds.queries)) == (1491, 500)
