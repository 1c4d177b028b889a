"""`matchlens serve`: the HTTP API on a small index (FastAPI TestClient, a live loopback server for
concurrency, a real `matchlens serve` process for shutdown), robustness and security included."""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_scene, run_cli

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from matchlens.service import create_app  # noqa: E402

TOKEN = "test-token-4f1c"
MAX_UPLOAD = 300_000
MAX_PIXELS = 4_000_000
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEST_HOSTS = ["testserver"]  # the Host TestClient sends: allowed explicitly (the default is the bound host only)


# --- fixtures ---------------------------------------------------------------------------------
def composite_query(seed: int, encode=None) -> tuple[bytes, tuple[int, int, int, int]]:
    """Scene ``seed`` on the left of a wider photo whose right half is an unindexed scene; the box
    around the indexed scene."""
    canvas = Image.new("RGB", (640, 300), (128, 128, 128))
    canvas.paste(make_scene(seed), (20, 30))
    canvas.paste(make_scene(1000 + seed), (340, 30))
    return (encode or _jpeg)(canvas), (20, 30, 340, 270)


def _jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file that declares ``width`` x ``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def index_copy(tmp_path_factory, built_index) -> Path:
    """A private copy of the session's scene index (the write tests modify theirs)."""
    target = tmp_path_factory.mktemp("serve") / "index"
    shutil.copytree(built_index.root, target)
    return target


@pytest.fixture(scope="module")
def client(index_copy) -> TestClient:
    """Read-only use: a server with writes enabled on a copy of the scene index."""
    return TestClient(create_app(index_copy, token=TOKEN, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS,
                                 allowed_hosts=TEST_HOSTS))


@pytest.fixture()
def writable(tmp_path, built_index) -> tuple[TestClient, Path]:
    """A fresh copy of the scene index with its own server, for tests that add and remove."""
    target = tmp_path / "index"
    shutil.copytree(built_index.root, target)
    return TestClient(create_app(target, token=TOKEN, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS,
                                 allowed_hosts=TEST_HOSTS)), target


def scene_ids(client: TestClient) -> dict[str, int]:
    """File name → id, from a search that returns every image."""
    body = client.post("/search", files={"image": ("q.jpg", _jpeg(make_scene(0)), "image/jpeg")},
                       data={"k": "1000"}).json()
    return {r["name"]: r["id"] for r in body["results"]}


def search(client: TestClient, data: bytes, name: str = "q.jpg", content_type: str = "image/jpeg", **form):
    return client.post("/search", files={"image": (name, data, content_type)}, data={k: str(v) for k, v in form.items()})


# --- reading -----------------------------------------------------------------------------------
def test_health_and_index_info(client, built_index):
    assert client.get("/health").json() == {"status": "ok", "images": 10, "generation": built_index.generation}
    info = client.get("/index").json()
    assert info["images"] == 10 and info["skipped"] == 0 and info["dim"] == built_index.dim
    assert info["spec"]["max_side"] == 128 and info["pipeline"] == built_index.spec.describe()
    assert "sv" in info["rerankers"] and info["writable"] is True
    assert info["limits"] == {"max_upload_bytes": MAX_UPLOAD, "max_pixels": MAX_PIXELS, "max_k": 1000}


def test_search_with_box_finds_the_boxed_scene_and_reports_timings(client):
    data, box = composite_query(3)
    response = search(client, data, box=",".join(map(str, box)), k=5)
    assert response.status_code == 200, response.text
    body = response.json()
    first = body["results"][0]
    assert first["name"] == "scene_03.jpg" and first["rank"] == 1
    assert first["image_url"] == f"/images/{first['id']}" and first["thumbnail_url"] == f"/thumbnails/{first['id']}"
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
    # The small test pipeline decodes JPEGs at >= 256 px: this one at half size (the box is scaled).
    assert body["box"] == list(map(float, box)) and body["query_size"] == [320, 150] and body["k"] == 5
    timings = body["timings_ms"]
    assert set(timings) == {"decode", "extract", "search", "rerank", "total"}
    assert all(v >= 0 for v in timings.values()) and timings["extract"] > 0
    assert timings["total"] >= timings["decode"] + timings["extract"] + timings["search"]


