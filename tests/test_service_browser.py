"""End to end in a real browser: Debian's headless Chromium, driven by Playwright, uses the page
served by `matchlens serve` — upload a query, draw a box, search, open the evidence.

Skipped where Chromium is missing, unless MATCHLENS_REQUIRE_BROWSER=1 (CI installs it and sets
this, so there the test fails instead). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import make_scene

CHROMIUM = Path(os.environ.get("MATCHLENS_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _browser_or_skip():
    """Playwright's sync API, or skip (fail when the browser is required)."""
    required = os.environ.get("MATCHLENS_REQUIRE_BROWSER") == "1"
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed"
    if problem is None and not CHROMIUM.exists():
        problem = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if problem:
        if required:
            pytest.fail(f"MATCHLENS_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """The real app on a loopback port (uvicorn in a thread) over a copy of the scene index."""
    _browser_or_skip()  # before building anything
    built_index = request.getfixturevalue("built_index")
    from matchlens.service import create_app
    from matchlens.service.server import background

    root = tmp_path_factory.mktemp("browser") / "index"
    shutil.copytree(built_index.root, root)
    with background(create_app(root)) as base:
        yield base


@pytest.fixture(scope="module")
def page(server):
    sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            page = context.new_page()
            page.requests, page.problems = [], []
            page.on("request", lambda request: page.requests.append(request.url))
            page.on("console", lambda msg: page.problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: page.problems.append(str(exc)))
            page.set_default_timeout(120_000)  # searches on a loaded 2-core CI machine
            yield page
        finally:
            browser.close()


def _wait_until(condition, timeout: float = 120.0) -> None:
    """Poll ``condition()`` (the page's CSP forbids the eval that page.wait_for_function uses)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _only_this_server(urls: list[str], base: str) -> list[str]:
    """The requests that went anywhere but ``base`` (blob:/data: URLs are local)."""
    origin = urlparse(base).netloc
    return [u for u in urls if urlparse(u).scheme not in ("blob", "data") and urlparse(u).netloc != origin]


def test_search_with_a_box_and_see_the_evidence(page, server, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    # The query: scene 3 on the left, an unindexed scene on the right; the box goes around scene 3.
    query = Image.new("RGB", (640, 300), (128, 128, 128))
    query.paste(make_scene(3), (20, 30))
    query.paste(make_scene(1003), (340, 30))
    query_path = tmp_path / "query.jpg"
    query.save(query_path, quality=92)

    page.requests.clear()
    page.problems.clear()
    page.goto(server + "/")
    expect(page.locator("#index-info")).to_contain_text("10 images")
    page.set_input_files("#file", str(query_path))
    canvas = page.locator("#canvas")
    canvas.wait_for(state="visible")
    bounds = canvas.bounding_box()
    scale = bounds["width"] / 640  # CSS pixels per image pixel

    def at(x: float, y: float) -> tuple[float, float]:
        return bounds["x"] + x * scale, bounds["y"] + y * scale

    page.mouse.move(*at(20, 30))
    page.mouse.down()
    page.mouse.move(*at(180, 150), steps=5)
    page.mouse.move(*at(340, 270), steps=5)
    page.mouse.up()
    box = [int(v) for v in page.input_value("#box").split(",")]
    assert all(abs(a - b) <= 2 for a, b in zip(box, (20, 30, 340, 270))), box

    page.click("#search")
    first = page.locator("#results li").first
    first.wait_for()
    assert first.get_attribute("data-name") == "scene_03.jpg"
    assert "box" in page.text_content("#status")
    assert "rerank" in page.text_content("#timings")
    for thumbnail in page.locator("#results img").all():
        thumbnail.scroll_into_view_if_needed()  # thumbnails load lazily
        _wait_until(lambda thumbnail=thumbnail: thumbnail.evaluate("img => img.complete && img.naturalWidth > 0"))
    page.screenshot(path=str(ARTIFACTS / "serve-results.png"), full_page=True)

    first.click()
    expect(page.locator("#evidence")).to_have_attribute("data-inliers", re.compile(r"\d+"))
    _wait_until(lambda: page.locator("#evidence").evaluate("img => img.complete && img.naturalWidth > 0"))
    assert int(page.get_attribute("#evidence", "data-inliers")) >= 12
    assert "scene_03.jpg" in page.text_content("#evidence-caption")
    page.screenshot(path=str(ARTIFACTS / "serve-evidence.png"), full_page=True)

    assert page.problems == []  # no script error, no refused resource (the page's CSP would report one)
    assert _only_this_server(page.requests, server) == []


def test_the_auto_rerank_checkbox_sends_the_auto_chain(page, server, tmp_path):
    make_scene(5).save(tmp_path / "q5.jpg", quality=92)
    page.goto(server + "/")
    page.set_input_files("#file", str(tmp_path / "q5.jpg"))
    page.locator("#canvas").wait_for(state="visible")
    page.check("#auto-rerank")
    with page.expect_response(lambda r: r.url.endswith("/search")) as answer:
        page.click("#search")
    assert answer.value.json()["rerank"].startswith("auto")
    page.locator("#results li").first.wait_for()
    assert page.locator("#results li").first.get_attribute("data-name") == "scene_05.jpg"
    assert "re-ranked by auto" in page.text_content("#status")


def test_api_docs_render_offline(page, server):
    page.requests.clear()
    page.goto(server + "/docs")
    page.locator(".swagger-ui .info .title").wait_for()
    assert "matchlens" in page.text_content(".swagger-ui .info .title")
    page.locator("text=/search").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "serve-docs.png"))
    assert _only_this_server(page.requests, server) == []


def test_a_file_that_is_not_an_image_gets_a_one_line_error(page, server, tmp_path):
    from playwright.sync_api import expect

    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is a text file with a .jpg name")
    page.goto(server + "/")
    page.set_input_files("#file", str(fake))
    page.click("#search")
    expect(page.locator("#status.error")).to_have_text(
        "'holiday.jpg' is not an image (content not recognised as any image format)")
    assert page.locator("#results li").count() == 0
