"""The evaluation report: PR points (area = revisitop AP), plot, CSV, worst-queries page, index."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matchlens.evaluate.metrics import average_precision, precision_at_k, recall_at_k
from matchlens.evaluate.report import (
    precision_recall_points,
    plot_pr_curves,
    write_per_query_csv,
    write_report,
    write_worst_queries_html,
)
from matchlens.evaluate.results import Evaluation, QueryOutcome
from matchlens.io.datasets import Query

UNICODE = "köln <b>&'x.jpg"  # markup characters and non-ASCII in a file name


def _query(image: str, positives=(), junk=(), box=None, group="g") -> Query:
    return Query(image=image, positives=frozenset(positives), junk=frozenset(junk), group=group,
                 box=box, official=True)


def _outcome(query: Query, ranking: list[str], label: str = "cropped to box") -> QueryOutcome:
    """An outcome whose metrics are computed as the evaluator does (junk and the query removed,
    unless the query is one of its own positives)."""
    junk = query.junk | ({query.image} - query.positives)
    metrics = {
        "AP": average_precision(ranking, query.positives, junk),
        "P@1": precision_at_k(ranking, query.positives, junk, k=1),
        "R@1": recall_at_k(ranking, query.positives, junk, k=1),
    }
    scores = [round(1.0 - 0.05 * i, 3) for i in range(len(ranking))]
    return QueryOutcome(query=query, ranking=ranking, scores=scores, metrics=metrics, query_label=label)


def _write_image(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> None:
    """A small bluish image (no yellow in it, so a drawn box is easy to detect)."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[..., :2] = rng.integers(0, 100, size=(h, w, 2))
    pixels[..., 2] = rng.integers(150, 256, size=(h, w))
    Image.fromarray(pixels).save(path, "JPEG")


@pytest.fixture()
def evaluation(tmp_path) -> Evaluation:
    """Seven queries with known APs; 'missing.jpg' is never written; one name is absolute."""
    root = tmp_path / "images"
    root.mkdir()
    absolute = tmp_path / "elsewhere.jpg"
    names = ["q_good.jpg", "q_bad.jpg", "q_mid.jpg", "q_short.jpg", "q_alljunk.jpg", "q_nopos.jpg", UNICODE,
             "p1.jpg", "p2.jpg", "p3.jpg", "j1.jpg", "j2.jpg", "n1.jpg", "n2.jpg", "n3.jpg", "n4.jpg"]
    for seed, name in enumerate(names):
        _write_image(root / name, seed)
    _write_image(absolute, 99)
    _write_image(root / "q_bad.jpg", 1, size=(320, 240))  # larger than a thumbnail: the box is rescaled
    outcomes = [
        _outcome(_query("q_good.jpg", {"p1.jpg", "p2.jpg"}), ["q_good.jpg", "p1.jpg", "p2.jpg", "n1.jpg", "n2.jpg"]),
        _outcome(_query("q_bad.jpg", {"p1.jpg", "p2.jpg", "p3.jpg"}, {"j1.jpg"}, box=(80, 60, 240, 180)),
                 ["n1.jpg", "j1.jpg", "n2.jpg", "p1.jpg", "missing.jpg", "p2.jpg"]),
        _outcome(_query("q_mid.jpg", {"p2.jpg"}), ["n1.jpg", "p2.jpg", "n2.jpg", "n3.jpg", "n4.jpg"]),
        _outcome(_query("q_short.jpg", {"p1.jpg"}, group=None), ["n2.jpg", str(absolute), "p1.jpg"], "full image"),
        _outcome(_query("q_alljunk.jpg", {"p3.jpg"}, {"j1.jpg", "j2.jpg"}), ["j1.jpg", "j2.jpg"]),
        _outcome(_query("q_nopos.jpg"), ["n1.jpg", "n2.jpg"]),
        _outcome(_query(UNICODE, {"p1.jpg"}), ["n1.jpg", "n2.jpg", "n3.jpg", "p1.jpg"]),
    ]
    aps = [o.ap for o in outcomes if not math.isnan(o.ap)]
    return Evaluation(dataset="toy set", protocol="cropped queries (standard)", pipeline="toy pipeline $x$",
                      image_root=str(root), outcomes=outcomes,
                      summary={"mAP": 100 * sum(aps) / len(aps), "mP@1": 33.3, "mAP@10": math.nan},
                      notes=["Junk & the query itself are ignored <by> the metric."])


