"""gt.json reader: the real shared sets (read in place) and generated broken sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from matchlens.errors import SourceError
from matchlens.io.datasets import Dataset, Query
from matchlens.io.formats import load_gt_json

# The shared data lives beside the repository (../shared/data) and must never be copied into it.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "oxford5k_subset" / "gt.json").is_file(),
    reason=f"shared evaluation data not found at {SHARED_DATA}",
)


# ------------------------------------------------------------------------------- shared data


@pytest.fixture(scope="module")
def oxford() -> Dataset:
    return load_gt_json(SHARED_DATA / "oxford5k_subset")


@needs_shared
def test_oxford_counts(oxford: Dataset) -> None:
    assert oxford.name == "oxford5k_subset"
    assert len(oxford.images) == 1009
    assert len(oxford.queries) == 114
    official = oxford.official_queries()
    assert len(official) == 10
    assert all(q.box is not None for q in official)
    assert all(q.box is None for q in oxford.queries if not q.official)


@needs_shared
def test_oxford_query_fields(oxford: Dataset) -> None:
    first = oxford.queries[0]
    assert isinstance(first, Query)
    assert first.image == "all_souls_000006.jpg"
    assert first.group == "all_souls"
    assert len(first.positives) == 13 and len(first.junk) == 7
    assert oxford.image_path(first.image).is_file()


@needs_shared
def test_oxford_box_rescaled_by_hand(oxford: Dataset) -> None:
    # oxford_002985.jpg is stored 480x640; original box [186, 163, 589, 859] at 1024 px,
    # scale 640/1024 = 0.625 -> [116.25, 101.875, 368.125, 536.875]
    (query,) = [q for q in oxford.official_queries() if q.image == "oxford_002985.jpg"]
    assert query.box == pytest.approx((116.25, 101.875, 368.125, 536.875), abs=1e-9)
    assert query.group == "all_souls"


@needs_shared
def test_oxford_official_boxes_lie_inside_their_images(oxford: Dataset) -> None:
    for query in oxford.official_queries():
        with Image.open(oxford.image_path(query.image)) as im:
            width, height = im.size
        x0, y0, x1, y1 = query.box  # type: ignore[misc]
        assert -1 <= x0 < x1 <= width + 1, query.image
        assert -1 <= y0 < y1 <= height + 1, query.image
        # Sensible: the smallest official box is about 78 x 176 px once stored.
        assert x1 - x0 >= 32 and y1 - y0 >= 32, query.image
        assert (x1 - x0) * (y1 - y0) >= 0.02 * width * height, query.image


@needs_shared
def test_ukbench_counts() -> None:
    ukb = load_gt_json(SHARED_DATA / "ukbench_subset")
    assert len(ukb.images) == 56 and len(ukb.queries) == 56
    assert all(len(q.positives) == 3 for q in ukb.queries)
    assert all(q.image not in q.positives for q in ukb.queries)
    assert not ukb.official_queries()
    assert all(q.box is None for q in ukb.queries)


@needs_shared
def test_holidays_sample_loads() -> None:
    hol = load_gt_json(SHARED_DATA / "holidays_sample")
    assert hol.images == ("100000.jpg", "100001.jpg", "100002.jpg")
    (official,) = hol.official_queries()
    assert official.image == "100000.jpg"
    assert official.positives == frozenset({"100001.jpg", "100002.jpg"})
    assert official.box is None


# ---------------------------------------------------------------------------- generated sets


def make_set(root: Path, gt: Any, images: dict[str, tuple[int, int]]) -> Path:
    """Write a small set: tiny images of the given (width, height) and a gt.json."""
    (root / "images").mkdir(parents=True)
    for name, size in images.items():
        Image.new("RGB", size, (120, 60, 30)).save(root / "images" / name)
    (root / "gt.json").write_text(json.dumps(gt) if not isinstance(gt, str) else gt)
    return root


def good_gt(**query_extra: Any) -> dict[str, Any]:
    query = {"image": "a.png", "positives": ["b.png"], "junk": ["c.png"], "group": "g"}
    return {"images": ["a.png", "b.png", "c.png"], "queries": [{**query, **query_extra}]}


SIZES = {"a.png": (320, 240), "b.png": (16, 16), "c.png": (16, 16)}


def test_generated_set_loads(tmp_path: Path) -> None:
    ds = load_gt_json(make_set(tmp_path / "s", good_gt(), SIZES))
    assert ds.name == "s"
    assert ds.images == ("a.png", "b.png", "c.png")
    assert ds.queries == (
        Query("a.png", frozenset({"b.png"}), frozenset({"c.png"}), "g", None, False),
    )
    assert ds.image_path("b.png") == tmp_path / "s" / "images" / "b.png"


def test_box_rescaled_with_default_original_side(tmp_path: Path) -> None:
    # stored longest side 320, original 1024 -> scale 0.3125
    gt = good_gt(official_query=True, official_bbox_xyxy_original_res=[100, 50, 500, 300])
    (query,) = load_gt_json(make_set(tmp_path / "s", gt, SIZES)).official_queries()
    assert query.box == pytest.approx((31.25, 15.625, 156.25, 93.75), abs=1e-12)


def test_box_rescaled_with_declared_original_side(tmp_path: Path) -> None:
    # top-level original side 640 -> scale 0.5; a per-query 1280 overrides it -> 0.25
    gt = good_gt(official_query=True, official_bbox_xyxy_original_res=[100, 50, 500, 300])
    gt["original_longest_side"] = 640
    second = {**gt["queries"][0], "original_longest_side": 1280}
    gt["queries"].append(second)
    ds = load_gt_json(make_set(tmp_path / "s", gt, SIZES))
    assert ds.queries[0].box == pytest.approx((50.0, 25.0, 250.0, 150.0), abs=1e-12)
    assert ds.queries[1].box == pytest.approx((25.0, 12.5, 125.0, 75.0), abs=1e-12)


def test_missing_junk_and_group_default_to_empty(tmp_path: Path) -> None:
    gt = {"images": ["a.png", "b.png"], "queries": [{"image": "a.png", "positives": ["b.png"]}]}
    (query,) = load_gt_json(make_set(tmp_path / "s", gt, SIZES)).queries
    assert query.junk == frozenset() and query.group is None and not query.official


def assert_source_error(path: Path, match: str) -> None:
    with pytest.raises(SourceError, match=match) as info:
        load_gt_json(path)
    assert "\n" not in str(info.value)


def test_missing_folder(tmp_path: Path) -> None:
    assert_source_error(tmp_path / "nope", "dataset folder not found")


def test_missing_gt_json(tmp_path: Path) -> None:
    (tmp_path / "s" / "images").mkdir(parents=True)
    assert_source_error(tmp_path / "s", "ground-truth file not found")


def test_missing_image_folder(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "gt.json").write_text(json.dumps(good_gt()))
    assert_source_error(tmp_path / "s", "image folder not found")


@pytest.mark.parametrize(
    "gt, match",
    [
        ('{"images": [', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"queries": []}, "'images' must be a list"),
        ({"images": [], "queries": []}, "'images' is empty"),
        ({"images": ["a.png", "a.png"], "queries": []}, "more than once"),
        ({"images": ["../a.png"], "queries": []}, "invalid file name"),
        ({"images": ["a.png"]}, "'queries' must be a list"),
        ({"images": ["a.png"], "queries": [3]}, "must be a JSON object"),
    ],
)
def test_malformed_gt_json(tmp_path: Path, gt: Any, match: str) -> None:
    assert_source_error(make_set(tmp_path / "s", gt, SIZES), match)


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"image": "zzz.png"}, "not one of the listed images"),
        ({"positives": ["zzz.png"]}, "'positives' names 'zzz.png'"),
        ({"positives": "b.png"}, "'positives' must be a list"),
        ({"junk": ["zzz.png"]}, "'junk' names"),
        ({"group": 7}, "'group' must be a string"),
        ({"official_query": "yes"}, "'official_query' must be true or false"),
        ({"official_bbox_xyxy_original_res": [1, 2, 3]}, "four numbers"),
        ({"official_bbox_xyxy_original_res": [10, 10, 5, 20]}, "is empty"),
        ({"official_bbox_xyxy_original_res": [0, 0, 1, 1], "original_longest_side": 0},
         "must be a positive number"),
    ],
)
def test_malformed_query(tmp_path: Path, extra: dict[str, Any], match: str) -> None:
    assert_source_error(make_set(tmp_path / "s", good_gt(**extra), SIZES), match)


def test_listed_image_missing_on_disk(tmp_path: Path) -> None:
    gt = good_gt()
    gt["images"] += ["gone1.png", "gone2.png"]
    assert_source_error(make_set(tmp_path / "s", gt, SIZES), r"2 image\(s\) .* 'gone1.png'")


def test_unreadable_query_image_for_box(tmp_path: Path) -> None:
    gt = good_gt(official_bbox_xyxy_original_res=[0, 0, 10, 10])
    root = make_set(tmp_path / "s", gt, SIZES)
    (root / "images" / "a.png").write_bytes(b"not an image")
    assert_source_error(root, "cannot read the image size")
