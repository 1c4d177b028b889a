"""Hardening of `matchlens serve` against hostile clients: the Host allow-list (DNS rebinding),
slow clients (slowloris: request heads and bodies that never finish, bodies nobody reads) and
uploads that fail leaving nothing in ``INDEX/uploads/``.

Real uvicorn servers on 127.0.0.1 with raw sockets and http.client, with 1 s timeouts so the tests
stay fast; FastAPI's TestClient where only the app matters."""

from __future__ import annotations

import http.client
import itertools
import json
import math
import os
import select
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import make_scene, run_cli

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from matchlens.errors import ConfigError, IndexError_  # noqa: E402
from matchlens.service import create_app  # noqa: E402
from matchlens.service.server import background  # noqa: E402
from tests.test_service import AUTH, MAX_PIXELS, MAX_UPLOAD, TOKEN, _jpeg, png_header_only  # noqa: E402

TIMEOUT = 1.0  # the servers' request timeout here (and keep-alive: 1 s)
CLOSED_WITHIN = 6.0  # generous on a loaded 2-core machine; without the fix the connection stays open


# --- fixtures and helpers ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def index_copy(tmp_path_factory, built_index) -> Path:
    target = tmp_path_factory.mktemp("hardening") / "index"
    shutil.copytree(built_index.root, target)
    return target


@pytest.fixture(scope="module")
def server(index_copy):
    """A live server on 127.0.0.1 (writes enabled) with 1 s request and keep-alive timeouts."""
    app = create_app(index_copy, token=TOKEN, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS,
                     request_timeout=TIMEOUT)
    with background(app, keep_alive_timeout=1) as base:
        parts = urlsplit(base)
        yield parts.hostname, parts.port, index_copy


@pytest.fixture()
def writable(tmp_path, built_index) -> tuple[TestClient, Path]:
    """A fresh copy of the scene index behind a TestClient (its Host, ``testserver``, allowed explicitly)."""
    target = tmp_path / "index"
    shutil.copytree(built_index.root, target)
    app = create_app(target, token=TOKEN, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS,
                     allowed_hosts=["testserver"])
    return TestClient(app), target


def request(address: str, port: int, host_header: str | None, method: str = "GET", path: str = "/health",
            body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict, str]:
    """One request with exactly this Host header (None: none at all); (status, headers, body text)."""
    conn = http.client.HTTPConnection(address, port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host_header is not None:
            conn.putheader("Host", host_header)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        conn.close()


def multipart(field: str, name: str, data: bytes, boundary: str = "b0undary") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def until_closed(sock: socket.socket, dribble: bytes = b"", interval: float = 0.2,
                 limit: float = CLOSED_WITHIN + 4) -> tuple[float, bytes]:
    """Send ``dribble`` one byte per ``interval`` (nothing if empty) until the server closes the
    connection; (seconds it took, everything the server sent). ``inf`` seconds: still open at ``limit``."""
    start, answer = time.monotonic(), b""
    payload = itertools.cycle(dribble) if dribble else None
    while time.monotonic() - start < limit:
        if payload is not None:
            try:
                sock.send(bytes([next(payload)]))
            except OSError:  # reset: closed
                return time.monotonic() - start, answer
        readable, _, _ = select.select([sock], [], [], interval)
        if readable:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return time.monotonic() - start, answer
            if not chunk:
                return time.monotonic() - start, answer
            answer += chunk
    return math.inf, answer


def json_detail(answer: bytes) -> str:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer[:300]
    detail = json.loads(body)["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    return detail


def leftovers(root: Path) -> list[str]:
    """Everything in the index's uploads folder (temporary files included)."""
    folder = root / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- Host allow-list (DNS rebinding) ------------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example",
                                  "localhost.evil.example:{port}", "LOCALHOST.:{port}", "127.0.0.2:{port}",
                                  "localhost:1", "127.0.0.1:{port}0", "[::1]:1", "127.0.0.1:{port}:{port}",
                                  "127.0.0.1@evil.example"])
