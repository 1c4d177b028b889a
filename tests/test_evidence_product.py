"""Evidence in the product: ``search --explain`` (spatial or verifier PNGs + index.html) and
``serve --verifier`` (the evidence view drawn by the trained verifier)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matchlens.explain.page import EvidenceRow, write_evidence_page
from tests.conftest import make_scene, run_cli

BOX = (20, 30, 340, 270)  # where the indexed scene lies in the composite query


@pytest.fixture(scope="module")
def odd_query(tmp_path_factory) -> Path:
    """Scene 3 pasted left of an unindexed scene, saved under a name that needs HTML escaping."""
    canvas = Image.new("RGB", (640, 300), (128, 128, 128))
    canvas.paste(make_scene(3), BOX[:2])
    canvas.paste(make_scene(1003), (340, 30))
    path = tmp_path_factory.mktemp("query") / "q <b>&'x.jpg"
    canvas.save(path, quality=92)
    return path


def _page_pngs(page: str) -> list[str]:
    return re.findall(r"<img src='([^']+\.png)'", page)


def _query_thumbnail(page: str) -> np.ndarray:
    uri = re.search(r"src='data:image/jpeg;base64,([^']+)'", page).group(1)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB"), np.int32)


def test_search_explain_without_a_verifier_writes_spatial_evidence_and_a_page(capsys, built_index, odd_query, tmp_path):
    folder = tmp_path / "ev"
    code, out, err = run_cli(capsys, "search", built_index.root, odd_query, "--box", ",".join(map(str, BOX)),
                             "-k", "3", "--explain", folder)
    assert code == 0, err
    page_path = folder / "index.html"
    assert f"evidence page: {page_path}" in out and "evidence (spatial): 3 PNG" in err
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert len(pngs) == 3 and pngs[0] == "001_scene_03.png"  # the boxed scene ranks first
    page = page_path.read_text(encoding="utf-8")
    assert _page_pngs(page) == pngs  # every PNG shown, in rank order, by relative name
    assert "q &lt;b&gt;&amp;&#x27;x.jpg" in page and "<b>&" not in page
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)  # nothing from the network
    # Spatial evidence: the right scene has many inliers, the others few.
    inliers = [int(n) for n in re.findall(r"(\d+) inliers of \d+ tentative", page)]
    assert len(inliers) == 3 and inliers[0] >= 12 > max(inliers[1:])
    overlay = Image.open(folder / pngs[0])
    assert overlay.format == "PNG" and overlay.width > overlay.height  # query and result side by side
    # The query thumbnail (320 px wide: scale 0.5) has the box drawn in yellow on its left edge.
    thumb = _query_thumbnail(page)
    edge, outside = thumb[70:80, 9:12].reshape(-1, 3), thumb[70:80, 2:5].reshape(-1, 3)
    assert (edge[:, 0] > 180).any() and (edge[:, 2] < 90).any()
    assert (np.abs(outside - 128) < 20).all()  # grey background outside the box


def test_search_explain_with_a_verifier_writes_indicative_evidence(capsys, built_index, odd_query, verifier, tmp_path):
    folder = tmp_path / "ev"
    code, out, err = run_cli(capsys, "search", built_index.root, odd_query, "--box", ",".join(map(str, BOX)),
                             "-k", "2", "--json", "--explain", folder, "--explain-model", verifier)
    assert code == 0, err
    results = json.loads(out)  # the page's path goes to stderr: stdout stays one JSON document
    assert f"evidence page: {folder / 'index.html'}" in err
    page = (folder / "index.html").read_text(encoding="utf-8")
    names = [f"{r['rank']:03d}_{Path(r['path']).stem}.png" for r in results]
    assert _page_pngs(page) == names and all((folder / n).is_file() for n in names)
    scores = [float(s) for s in re.findall(r"verifier score (\d\.\d+)", page)]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert "indicative verifier v.pt" in page and "inliers" not in page
    overlay = np.asarray(Image.open(folder / names[0]).convert("RGB"), np.float32)
    assert overlay.shape[1] > overlay.shape[0] and overlay.std() > 10  # two heatmap panels


def test_evidence_page_escapes_result_names_and_links_pngs_relatively(scenes_dir, tmp_path):
    rows = [EvidenceRow(1, 0.9, "/photos/<img src=x onerror=alert(1)>.jpg", "001_a b.png", "7 inliers of 9 tentative matches"),
            EvidenceRow(2, 0.5, "/photos/plain.jpg", "002_plain.png", "0 inliers of 3 tentative matches")]
    page = write_evidence_page(tmp_path / "out" / "index.html", scenes_dir / "scene_01.jpg", None, "spatial", rows)
    text = page.read_text(encoding="utf-8")
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;.jpg" in text
    assert _page_pngs(text) == ["001_a%20b.png", "002_plain.png"]
    assert text.index("class=rank>#1<") < text.index("class=rank>#2<") and "score 0.9000" in text and "0 inliers of 3" in text


# --- the service -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def index_copy(tmp_path_factory, built_index) -> Path:
    target = tmp_path_factory.mktemp("serve") / "index"
    shutil.copytree(built_index.root, target)
    return target


def _explain(client, entry_id: int):
    data = io.BytesIO()
    canvas = Image.new("RGB", (640, 300), (128, 128, 128))
    canvas.paste(make_scene(3), BOX[:2])
    canvas.save(data, format="PNG")
    return client.post("/explain", files={"image": ("q.png", data.getvalue(), "image/png")},
                       data={"id": str(entry_id), "box": ",".join(map(str, BOX))}), canvas


def test_serve_with_a_verifier_draws_its_evidence(index_copy, verifier):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from matchlens.evidence.model import explain_pair
    from matchlens.io.images import load_image
    from matchlens.service import create_app

    client = TestClient(create_app(index_copy, verifier=verifier, allowed_hosts=["testserver"]))
    info = client.get("/index").json()["evidence"]
    assert info["kind"] == "indicative" and info["verifier"] == str(verifier) and "grid 4x4" in info["method"]
    entry = next(e for e in client.app.state.live.snapshot().index.entries if Path(e.path).name == "scene_03.jpg")
    response, query = _explain(client, entry.id)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-matchlens-evidence"] == "indicative" and "x-matchlens-inliers" not in response.headers
    overlay = Image.open(io.BytesIO(response.content))
    assert overlay.format == "PNG" and overlay.width > overlay.height
    # The score is the verifier's on the boxed part of the query.
    expected = explain_pair(query.crop(BOX), load_image(entry.path, max_side=1024), verifier).score
    assert float(response.headers["x-matchlens-score"]) == pytest.approx(expected, abs=1e-3)


def test_serve_without_a_verifier_says_spatial(index_copy):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from matchlens.service import create_app

    client = TestClient(create_app(index_copy, allowed_hosts=["testserver"]))
    assert client.get("/index").json()["evidence"] == {
        "kind": "spatial", "verifier": None,
        "method": "spatial verification: RootSIFT + ratio test + MAGSAC++ homography inliers"}
    entry = next(e for e in client.app.state.live.snapshot().index.entries if Path(e.path).name == "scene_03.jpg")
    response, _ = _explain(client, entry.id)
    assert response.headers["x-matchlens-evidence"] == "spatial"
    assert float(response.headers["x-matchlens-score"]) == int(response.headers["x-matchlens-inliers"]) >= 12


def test_serve_with_a_bad_verifier_is_a_one_line_error(capsys, built_index, tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("not a checkpoint")
    code, _, err = run_cli(capsys, "serve", built_index.root, "--port", "0", "--verifier", bogus)
    assert code == 2 and err.count("\n") == 1 and "not a readable verifier checkpoint" in err
    code, _, err = run_cli(capsys, "serve", built_index.root, "--port", "0", "--verifier", tmp_path / "none.pt")
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err


def test_web_page_shows_the_verifier_score(index_copy, verifier, tmp_path):
    """In Chromium: with --verifier the evidence caption gives the verifier's score (no inliers)."""
    from tests.test_service_browser import CHROMIUM, _browser_or_skip, _wait_until

    sync_playwright = _browser_or_skip()
    from matchlens.service import create_app
    from matchlens.service.server import background

    query = tmp_path / "query.jpg"
    make_scene(3).save(query, quality=92)
    with background(create_app(index_copy, verifier=verifier)) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)
            page.goto(base + "/")
            page.set_input_files("#file", str(query))
            page.click("#search")
            page.locator("#results li").first.click()
            _wait_until(lambda: page.get_attribute("#evidence", "data-evidence") == "indicative")
            caption = page.text_content("#evidence-caption")
            assert re.search(r"scene_03\.jpg: verifier score [01]\.\d{3}$", caption), caption
            assert page.get_attribute("#evidence", "data-inliers") is None
        finally:
            browser.close()
