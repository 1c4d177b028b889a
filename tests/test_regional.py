"""Regional descriptors (PS-Net, P1d) end to end on generated garments-like scenes: layouts and
keypoint boxes, the stored kind kept up to date on add/remove, a copy with one region replaced
ranked first by ``search --regional`` with that region flagged, ``fit-regions`` learning the
regions copies keep, and one-line errors."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import matchlens
from matchlens.errors import ConfigError, IndexError_
from matchlens.regional import (DIFFERS_BELOW, REGION_LAYOUTS, make_layout, open_regional, read_keypoints,
                                region_names, verdict)
from matchlens.regional.fit import alpha_tri, coordinate_ascent, hinge_terms, plagiarism_loss, Triplets
from matchlens.regional.layouts import GARMENT5, boxes_from_landmarks
from tests.conftest import make_scene, run_cli

SIZE = (240, 320)  # portrait, like a garment photo
SIDE = "side=320"  # the regional map at 320 px (10x8 cells): fine enough here, and fast


def scene(seed: int) -> Image.Image:
    return make_scene(seed, SIZE)


def replaced(image: Image.Image, donor: Image.Image, region: str) -> Image.Image:
    """``image`` with one garment5 region replaced by the same region of ``donor``, re-encoded."""
    x0, y0, x1, y1 = GARMENT5[region]
    w, h = image.size
    box = (round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))
    out = image.copy()
    out.paste(donor.crop(box), box[:2])
    data = io.BytesIO()
    out.save(data, "JPEG", quality=88)
    return Image.open(data).convert("RGB")


@pytest.fixture(scope="module")
def garments(tmp_path_factory) -> Path:
    """images/: 7 scenes and a copy of scene 0 whose left sleeve comes from another scene;
    query.jpg: scene 0 itself (not indexed)."""
    root = tmp_path_factory.mktemp("regional_set")
    (root / "images").mkdir()
    for i in range(1, 8):
        scene(500 + i).save(root / "images" / f"g{i}.jpg", quality=92)
    replaced(scene(500), scene(590), "left_sleeve").save(root / "images" / "copy.jpg", quality=92)
    scene(500).save(root / "query.jpg", quality=92)
    return root


@pytest.fixture(scope="module")
def regional_index(tmp_path_factory, garments) -> Path:
    """An index of the images with the regional kind added through ``matchlens encode``."""
    from matchlens.cli import main

    index_dir = tmp_path_factory.mktemp("regional_idx") / "index"
    matchlens.build_index(garments / "images", index_dir, spec=matchlens.PipelineSpec(max_side=128))
    try:
        main(["encode", str(index_dir), "--kind", "regional", "--params", f"layout=garment5,{SIDE}", "-q"])
    except SystemExit as done:
        raise AssertionError(f"encode --kind regional failed with exit code {done.code}") from None
    return index_dir


# --- layouts ------------------------------------------------------------------------------------
def test_layouts_are_registered_with_their_regions():
    assert REGION_LAYOUTS.names() == ["garment5", "grid2x2", "grid3x3", "keypoints"]
    assert region_names("garment5") == ["collar", "left_sleeve", "right_sleeve", "chest", "hem"]
    assert len(region_names("grid3x3")) == 9 and "centre" in region_names("grid3x3")
    cells = make_layout("grid2x2").boxes()
    assert sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in cells) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="unknown region layout 'nope'; choose one of: garment5"):
        make_layout("nope")


def test_keypoint_boxes_follow_the_landmarks(tmp_path):
    points = {"left_collar": [100, 40], "right_collar": [140, 40], "left_sleeve": [20, 200],
              "right_sleeve": [220, 200], "left_hem": [60, 300], "right_hem": [180, 300]}
    given = {"collar": [0, 0, 240, 60], "left_sleeve": [0, 60, 60, 240], "right_sleeve": [180, 60, 240, 240],
             "chest": [60, 60, 180, 240], "hem": [0, 240, 240, 320]}
    path = tmp_path / "points.json"
    path.write_text(json.dumps({"a.jpg": points, "sub/b.jpg": given}))
    layout = make_layout("keypoints", keypoints=str(path))
    boxes = dict(zip(layout.names(), layout.boxes("/anywhere/a.jpg", (240, 320))))
    # Sleeves span the collar point and the cuff of their side; the hem sits at the bottom.
    # (padded by a tenth of the collar-to-hem height, 26 px); the collar band starts 13 px above the collar.
    assert boxes["left_sleeve"][0] < 0.1 and boxes["left_sleeve"][2] == pytest.approx((100 + 26) / 240)
    assert boxes["right_sleeve"][2] > 0.9 and boxes["hem"][1] > 0.7 and boxes["collar"][1] == pytest.approx(27 / 320)
    pixels = boxes_from_landmarks({k: tuple(v) for k, v in points.items()})
    assert pixels["chest"][0] == 100 and pixels["chest"][2] == 140
    # Named boxes are used as given (relative to the query box when there is one).
    named = dict(zip(layout.names(), layout.boxes(str(tmp_path / "sub" / "b.jpg"), (240, 320))))
    assert named["hem"] == pytest.approx((0.0, 0.75, 1.0, 1.0))
    framed = dict(zip(layout.names(), layout.boxes("b.jpg", (240, 320), frame=(0, 160, 240, 320))))
    assert framed["hem"] == pytest.approx((0.0, 0.5, 1.0, 1.0))
    # An image the file does not list gets the fixed garment5 boxes.
    assert layout.boxes("other.jpg", (240, 320)) == make_layout("garment5").boxes()


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"a.jpg": {"left_collar": [1, 2]}}', "missing: right_collar"),
    ('{"a.jpg": {"elbow": [1, 2]}}', "unknown entry 'elbow'"),
    ('{"a.jpg": {"collar": [5, 5, 1, 1]}}', "empty or inverted"),
])
def test_bad_keypoints_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "k.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        read_keypoints(path)
    assert "\n" not in str(info.value)


def test_verdicts():
    assert verdict({"collar": 0.95, "left_sleeve": 0.4, "chest": 0.9, "hem": 0.9, "right_sleeve": 0.9}) == \
        "left sleeve differs, the rest matches"
    assert verdict({"collar": 0.5, "left_sleeve": 0.4, "chest": 0.9, "hem": 0.9, "right_sleeve": 0.9}) == \
        "collar band and left sleeve differ, the rest matches"
    assert verdict({"a": 0.1, "b": 0.2, "c": 0.9}) == "2 of 3 regions differ"
    assert verdict({"a": 0.99}) == "every region matches"


# --- the stored kind ----------------------------------------------------------------------------
def test_regional_api_reads_the_stored_kind(regional_index, garments):
    kind = open_regional(matchlens.open_index(regional_index))
    assert kind.names == region_names("garment5") and kind.size == 8
    query = kind.query_code(garments / "query.jpg")
    assert query.shape == (5, kind.vectors(0).shape[1])
    assert np.allclose(np.linalg.norm(query, axis=1), 1.0, atol=1e-4)
    weights = {"collar": 1, "left_sleeve": 0, "right_sleeve": 1, "chest": 1, "hem": 1}
    scores = kind.scores(query, weights)
    by_hand = [float(kind.similarities(query, kind.vectors(r)) @ np.array([0.25, 0, 0.25, 0.25, 0.25]))
               for r in range(kind.size)]
    assert scores == pytest.approx(by_hand, abs=1e-4)
    assert kind.similarities(0, 0) == pytest.approx(np.ones(5), abs=1e-3)  # rows work too
    with pytest.raises(IndexError_, match="is a bow kind|has no regional kind 'bow'"):
        open_regional(matchlens.open_index(regional_index), "bow")


def test_descriptors_are_kept_up_to_date_on_add_and_remove(tmp_path, regional_index, garments):
    from matchlens.api import encode, regional_search

    index_dir = tmp_path / "index"
    shutil.copytree(regional_index, index_dir)
    index, _ = matchlens.open_index(index_dir).add(garments / "query.jpg")
    kind = open_regional(index)  # stale: the new image is described on the fly, nothing written
    assert kind.size == 9 and kind.similarities(index.size - 1, kind.query_code(garments / "query.jpg")).min() > 0.99
    # A search through the pipeline brings the stored kind up to date, encoding only the new image.
    answer, _, _ = regional_search(index, garments / "query.jpg", k=1)
    assert Path(answer.results[0].path).name == "query.jpg"
    built = json.loads(next((index_dir / "kinds" / "regional").glob("built-*/built.json")).read_text())
    assert (built["images"], built["encoded"], built["reused"]) == (9, 1, 8)
    index, _ = index.remove(str(garments / "images" / "g1.jpg"))
    infos = encode(index_dir)  # `matchlens encode IDX` updates every kind, the regional one too
    assert [(i.name, i.images, i.up_to_date) for i in infos] == [("regional", 8, True)]
    assert open_regional(index).size == 8


# --- search --regional --------------------------------------------------------------------------
def test_copy_with_one_region_replaced_ranks_first_and_the_region_is_flagged(capsys, monkeypatch, regional_index,
                                                                             garments, tmp_path):
    code, out, err = run_cli(capsys, "search", regional_index, garments / "query.jpg", "--regional", "--json",
                             "-k", 3, "--explain", tmp_path / "page")
    assert code == 0, err
    results = json.loads(out)
    first = results[0]
    assert Path(first["path"]).name == "copy.jpg"
    assert first["regions"]["left_sleeve"] < DIFFERS_BELOW
    assert all(v >= DIFFERS_BELOW for k, v in first["regions"].items() if k != "left_sleeve"), first["regions"]
    assert first["verdict"] == "left sleeve differs, the rest matches"
    assert results[1]["score"] < first["score"] and results[1]["verdict"] != first["verdict"]
    page = (tmp_path / "page" / "index.html").read_text()
    assert "regions_001.png" in page and "left sleeve differs" in page
    assert Image.open(tmp_path / "page" / "regions_001.png").size[0] > 500  # query and result side by side
    # The table shows every region and the verdict; weights that ignore the sleeve rank it higher still.
    monkeypatch.setenv("COLUMNS", "250")  # a table this wide would fold in an 80-column capture
    code, out, err = run_cli(capsys, "search", regional_index, garments / "query.jpg", "--regional", "-k", 2)
    assert code == 0 and "left sleeve" in out and "differs, the rest matches" in out
    weights = tmp_path / "lambdas.json"
    weights.write_text(json.dumps({"default": {"collar": 1, "left_sleeve": 1, "right_sleeve": 1, "chest": 1, "hem": 1},
                                   "categories": {"shirt": {"collar": 1, "left_sleeve": 0, "right_sleeve": 1,
                                                            "chest": 1, "hem": 1}}}))
    code, out, _ = run_cli(capsys, "search", regional_index, garments / "query.jpg", "--regional", "--json",
                           "-k", 1, "--weights", weights, "--category", "shirt")
    assert code == 0 and json.loads(out)[0]["score"] > first["score"]


# --- fit-regions --------------------------------------------------------------------------------
def test_coordinate_ascent_follows_the_papers_loss():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(6, 3, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    t = Triplets(q, q.copy(), -q, [None] * 6)
    t.positive[:, 0] = -q[:, 0]  # region 0 differs in every positive
    assert alpha_tri(t) == pytest.approx(np.full(6, (2 / 3) / 2))  # avg/max of (2, 0, 0)
    hinge = hinge_terms(t, margin=0.1)
    assert hinge[:, 0] == pytest.approx(np.full(6, 0.1)) and (hinge[:, 1:] == 0).all()
    lam, history = coordinate_ascent(hinge, alpha_tri(t))
    assert lam.sum() == pytest.approx(1.0) and (lam >= 0).all() and lam[0] < 1 / 3
    assert history[-1] <= plagiarism_loss(np.full(3, 1 / 3), hinge, alpha_tri(t))
    assert np.all(np.diff(history) <= 1e-12)  # coordinate ascent never accepts a worse loss


def test_paper_objective_ends_one_hot_pooled_spreads():
    """eq. 4 is linear in λ: its optimum is a vertex. The pooled hinge stops counting a triplet once
    the weighted distances separate it, so λ keeps several separating regions."""
    from matchlens.regional.fit import OBJECTIVES, distance_gaps, pooled_loss

    rng = np.random.default_rng(1)
    n, regions = 40, 4
    gaps = np.full((n, regions), -0.3) + 0.02 * rng.normal(size=(n, regions))
    gaps[: n // 2, 0] = 0.6   # half the copies changed region 0, the other half region 1
    gaps[n // 2:, 1] = 0.6
    gaps[:, 2] = -0.05 + 0.02 * rng.normal(size=n)  # region 2 separates a little (its eq.-4 hinge stays > 0)
    gaps[:, 3] -= 0.25                               # region 3 separates best
    q = np.zeros((n, regions, 2))
    t = Triplets(q, q, q, [None] * n)
    t.positive = np.stack([1.0 + gaps, np.zeros_like(gaps)], axis=-1)  # D⁺ = 1 + gap, D⁻ = 1
    t.negative = np.stack([np.ones_like(gaps), np.zeros_like(gaps)], axis=-1)
    assert distance_gaps(t) == pytest.approx(gaps, abs=1e-9)
    paper = OBJECTIVES.get("paper")(t, 0.1)
    pooled = OBJECTIVES.get("pooled")(t, 0.1)
    lam_paper, _ = coordinate_ascent(hinge_terms(t, 0.1), alpha_tri(t), loss_of=paper)
    lam_pooled, hist = coordinate_ascent(hinge_terms(t, 0.1), alpha_tri(t), loss_of=pooled)
    assert np.count_nonzero(lam_paper > 1e-9) == 1 and lam_paper[3] == pytest.approx(1.0)  # a vertex
    assert np.count_nonzero(lam_pooled > 0.05) >= 3 and hist[-1] == pytest.approx(0.0, abs=1e-9)
    assert pooled(lam_pooled) <= pooled(np.full(regions, 0.25))
    assert pooled_loss(np.full(regions, 0.25), distance_gaps(t), alpha_tri(t)) == pytest.approx(pooled(np.full(regions, 0.25)))


def test_fit_regions_learns_the_regions_copies_keep(capsys, regional_index, tmp_path):
    """Two categories of generated copies: 'shirt' copies replace any region but the hem, 'dress'
    copies any but the collar; negatives are other scenes. The kept region gains weight."""
    folder = tmp_path / "fit"
    folder.mkdir()
    rows = []
    edits = {"shirt": ["collar", "left_sleeve", "right_sleeve", "chest"],
             "dress": ["left_sleeve", "right_sleeve", "chest", "hem"]}
    for c, (category, regions) in enumerate(edits.items()):
        for i, region in enumerate(regions):
            seed = 800 + 10 * c + i
            scene(seed).save(folder / f"o{seed}.jpg", quality=92)
            replaced(scene(seed), scene(seed + 100), region).save(folder / f"p{seed}.jpg", quality=92)
            rows.append({"query": f"o{seed}.jpg", "positive": f"p{seed}.jpg",
                         "negative": f"o{800 + 10 * (1 - c) + i}.jpg", "category": category})
    pairs = folder / "pairs.csv"
    with open(pairs, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["query", "positive", "negative", "category"])
        writer.writeheader()
        writer.writerows(rows)
    out_file = tmp_path / "lambdas.json"
    code, out, err = run_cli(capsys, "fit-regions", regional_index, pairs, "--category-column", "category",
                             "--out", out_file, "-q")
    assert code == 0, err
    fitted = json.loads(out_file.read_text())
    for category, kept in (("shirt", "hem"), ("dress", "collar")):
        lam = fitted["categories"][category]
        assert sum(lam.values()) == pytest.approx(1.0, abs=1e-5) and min(lam.values()) >= 0
        assert lam[kept] > 0.2 and lam[kept] == max(lam.values()), (category, lam)
    assert fitted["fit"]["loss_fitted"]["shirt"] < fitted["fit"]["loss_uniform"]["shirt"]
    # The file is what --weights reads.
    code, out, err = run_cli(capsys, "search", regional_index, folder / "o800.jpg", "--regional", "--json", "-k", 1,
                             "--weights", out_file, "--category", "shirt")
    assert code == 0, err


# --- one-line errors ----------------------------------------------------------------------------
def test_one_line_errors(capsys, regional_index, garments, built_index, tmp_path):
    query = garments / "query.jpg"
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    cases = [
        (("search", regional_index, query, "--regional", "--weights", bad), "is not valid JSON"),
        (("search", regional_index, query, "--weights", bad), "--weights and --category go with --regional"),
        (("search", built_index.root, query, "--regional"), "has no regional kind 'regional'"),
        (("encode", regional_index, "--kind", "regional", "--name", "r2", "--params", "layout=nope"),
         "unknown region layout 'nope'"),
        (("search", regional_index, query, "--regional", "--category", "tshirt"), "have no category 'tshirt'"),
        (("fit-regions", regional_index, bad, "--out", tmp_path / "l.json"), "not a readable CSV|lacks column"),
    ]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"default": {"collar": 1, "sleeve": 1}}))
    cases.append((("search", regional_index, query, "--regional", "--weights", wrong), "unknown: sleeve"))
    for args, message in cases:
        code, out, err = run_cli(capsys, *args)
        assert code == 2, (args, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and any(m in lines[0] for m in message.split("|")), lines
    assert not (regional_index / "kinds" / "r2").exists()


# --- the web service ----------------------------------------------------------------------------
def test_web_service_searches_by_regions(tmp_path, regional_index, garments):
    from fastapi.testclient import TestClient

    from matchlens.service.app import create_app

    index_dir = tmp_path / "index"
    shutil.copytree(regional_index, index_dir)
    client = TestClient(create_app(index_dir, allowed_hosts=["testserver"]))
    assert client.get("/index").json()["regional_kinds"] == ["regional"]
    upload = {"image": ("query.jpg", (garments / "query.jpg").read_bytes(), "image/jpeg")}
    body = client.post("/search", files=upload, data={"k": "2", "regional": "true"}).json()
    first = body["results"][0]
    assert first["name"] == "copy.jpg" and first["verdict"] == "left sleeve differs, the rest matches", first
    assert len(first["region_boxes"]) == 5 and set(first["regions"]) == set(body["regional"]["regions"])
    assert body["regional"]["weights"] == pytest.approx([0.2] * 5) and len(body["regional"]["query_boxes"]) == 5
    plain = client.post("/search", files=upload, data={"k": "2"}).json()
    assert plain["regional"] is None and plain["results"][0]["regions"] is None
    page = client.get("/static/app.js").text
    assert "regionCanvas" in page and 'form.append("regional", "true")' in page