def test_search_ranks_exactly_as_the_python_api(client, index_copy):
    from matchlens.api import open_index

    data, box = composite_query(6, encode=_png)  # PNG: decoded at full size by both (no JPEG draft)
    body = search(client, data, name="q.png", box=",".join(map(str, box)), k=6).json()
    expected = open_index(index_copy).search(data, box=box, k=6)
    assert [r["id"] for r in body["results"]] == [r.id for r in expected]
    np.testing.assert_allclose([r["score"] for r in body["results"]], [r.score for r in expected], atol=1e-5)


def test_box_is_given_in_full_size_pixels_even_when_the_jpeg_decodes_smaller(client):
    """A big JPEG decodes at 1/2..1/8 scale: the box (drawn on the full image) must still cut the
    same region. Scene 4 fills the left quarter of a 2400 px wide photo."""
    canvas = Image.new("RGB", (2400, 1200), (128, 128, 128))
    canvas.paste(make_scene(4).resize((560, 420), Image.BICUBIC), (20, 20))
    canvas.paste(make_scene(2000, (1600, 1100)), (700, 40))
    response = search(client, _jpeg(canvas, quality=80), box="20,20,580,440", k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query_size"][0] < 2400  # decoded smaller...
    assert body["results"][0]["name"] == "scene_04.jpg"  # ...and still the boxed scene


def test_search_with_spatial_verification(client):
    data, box = composite_query(5)
    body = search(client, data, box=",".join(map(str, box)), k=3, rerank="sv:k=5").json()
    assert body["results"][0]["name"] == "scene_05.jpg" and body["results"][0]["score"] > 1.0  # verified
    assert body["rerank"].startswith("sv:k=5") and body["timings_ms"]["rerank"] > 0


@pytest.mark.parametrize("form, status, pattern", [
    ({"rerank": "nosuch:k=3"}, 400, "unknown reranker 'nosuch'"),
    ({"box": "1,2,3"}, 400, "invalid box"),
    ({"box": "5000,5000,6000,6000"}, 400, "outside"),
    ({"k": "0"}, 422, ""),
])
def test_bad_search_parameters_get_one_line_errors(client, form, status, pattern):
    response = search(client, _jpeg(make_scene(1)), **form)
    assert response.status_code == status
    if pattern:
        detail = response.json()["detail"]
        assert pattern in detail and "\n" not in detail


def test_content_is_sniffed_not_trusted(client):
    html = search(client, b"<html><script>alert(1)</script></html>", name="photo.jpg")
    assert html.status_code == 415
    assert html.json()["detail"] == "'photo.jpg' is not an image (content not recognised as any image format)"
    assert search(client, b"", name="empty.jpg").status_code == 415
    for cut in (600, 6000):  # header cut (refused by the probe), pixel data cut (refused by the decoder)
        truncated = search(client, _jpeg(make_scene(2))[:cut], name="cut.jpg")
        assert truncated.status_code == 400 and "truncated or corrupt" in truncated.json()["detail"]
    # A real PNG under a wrong name and content type is still a PNG.
    png = search(client, _png(make_scene(2)), name="notes.txt", content_type="text/plain", k=1)
    assert png.status_code == 200 and png.json()["results"][0]["name"] == "scene_02.jpg"


def test_upload_size_limit(client):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), np.uint8))
    big = _png(noise)  # incompressible: ~480 kB
    assert len(big) > MAX_UPLOAD + 64 * 1024
    response = search(client, big, name="big.png")
    assert response.status_code == 413 and "request body is over the server's limit" in response.json()["detail"]
    # Between the per-image limit and the body limit (which allows for the form): refused per image.
    medium = big[: MAX_UPLOAD + 1000]
    response = search(client, medium, name="medium.png")
    assert response.status_code == 413 and "over the server's limit" in response.json()["detail"]