# Worst first: q_alljunk 0, unicode 0.125, q_bad 0.1639, q_short 0.1667, q_mid 0.25, q_good 1, q_nopos NaN.
EXPECTED_ORDER = ["q_alljunk.jpg", UNICODE, "q_bad.jpg", "q_short.jpg", "q_mid.jpg", "q_good.jpg", "q_nopos.jpg"]


# ----------------------------------------------------------------------------- PR points

RANKINGS = [
    # (positives, junk, ranking) — the query "q" is added to junk, as the metric does.
    ({"a", "b"}, set(), ["a", "b", "x", "y"]),                       # perfect
    ({"a", "b", "c"}, set(), ["x", "a", "y", "z", "b", "c"]),        # gaps, first hit not first
    ({"a", "b"}, {"j"}, ["j", "x", "a", "j2", "b"]),                 # junk before a hit
    ({"a", "b"}, {"j", "k"}, ["q", "j", "a", "k", "x", "b"]),        # query itself and junk interleaved
    ({"a", "b", "c", "d"}, set(), ["x", "a", "y", "b"]),             # positives missing from the list
    ({"a", "b"}, {"b"}, ["a", "b", "x"]),                             # a positive also listed as junk
    ({"a"}, set(), ["x", "y", "z", "a"]),                             # one positive, late
    ({"a"}, set(), ["x", "y"]),                                      # no positive retrieved
]


@pytest.mark.parametrize("positives,junk,ranking", RANKINGS)
def test_pr_area_equals_revisitop_average_precision(positives, junk, ranking):
    outcome = _outcome(_query("q", positives, junk), ranking)
    recall, precision = precision_recall_points(outcome)
    assert (recall[0], precision[0]) == (0.0, 1.0)
    assert np.all(np.diff(recall) >= 0) and np.all((precision >= 0) & (precision <= 1))
    expected = average_precision(ranking, positives, set(junk) | {"q"})
    assert np.trapezoid(precision, recall) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("positives", [{"a", "b"}, {"q", "a", "b"}])
def test_pr_area_matches_the_evaluation_protocol(positives):
    """Same AP as matchlens eval, also when the query is listed among its own positives."""
    from matchlens.evaluate.protocol import query_metrics

    query = _query("q", positives, {"j"})
    ranking = ["q", "x", "j", "a", "y", "b"]
    recall, precision = precision_recall_points(_outcome(query, ranking))
    assert np.trapezoid(precision, recall) == pytest.approx(query_metrics(query, ranking)["AP"], abs=1e-12)


def test_pr_points_hit_precisions_and_gap_drop():
    # Junk-free ranking: x a y z b c -> hits at positions 1, 4, 5 of 3 positives.
    outcome = _outcome(_query("q", {"a", "b", "c"}), ["x", "a", "y", "z", "b", "c"])
    recall, precision = precision_recall_points(outcome)
    points = list(zip(recall.round(6), precision.round(6)))
    third = round(1 / 3, 6)
    assert points == [(0, 1), (0, 0), (third, 0.5), (third, round(1 / 4, 6)), (round(2 / 3, 6), 0.4),
                      (1, 0.5)]


def test_pr_points_without_positives_or_with_only_junk():
    recall, precision = precision_recall_points(_outcome(_query("q"), ["a", "b"]))
    assert recall.size == precision.size == 0
    outcome = _outcome(_query("q", {"p"}, {"j1", "j2"}), ["j1", "q", "j2"])
    recall, precision = precision_recall_points(outcome)
    assert list(recall) == [0.0] and list(precision) == [1.0] and outcome.ap == 0.0


# ----------------------------------------------------------------------------- plot, CSV

def test_mean_curve_uses_interpolated_precision():
    from matchlens.evaluate.report import _interpolated_precision

    # Hits at recall 1/3 (precision 1) and 2/3 (precision 2/3); the third positive is never found.
    grid = np.array([0.0, 0.2, 1 / 3, 0.5, 2 / 3, 0.9, 1.0])
    curve = _interpolated_precision(_outcome(_query("q", {"a", "b", "c"}), ["a", "x", "b"]), grid)
    assert curve == pytest.approx([1, 1, 1, 2 / 3, 2 / 3, 0, 0])
    # A later, better precision lifts the earlier recall levels (max over recall >= r).
    curve = _interpolated_precision(_outcome(_query("q", {"a", "b"}), ["x", "x2", "a", "b"]), grid)
    assert curve == pytest.approx([0.5] * 7)