def test_foreign_host_headers_get_a_json_400(server, host):
    address, port, _ = server
    status, headers, body = request(address, port, host.format(port=port))
    assert status == 400, body
    assert headers["content-type"] == "application/json" and headers["x-content-type-options"] == "nosniff"
    detail = json.loads(body)["detail"]
    assert "\n" not in detail and "not allowed" in detail and "--allow-host" in detail


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "localhost", "LocalHost:{port}", "[::1]",
                                  "[::1]:{port}"])
def test_the_bound_host_and_loopback_names_are_allowed(server, host):
    address, port, _ = server
    status, _, body = request(address, port, host.format(port=port))
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_a_request_without_host_is_refused(server):
    address, port, _ = server
    with socket.create_connection((address, port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")  # HTTP/1.0 may omit Host
        _, answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400") and "Host" in json_detail(answer)


def test_a_foreign_host_never_reaches_the_handlers(server):
    """A page that rebinds its name to 127.0.0.1 cannot add images, even with a token it guessed."""
    address, port, root = server
    body, content_type = multipart("files", "rebound.jpg", _jpeg(make_scene(90)))
    status, _, text = request(address, port, f"attacker.example:{port}", "POST", "/images", body,
                              {"Content-Type": content_type, **AUTH})
    assert status == 400 and "not allowed" in json.loads(text)["detail"]
    assert leftovers(root) == []
    assert json.loads(request(address, port, "127.0.0.1")[2])["images"] == 10


def test_test_clients_need_their_host_allowed_explicitly(writable, index_copy):
    client, _ = writable
    assert client.get("/health").status_code == 200  # allowed_hosts=["testserver"]
    default = TestClient(create_app(index_copy))
    refused = default.get("/health")
    assert refused.status_code == 400 and "'testserver' is not allowed" in refused.json()["detail"]
    assert TestClient(create_app(index_copy), base_url="http://127.0.0.1").get("/health").status_code == 200


def test_allowed_hosts_extend_the_default_and_star_disables_the_check(index_copy):
    app = create_app(index_copy, allowed_hosts=["photos.lan", "10.1.2.3:8443", "*.example.org"])
    for url, status in [("http://photos.lan", 200), ("http://photos.lan:8000", 200), ("http://10.1.2.3:8443", 200),
                        ("http://10.1.2.3", 400), ("http://a.example.org", 200), ("http://example.org", 400),
                        ("http://localhost", 200), ("http://evil.example", 400)]:
        assert TestClient(app, base_url=url).get("/health").status_code == status, url
    anything = TestClient(create_app(index_copy, allowed_hosts=["*"]), base_url="http://whatever.example")
    assert anything.get("/health").status_code == 200


def test_allow_list_defaults_follow_the_bound_host():
    from matchlens.service.hosts import default_allowed_hosts

    assert set(default_allowed_hosts("127.0.0.1")) == {"127.0.0.1", "localhost", "[::1]"}
    assert set(default_allowed_hosts("::1")) == {"[::1]", "localhost", "127.0.0.1"}
    assert default_allowed_hosts("192.168.1.20") == ["192.168.1.20"]
    assert default_allowed_hosts("photos.lan") == ["photos.lan"]
    with pytest.raises(ConfigError, match="not a host name"):
        create_app(Path("unused"), allowed_hosts=["http://evil/"])


def test_serve_options_reach_the_server(capsys, monkeypatch, index_copy):
    import matchlens.service.server as server_module

    seen: dict = {}
    monkeypatch.setattr(server_module, "serve", lambda index_dir, **options: seen.update(options))
    code, _, err = run_cli(capsys, "serve", index_copy, "--port", "0", "--allow-host", "photos.lan",
                           "--allow-host", "10.1.2.3:8443", "--request-timeout", "7.5", "--keep-alive-timeout", "3")
    assert code == 0, err
    assert seen["allowed_hosts"] == ["photos.lan", "10.1.2.3:8443"]
    assert seen["request_timeout"] == 7.5 and seen["keep_alive_timeout"] == 3
    code, _, err = run_cli(capsys, "serve", index_copy, "--port", "0", "--host", "0.0.0.0")
    assert code == 0 and "--allow-host" in err and seen["allowed_hosts"] == []


# --- slow clients ---------------------------------------------------------------------------------
def test_slow_request_heads_are_dropped_without_blocking_others(server):
    """Slowloris: connections that send nothing, half a head, or a head one byte at a time are
    closed after the request timeout; other clients are served meanwhile."""
    address, port, _ = server
    idle = socket.create_connection((address, port), timeout=30)
    partial = socket.create_connection((address, port), timeout=30)
    dribbling = socket.create_connection((address, port), timeout=30)
    results: dict[str, tuple[float, bytes]] = {}
    try:
        partial.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        dribbling.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        threads = [threading.Thread(target=lambda k=k, s=s, d=d: results.__setitem__(k, until_closed(s, d)))
                   for k, s, d in [("idle", idle, b""), ("partial", partial, b""),
                                   ("dribbling", dribbling, b"X-Slow: " + b"a" * 200)]]
        for thread in threads:
            thread.start()
        assert request(address, port, "127.0.0.1")[0] == 200
        assert threads[2].is_alive()  # served while the slow clients still hold their connections
        for thread in threads:
            thread.join(30)
    finally:
        for sock in (idle, partial, dribbling):
            sock.close()
    for name, (seconds, _) in results.items():
        assert seconds < CLOSED_WITHIN, f"{name} connection still open after {seconds} s"
    assert results["idle"][1] == b""  # nothing asked, nothing answered
    for name in ("partial", "dribbling"):
        answer = results[name][1]
        assert answer.startswith(b"HTTP/1.1 408") and "too slowly" in json_detail(answer), answer[:200]


def test_slow_upload_bodies_get_408_and_leave_nothing(server):
    """A body sent one byte at a time gets 408 (JSON) and the connection is closed; nothing is stored."""
    address, port, root = server
    body, content_type = multipart("files", "slow.jpg", _jpeg(make_scene(91)))
    with socket.create_connection((address, port), timeout=30) as sock:
        sock.sendall((f"POST /images HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body[:100])
        seconds, answer = until_closed(sock, body[100:200])
    assert seconds < CLOSED_WITHIN, "a slow body kept its connection open"
    assert answer.startswith(b"HTTP/1.1 408") and "too slowly" in json_detail(answer)
    assert b"connection: close" in answer.lower()
    assert leftovers(root) == []


def test_a_body_nobody_reads_cannot_hold_the_connection(server):
    """A request answered before its body arrived (405 here) cannot keep its connection open by
    sending the rest of the body one byte at a time."""
    address, port, _ = server
    with socket.create_connection((address, port), timeout=30) as sock:
        sock.sendall(b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n")
        seconds, answer = until_closed(sock, b"x" * 1000)
    assert answer.startswith(b"HTTP/1.1 405")
    assert seconds < CLOSED_WITHIN, "the unread body kept its connection open"


def test_idle_keep_alive_connections_are_closed(server):
    address, port, _ = server
    with socket.create_connection((address, port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        seconds, answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200") and seconds < CLOSED_WITHIN


def test_a_search_within_the_timeout_is_served(server):
    address, port, _ = server
    body, content_type = multipart("image", "q.jpg", _jpeg(make_scene(3)))
    status, _, text = request(address, port, f"localhost:{port}", "POST", "/search", body,
                              {"Content-Type": content_type})
    assert status == 200 and json.loads(text)["results"][0]["name"] == "scene_03.jpg"


# --- failed uploads leave nothing behind ----------------------------------------------------------
def _truncated_jpeg(seed: int) -> bytes:
    """A JPEG cut in half: its header passes the upload checks, its pixels cannot be decoded."""
    data = _jpeg(make_scene(seed))
    return data[: len(data) // 2]


def test_refused_uploads_leave_nothing(writable):
    client, root = writable
    refused = [
        ([("files", ("big.jpg", b"\xff\xd8" + os.urandom(MAX_UPLOAD + 100_000), "image/jpeg"))], 413),
        ([("files", ("page.jpg", b"<html>not an image</html>", "image/jpeg"))], 415),
        ([("files", ("bomb.png", png_header_only(30000, 30000), "image/png"))], 413),
        ([("files", ("ok.jpg", _jpeg(make_scene(92)), "image/jpeg")),
          ("files", ("bad.jpg", b"MZ\x90\x00", "image/jpeg"))], 415),
        ([("other", ("ok.jpg", _jpeg(make_scene(92)), "image/jpeg"))], 422),
    ]
    for files, status in refused:
        response = client.post("/images", files=files, headers=AUTH)
        assert response.status_code == status, response.text
        assert leftovers(root) == []
    assert client.get("/health").json()["images"] == 10


def test_an_upload_that_cannot_be_indexed_leaves_nothing(writable):
    client, root = writable
    response = client.post("/images", files={"files": ("cut.jpg", _truncated_jpeg(93), "image/jpeg")}, headers=AUTH)
    assert response.status_code == 400 and "truncated" in response.json()["detail"]
    assert leftovers(root) == []
    assert client.get("/index").json()["skipped"] == 0


def test_skipped_files_of_an_accepted_upload_are_not_kept(writable):
    client, root = writable
    files = [("files", ("good.jpg", _jpeg(make_scene(94)), "image/jpeg")),
             ("files", ("cut.jpg", _truncated_jpeg(95), "image/jpeg"))]
    response = client.post("/images", files=files, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [a["name"] for a in body["added"]] == [Path(body["added"][0]["path"]).name]
    assert len(body["skipped"]) == 1 and body["skipped"][0].split(":")[0].endswith("-cut.jpg")
    assert leftovers(root) == [body["added"][0]["name"]] and body["index_size"] == 11
    info = client.get("/index").json()
    assert info["images"] == 11 and info["skipped"] == 0
    new_id = body["added"][0]["id"]
    found = client.post("/search", files={"image": ("q.jpg", _jpeg(make_scene(94)), "image/jpeg")}, data={"k": "1"})
    assert found.json()["results"][0]["id"] == new_id


def test_a_failure_after_the_files_were_written_removes_them(writable, monkeypatch):
    client, root = writable

    def busy(*args, **kwargs):
        raise IndexError_("another process is writing this index; try again")

    monkeypatch.setattr(client.app.state.live.snapshot().index, "add", busy)
    files = [("files", ("a.jpg", _jpeg(make_scene(96)), "image/jpeg")),
             ("files", ("b.png", _jpeg(make_scene(97)), "image/png"))]
    response = client.post("/images", files=files, headers=AUTH)
    assert response.status_code == 409 and "another process" in response.json()["detail"]
    assert leftovers(root) == [] and not (root / "uploads").exists()


def test_a_failure_keeps_an_earlier_upload_of_the_same_image(writable, monkeypatch):
    """Files are named by content: a failed re-upload must not delete the copy an earlier upload indexed."""
    client, root = writable
    data = _jpeg(make_scene(98))
    first = client.post("/images", files={"files": ("same.jpg", data, "image/jpeg")}, headers=AUTH)
    assert first.status_code == 200
    kept = leftovers(root)
    assert len(kept) == 1

    def busy(*args, **kwargs):
        raise IndexError_("busy")

    monkeypatch.setattr(client.app.state.live.snapshot().index, "add", busy)
    files = [("files", ("same.jpg", data, "image/jpeg")), ("files", ("new.jpg", _jpeg(make_scene(99)), "image/jpeg"))]
    assert client.post("/images", files=files, headers=AUTH).status_code == 409
    assert leftovers(root) == kept
    assert client.get(f"/images/{first.json()['added'][0]['id']}").status_code == 200


def test_a_client_leaving_mid_upload_leaves_nothing(server):
    address, port, root = server
    body, content_type = multipart("files", "gone.jpg", _jpeg(make_scene(100)))
    with socket.create_connection((address, port), timeout=30) as sock:
        sock.sendall((f"POST /images HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                     + body[: len(body) // 2])
    time.sleep(0.5)
    assert request(address, port, "127.0.0.1")[0] == 200
    assert leftovers(root) == []