def test_upload_size_limit_holds_without_a_declared_length(client):
    """A chunked body (no Content-Length) is counted as it arrives and cut off at the limit."""
    def body():
        yield (b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(20):
            yield b"\x00" * 50_000

    response = client.post("/search", content=body(), headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert response.status_code == 413 and "request body is over the server's limit" in response.json()["detail"]


@pytest.mark.parametrize("width, height", [(3000, 2000), (40000, 40000)])
def test_decompression_bombs_are_refused_before_decoding(client, width, height):
    bomb = png_header_only(width, height)
    assert len(bomb) < 1000
    response = search(client, bomb, name="bomb.png")
    assert response.status_code == 413
    assert "decompression bomb" in response.json()["detail"]


@pytest.mark.parametrize("url, status", [
    ("/images/-1", 404), ("/images/99999", 404), ("/thumbnails/99999", 404), ("/images/abc", 422),
    ("/images/1.5", 422), ("/thumbnails/%2e%2e", 422),
    # Encoded or plain separators never reach a handler with a path: no route matches.
    ("/images/..%2F..%2F..%2Fetc%2Fpasswd", 404), ("/images/../../../etc/passwd", 404),
    ("/static/../../../../etc/passwd", 404), ("/static/%2e%2e/app.py", 404), ("/static/..%2Fapp.py", 404),
])
def test_no_path_traversal_through_ids(client, url, status):
    response = client.get(url)
    assert response.status_code == status
    assert b"root:" not in response.content and b"import" not in response.content


def test_images_and_thumbnails_serve_indexed_files(client, scenes_dir):
    ids = scene_ids(client)
    original = client.get(f"/images/{ids['scene_07.jpg']}")
    assert original.status_code == 200 and original.headers["content-type"] == "image/jpeg"
    assert original.content == (scenes_dir / "scene_07.jpg").read_bytes()
    assert original.headers["x-content-type-options"] == "nosniff"
    thumb = client.get(f"/thumbnails/{ids['scene_07.jpg']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (256, 192)


def test_explain_returns_an_evidence_overlay(client):
    ids = scene_ids(client)
    data, box = composite_query(8)
    form = {"id": str(ids["scene_08.jpg"]), "box": ",".join(map(str, box))}
    right = client.post("/explain", files={"image": ("q.jpg", data, "image/jpeg")}, data=form)
    assert right.status_code == 200 and right.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(right.content))
    assert overlay.width > overlay.height  # two panels side by side
    wrong = client.post("/explain", files={"image": ("q.jpg", data, "image/jpeg")},
                        data={**form, "id": str(ids["scene_01.jpg"])})
    assert int(right.headers["x-matchlens-inliers"]) >= 12 > int(wrong.headers["x-matchlens-inliers"])
    missing = client.post("/explain", files={"image": ("q.jpg", data, "image/jpeg")}, data={**form, "id": "4242"})
    assert missing.status_code == 404 and missing.json()["detail"] == "no indexed image has id 4242"


def test_explain_pair_maps_lie_where_the_matches_are():
    from matchlens.evidence.local import THRESHOLD, explain_pair

    scene = make_scene(9)
    query = Image.new("RGB", (640, 300), (128, 128, 128))
    query.paste(scene, (300, 30))
    result = explain_pair(query, scene)
    evidence = result.evidence
    assert evidence.score >= 12 and evidence.query_map.shape == (300, 640) and evidence.target_map.shape == (240, 320)
    # Query-side evidence lies on the pasted scene, not on the grey left part.
    assert evidence.query_map[:, 300:].mean() > 5 * evidence.query_map[:, :250].mean()
    # Inliers sit where the paste put them, up to the inlier threshold of the robust fit.
    np.testing.assert_allclose(evidence.query_points - (300, 30), evidence.target_points, atol=THRESHOLD)
    assert Image.open(io.BytesIO(result.png)).format == "PNG"


def test_docs_and_page_work_offline(client):
    for path in ("/", "/docs", "/redoc"):
        html = client.get(path)
        assert html.status_code == 200, path
        references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html.text)
        references += re.findall(r"""url:\s*'([^']+)'""", html.text)
        assert references, path
        for ref in references:
            assert not re.match(r"(?i)(https?:)?//", ref), f"{path} loads {ref} from outside"
            if ref.startswith("/"):
                assert client.get(ref).status_code == 200, ref
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]
    schema = client.get("/openapi.json").json()
    assert {"/search", "/explain", "/images", "/images/{image_id}", "/thumbnails/{image_id}", "/index",
            "/health"} <= set(schema["paths"])