def _colour_pixels(img: Image.Image, rgb: tuple[int, int, int], tol: int = 30) -> int:
    pixels = np.asarray(img.convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(rgb)).max(axis=2) <= tol).sum())


def test_pr_plot_is_a_png_with_mean_and_highlighted_curves(evaluation, tmp_path):
    path = plot_pr_curves(evaluation, tmp_path / "pr.png", highlight=2)
    assert path == tmp_path / "pr.png"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (800, 600)
        img.load()
        assert _colour_pixels(img, (31, 119, 180)) > 50   # C0: the worst query
        assert _colour_pixels(img, (255, 127, 14)) > 50   # C1: the second worst
        assert _colour_pixels(img, (0, 0, 0), tol=10) > 500  # bold mean curve, axes, text
        assert _colour_pixels(img, (44, 160, 44)) == 0     # C2: only two highlighted


def test_pr_plot_when_no_query_has_positives(evaluation, tmp_path):
    evaluation.outcomes = [o for o in evaluation.outcomes if math.isnan(o.ap)]
    with Image.open(plot_pr_curves(evaluation, tmp_path / "pr.png")) as img:
        assert img.format == "PNG" and img.size == (800, 600)


def test_csv_has_one_row_per_query_sorted_by_ap(evaluation, tmp_path):
    with write_per_query_csv(evaluation, tmp_path / "q.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["query", "group", "query_label", "AP", "P@1", "R@1"]
    body = rows[1:]
    assert [r[0] for r in body] == EXPECTED_ORDER
    aps = [float(r[3]) for r in body[:-1]]
    assert aps == sorted(aps) and aps[0] == 0.0 and aps[-1] == 1.0
    assert body[-1][3:] == ["", "", ""]  # no positives: NaN metrics are empty cells
    short = body[EXPECTED_ORDER.index("q_short.jpg")]
    assert short[1:3] == ["", "full image"] and float(short[3]) == pytest.approx(1 / 6)


# ----------------------------------------------------------------------------- worst-queries page

def _sections(page: str) -> list[tuple[str, float, str]]:
    """(query name, AP, section html) of each query block, in page order."""
    found = re.findall(r"<section class=qblock data-query='([^']*)' data-ap='([^']*)'>(.*?)</section>", page, re.S)
    return [(html.unescape(name), float(ap), body) for name, ap, body in found]


def _results(section: str) -> list[tuple[str, str, str]]:
    """(verdict class, verdict text, name) of each result figure of a section."""
    found = re.findall(r"<figure class='result (\w+)'>.*?<div class=tag>(.*?)</div><div class=name>(.*?)</div>",
                       section, re.S)
    return [(v, html.unescape(t), html.unescape(n)) for v, t, n in found]


def test_worst_page_lists_the_worst_queries_in_ap_order_with_their_results(evaluation, tmp_path):
    page = write_worst_queries_html(evaluation, tmp_path / "w.html", worst=4, top=5).read_text(encoding="utf-8")
    sections = _sections(page)
    assert [s[0] for s in sections] == EXPECTED_ORDER[:4]
    assert [s[1] for s in sections] == sorted(s[1] for s in sections)
    by_name = {name: body for name, _, body in sections}
    rankings = {o.query.image: o.ranking for o in evaluation.outcomes}
    for name, body in by_name.items():  # top results, or the whole ranking when it is shorter
        assert [r[2] for r in _results(body)] == rankings[name][:5]
    assert len(_results(by_name["q_alljunk.jpg"])) == 2
    assert "q_mid.jpg" not in page and "q_good.jpg" not in page
    # The unscored query is listed apart, not as a query block.
    assert re.search(r"<ul class=unscored><li>q_nopos\.jpg", page)


def test_worst_page_verdicts_colours_and_positive_ranks(evaluation, tmp_path):
    page = write_worst_queries_html(evaluation, tmp_path / "w.html", worst=7, top=5).read_text(encoding="utf-8")
    by_name = {name: body for name, _, body in _sections(page)}
    assert len(by_name) == 6  # every query with positives, the one without is listed apart
    assert [(v, t) for v, t, _ in _results(by_name["q_bad.jpg"])] == [
        ("negative", "negative — not in the ground truth"),
        ("junk", "junk — ignored by the metric"),
        ("negative", "negative — not in the ground truth"),
        ("positive", "positive"),
        ("negative", "negative — not in the ground truth"),
    ]
    assert _results(by_name["q_good.jpg"])[0][:2] == ("query", "the query itself — ignored by the metric")
    self_positive = _outcome(_query("q_good.jpg", {"q_good.jpg", "p1.jpg"}), ["q_good.jpg", "p1.jpg"])
    evaluation.outcomes = [self_positive]
    page = write_worst_queries_html(evaluation, tmp_path / "self.html").read_text(encoding="utf-8")
    assert [r[0] for r in _results(_sections(page)[0][2])] == ["positive", "positive"]
    for verdict, colour in {"positive": "#2a2", "junk": "#888", "negative": "#d33"}.items():
        assert f".{verdict} .tag{{color:{colour}}}" in page and f".{verdict} img{{outline:4px solid {colour}}}" in page
    bad = by_name["q_bad.jpg"]
    assert "3 positives in the ground truth, 2 in the ranking" in bad
    assert "first positive at rank 4 (rank 3 once junk and the query are removed)" in bad
    assert "positives at ranks 4, 6" in bad
    assert "first positive at rank 2 (rank 1 once junk and the query are removed)" in by_name["q_good.jpg"]
    assert "first positive at rank 2</span>" in by_name["q_mid.jpg"]  # nothing removed before it
    assert "1 positive in the ground truth, none in the ranking" in by_name["q_alljunk.jpg"]
    assert "first positive" not in by_name["q_alljunk.jpg"]
    assert "<b>AP 0.164</b> · P@1 0.000 · R@1 0.000" in bad


def test_worst_page_is_offline_escaped_and_survives_missing_images(evaluation, tmp_path):
    page = write_worst_queries_html(evaluation, tmp_path / "w.html", worst=4, top=5).read_text(encoding="utf-8")
    assert "http" not in page.lower()
    links = re.findall(r"""(?:src|href)=['"]([^'"]*)""", page)
    assert links and all(link.startswith("data:image/jpeg;base64,") for link in links)
    # 4 query thumbnails + 2 + 4 + 5 + 3 results, one of which ('missing.jpg') is a placeholder.
    assert len(links) == 17 and page.count("class=missing") == 1 and "image not found" in page
    assert html.escape(UNICODE) in page and "<b>&" not in page


def test_query_thumbnail_has_its_box_drawn(evaluation, tmp_path):
    page = write_worst_queries_html(evaluation, tmp_path / "w.html", worst=4, top=1).read_text(encoding="utf-8")
    by_name = {name: body for name, _, body in _sections(page)}

    def query_thumb(body: str) -> Image.Image:
        uri = re.search(r"<div class=q><img src='data:image/jpeg;base64,([^']+)'", body).group(1)
        return Image.open(io.BytesIO(base64.b64decode(uri)))

    def yellowish(img: Image.Image) -> np.ndarray:
        rgb = np.asarray(img.convert("RGB")).astype(int)
        return (rgb[..., 0] > 150) & (rgb[..., 1] > 120)  # the background has R, G < 100

    bad = query_thumb(by_name["q_bad.jpg"])
    assert bad.size == (160, 120)
    mask = yellowish(bad)
    # The 320x240 image is halved: the box (80, 60, 240, 180) is drawn at (40, 30, 120, 90).
    assert mask[29:32, 50:110].mean() > 0.5 and mask[60, 38:43].any() and mask[60, 118:123].any()
    assert not mask[55:65, 50:110].any() and not mask[:25].any()  # inside and above it: no line
    assert not yellowish(query_thumb(by_name["q_short.jpg"])).any()  # no box, nothing drawn


# ----------------------------------------------------------------------------- whole report, errors

def test_write_report_writes_every_file_and_the_index_links_them(evaluation, tmp_path):
    out = tmp_path / "report" / "nested"
    files = write_report(evaluation, out, worst=3, top=4)
    assert set(files) == {"summary", "csv", "pr", "worst", "index"}
    assert all(p.is_file() and p.parent == out for p in files.values())

    def refuse(constant):
        raise AssertionError(f"{constant} in summary.json")

    summary = json.loads(files["summary"].read_text(encoding="utf-8"), parse_constant=refuse)
    assert summary["summary"]["mAP@10"] is None and len(summary["queries"]) == 7
    assert summary == json.loads(json.dumps({**evaluation.to_dict(), "summary": summary["summary"]}))
    index = files["index"].read_text(encoding="utf-8")
    hrefs = set(re.findall(r"href='([^']*)'", index))
    assert hrefs == {"summary.json", "per_query.csv", "pr_curves.png", "worst_queries.html"}
    assert "src='pr_curves.png'" in index and "http" not in index.lower()
    assert "<th>mAP</th>" in index and f"{evaluation.summary['mAP']:.2f}" in index
    assert html.escape(evaluation.notes[0]) in index and "1 without positives" in index
    assert len(_sections(files["worst"].read_text(encoding="utf-8"))) == 3


def test_empty_evaluation_is_refused(tmp_path):
    empty = Evaluation("toy", "p", "pipe", str(tmp_path), outcomes=[], summary={})
    for call in (lambda: plot_pr_curves(empty, tmp_path / "a.png"),
                 lambda: write_per_query_csv(empty, tmp_path / "a.csv"),
                 lambda: write_worst_queries_html(empty, tmp_path / "a.html"),
                 lambda: write_report(empty, tmp_path / "out")):
        with pytest.raises(ValueError, match="no queries"):
            call()
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_negative_counts_are_refused(evaluation, tmp_path):
    with pytest.raises(ValueError, match="worst"):
        write_report(evaluation, tmp_path / "out", worst=-1)
    with pytest.raises(ValueError, match="highlight"):
        plot_pr_curves(evaluation, tmp_path / "pr.png", highlight=-2)
    assert not (tmp_path / "out").exists()


def test_demo_page_still_uses_the_shared_helpers(evaluation, tmp_path):
    from matchlens.demo import report as demo_report
    from matchlens.evaluate import html as shared

    assert demo_report.thumbnail_uri is shared.thumbnail_uri and demo_report.THUMB == 160
    root = Path(evaluation.image_root)
    row = demo_report.ResultRow(str(root / "q_good.jpg"), "full image", 0.5,
                                [(str(root / "p1.jpg"), 0.9, "positive"), (str(root / "n1.jpg"), 0.8, "negative")])
    page = demo_report.write_results_page(tmp_path / "demo.html", "t", "s", [row]).read_text(encoding="utf-8")
    assert page.count("data:image/jpeg;base64,") == 3 and "✔ correct" in page and "✘ wrong" in page


def test_worst_page_renders_in_chromium(evaluation, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed")
    page = write_worst_queries_html(evaluation, tmp_path / "w.html", worst=3, top=5)
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1400,1000", page.as_uri()], check=True, timeout=120, capture_output=True)
    with Image.open(shot) as img:
        assert img.size == (1400, 1000) and len(set(img.convert("RGB").getdata())) > 50


def test_thumbnails_are_upright_and_boxes_drawn_in_upright_pixels(tmp_path):
    """A phone photo stored sideways (EXIF orientation 6) is shown upright, with its box in place."""
    import base64 as b64
    import io as _io

    from PIL import Image as PILImage

    from matchlens.evaluate.html import thumbnail_uri

    stored = PILImage.new("RGB", (320, 160), (90, 90, 90))  # upright it is 160 wide, 320 tall
    exif = PILImage.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    stored.save(path, exif=exif.tobytes())
    uri = thumbnail_uri(path, side=160, box=(0, 160, 160, 320))  # the lower half of the upright photo
    thumb = PILImage.open(_io.BytesIO(b64.b64decode(uri.split(",", 1)[1]))).convert("RGB")
    assert thumb.size == (80, 160)
    r, g, b = thumb.getpixel((40, 81))  # top edge of the box, drawn in yellow
    assert r > 200 and g > 200 and b < 100
    r, g, b = thumb.getpixel((40, 40))  # the upper half is untouched grey
    assert abs(r - 90) < 20 and abs(b - 90) < 20