# --- writing -----------------------------------------------------------------------------------
def test_write_endpoints_need_the_token(client, index_copy):
    upload = {"files": ("new.jpg", _jpeg(make_scene(50)), "image/jpeg")}
    missing = client.post("/images", files=upload)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = client.post("/images", files=upload, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["detail"] == "wrong API token"
    assert client.delete("/images/1").status_code == 401
    assert client.delete("/images/1", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert client.get("/health").json()["images"] == 10 and not (index_copy / "uploads").exists()


def test_write_endpoints_are_disabled_without_a_configured_token(index_copy):
    readonly = TestClient(create_app(index_copy, allowed_hosts=TEST_HOSTS))
    response = readonly.post("/images", files={"files": ("x.jpg", _jpeg(make_scene(51)), "image/jpeg")},
                             headers={"Authorization": "Bearer anything"})
    assert response.status_code == 403 and "disabled" in response.json()["detail"]
    assert readonly.delete("/images/0", headers=AUTH).status_code == 403
    assert readonly.get("/index").json()["writable"] is False


def test_add_search_remove(writable, tmp_path):
    client, root = writable
    new = make_scene(60)
    tiff = io.BytesIO()
    make_scene(61).save(tiff, format="TIFF")
    files = [("files", ("../../../escape.jpg", _jpeg(new), "image/jpeg")),
             ("files", ("C:\\evil\\..\\photo.TIFF", tiff.getvalue(), "application/octet-stream"))]
    response = client.post("/images", files=files, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["index_size"] == 12 and body["skipped"] == [] and len(body["added"]) == 2
    uploads = (root / "uploads").resolve()
    for added in body["added"]:
        path = Path(added["path"])
        assert path.parent == uploads and path.is_file()
        assert re.fullmatch(r"[0-9a-f]{16}-[A-Za-z0-9._-]+", path.name)
    assert body["added"][0]["name"].endswith("-escape.jpg") and body["added"][1]["name"].endswith("-photo.tif")
    assert not list(tmp_path.glob("escape*")) and not list(root.glob("escape*"))

    new_id = body["added"][0]["id"]
    found = search(client, _jpeg(new), k=1).json()
    assert found["results"][0]["id"] == new_id and found["index_size"] == 12
    # A format browsers cannot show is re-encoded.
    tif = client.get(f"/images/{body['added'][1]['id']}")
    assert tif.status_code == 200 and tif.headers["content-type"] == "image/jpeg"

    removed = client.delete(f"/images/{new_id}", headers=AUTH)
    assert removed.status_code == 200 and removed.json()["removed"] == new_id and removed.json()["index_size"] == 11
    assert not Path(body["added"][0]["path"]).exists()  # the server's own copy is deleted
    assert client.delete(f"/images/{new_id}", headers=AUTH).status_code == 404
    assert client.get(f"/images/{new_id}").status_code == 404
    assert all(r["id"] != new_id for r in search(client, _jpeg(new), k=20).json()["results"])


def test_removing_an_indexed_user_file_keeps_the_file(writable, scenes_dir):
    client, _ = writable
    ids = scene_ids(client)
    assert client.delete(f"/images/{ids['scene_02.jpg']}", headers=AUTH).status_code == 200
    assert (scenes_dir / "scene_02.jpg").is_file()
    assert client.get("/health").json()["images"] == 9


def test_add_refuses_non_images_before_writing_anything(writable):
    client, root = writable
    files = [("files", ("ok.jpg", _jpeg(make_scene(70)), "image/jpeg")),
             ("files", ("bad.jpg", b"MZ\x90\x00 not an image", "image/jpeg"))]
    response = client.post("/images", files=files, headers=AUTH)
    assert response.status_code == 415 and "'bad.jpg' is not an image" in response.json()["detail"]
    assert not (root / "uploads").exists() and client.get("/health").json()["images"] == 10


def test_concurrent_searches_stay_correct_while_images_are_added(writable):
    """Searchers in threads on a live loopback server while a writer adds images: every search
    answers from one consistent generation and ranks its scene first."""
    import httpx

    from matchlens.service.server import background

    client, _ = writable
    ids = scene_ids(client)
    queries = {i: _jpeg(make_scene(i)) for i in range(4)}
    failures: list[str] = []
    generations: set[str] = set()
    writes_done = threading.Event()

    def searcher(seed: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            for count in itertools.count(1):
                last = writes_done.is_set()  # the search after this one sees the final generation
                response = http.post("/search", files={"image": ("q.jpg", queries[seed], "image/jpeg")}, data={"k": "3"})
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                else:
                    body = response.json()
                    generations.add(body["generation"])
                    if body["results"][0]["id"] != ids[f"scene_{seed:02d}.jpg"]:
                        failures.append(f"scene {seed} ranked {body['results'][0]['name']} first")
                if last and count >= 3:
                    return

    with background(client.app) as base:
        threads = [threading.Thread(target=searcher, args=(seed,)) for seed in queries]
        for thread in threads:
            thread.start()
        with httpx.Client(base_url=base, timeout=120) as http:
            for seed in (80, 81, 82):
                added = http.post("/images", files={"files": (f"n{seed}.jpg", _jpeg(make_scene(seed)), "image/jpeg")},
                                  headers=AUTH)
                assert added.status_code == 200, added.text
        writes_done.set()
        for thread in threads:
            thread.join(300)
        final = httpx.get(f"{base}/health").json()
    assert failures == []
    assert final["images"] == 13 and final["generation"] in generations and len(generations) >= 2


# --- the process -------------------------------------------------------------------------------
def test_serve_shuts_down_cleanly_on_sigterm(index_copy):
    """The real command in its own process: SIGTERM → graceful stop, exit code 0, port freed."""
    import httpx

    process = subprocess.Popen([sys.executable, "-m", "matchlens.cli", "serve", str(index_copy), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:(\d+)/)", line)
        assert match, line + process.stderr.read()
        url, port = match.group(1), int(match.group(2))
        assert httpx.get(url + "health", timeout=120).json()["status"] == "ok"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with socket.socket() as probe:  # the port is free again
        probe.bind(("127.0.0.1", port))


def test_serve_returns_normally_on_ctrl_c(index_copy):
    """Ctrl+C (SIGINT) stops serve() gracefully: it returns instead of raising KeyboardInterrupt,
    frees the port and puts the previous signal handlers back."""
    import httpx

    from matchlens.service.server import serve

    before = signal.getsignal(signal.SIGINT)
    seen: list[str] = []

    def interrupt_when_up(url: str) -> None:
        for _ in range(600):  # only once the server answers are uvicorn's signal handlers in place
            try:
                seen.append(httpx.get(url + "health", timeout=5).json()["status"])
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    def ready(url: str) -> None:
        seen.append(url)
        threading.Thread(target=interrupt_when_up, args=(url,), daemon=True).start()

    serve(index_copy, port=0, on_ready=ready)
    assert seen[1] == "ok" and signal.getsignal(signal.SIGINT) is before
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", int(seen[0].rsplit(":", 1)[1].strip("/"))))


def test_serve_errors_are_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "serve", tmp_path / "nothing-here", "--port", "0")
    assert code == 2 and err.count("\n") == 1 and "no index at" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        code, _, err = run_cli(capsys, "serve", tmp_path, "--port", taken.getsockname()[1])
    assert code == 2 and err.count("\n") == 1 and "cannot listen on 127.0.0.1" in err
