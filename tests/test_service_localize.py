"""``POST /localize`` of ``matchlens serve INDEX --map MAP`` (FastAPI TestClient).

The map is built once per module from five castle-P19 images of ../shared/data/strecha_posed
(skipped where absent) with the small 128 px retrieval pipeline and 2048 RootSIFT keypoints, so
the fixture takes seconds; each localisation takes one or two more.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED_DATA, make_scene, run_cli

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from matchlens.errors import MapError  # noqa: E402
from matchlens.service import create_app  # noqa: E402

CASTLE = SHARED_DATA / "strecha_posed" / "castle-P19"
MAP_IMAGES = ["0002.jpg", "0003.jpg", "0005.jpg", "0006.jpg", "0008.jpg"]  # around the query 0004.jpg
QUERY = "0004.jpg"
TEST_HOSTS = ["testserver"]  # the Host TestClient sends


@pytest.fixture(scope="module")
def castle_map(tmp_path_factory, small_spec) -> tuple[Path, Path]:
    """(index folder, map folder) of five castle-P19 images."""
    if not (CASTLE / "cameras.json").is_file():
        pytest.skip("../shared/data/strecha_posed is not present beside the repository")
    import matchlens
    from matchlens.localize import MapSettings, build_map, read_cameras_json

    root = tmp_path_factory.mktemp("castle")
    index = matchlens.build_index([str(CASTLE / "images" / n) for n in MAP_IMAGES], root / "index", spec=small_spec)
    build_map(index, CASTLE / "images", read_cameras_json(CASTLE / "cameras.json"), root / "map",
              MapSettings(k=4, max_keypoints=2048), names=MAP_IMAGES)
    return root / "index", root / "map"


@pytest.fixture(scope="module")
def client(castle_map) -> TestClient:
    index_dir, map_dir = castle_map
    return TestClient(create_app(index_dir, map_dir=map_dir, allowed_hosts=TEST_HOSTS))


@pytest.fixture(scope="module")
def truth() -> dict:
    """castle-P19's ground-truth cameras as stored (K, R, C, width, height)."""
    return json.loads((CASTLE / "cameras.json").read_text(encoding="utf-8"))


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def localize(client: TestClient, data: bytes, name: str = "q.jpg", **form):
    return client.post("/localize", files={"image": (name, data, "image/jpeg")},
                       data={k: str(v) for k, v in form.items()})


def intrinsics_of(camera: dict) -> str:
    K = camera["K"]
    return f"{K[0][0]},{K[1][1]},{K[0][2]},{K[1][2]}"


def assert_one_line_error(response, status: int | None = None) -> str:
    assert 400 <= response.status_code < 500, response.text
    if status is not None:
        assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    return detail


# --- what the page reads ---------------------------------------------------------------------
def test_index_info_says_whether_a_map_is_loaded(client, castle_map):
    info = client.get("/index").json()["map"]
    assert info["name"] == "map" and info["images"] == len(MAP_IMAGES) and info["points"] > 100
    assert info["k"] == 5 and info["preset"] == "config1" and {"config1", "config2", "config3"} <= set(info["presets"])
    bare = TestClient(create_app(castle_map[0], allowed_hosts=TEST_HOSTS))
    assert bare.get("/index").json()["map"] is None
    page = client.get("/").text + client.get("/static/app.js").text
    assert 'id="localize-form"' in page and '"/localize"' in page
    assert {"/localize", "/localize/plots/{key}"} <= set(client.get("/openapi.json").json()["paths"])


# --- localising ------------------------------------------------------------------------------
def test_a_photo_of_the_scene_is_localised_and_plotted(client, truth):
    camera = truth[QUERY]
    response = localize(client, (CASTLE / "images" / QUERY).read_bytes(), name=f"../x/{QUERY}",
                        intrinsics=intrinsics_of(camera))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok" and body["reason"] is None and body["query"] == QUERY
    assert np.linalg.norm(np.array(body["C"]) - np.array(camera["C"])) < 0.25
    R, R_true = np.array(body["R"]), np.array(camera["R"])
    assert np.degrees(np.arccos(np.clip((np.trace(R @ R_true.T) - 1) / 2, -1, 1))) < 2.0
    assert body["inliers"] >= 30 and body["correspondences"] >= body["inliers"]
    assert body["camera"]["model"] == "PINHOLE" and body["k"] == 5 and body["preset"] == "config1"
    assert body["retrieved"] and set(body["retrieved"]) <= set(MAP_IMAGES)
    assert [r["name"] for r in body["retrieved_images"]] == body["retrieved"]
    thumbnail = client.get(body["retrieved_images"][0]["thumbnail_url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert {"decode", "features", "retrieval", "matching", "pnp", "plot", "total"} <= set(body["timings_ms"])

    plot = client.get(body["plot"])
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(plot.content)) as image:
        assert image.format == "PNG" and min(image.size) > 200
        image.load()


def test_the_camera_model_k_and_preset_fields(client, truth):
    camera = truth[QUERY]
    model = f"PINHOLE {camera['width']} {camera['height']} {intrinsics_of(camera).replace(',', ' ')}"
    body = localize(client, (CASTLE / "images" / QUERY).read_bytes(), camera_model=model, k=3,
                    preset="config2").json()
    assert body["status"] == "ok" and body["k"] == 3 and body["preset"] == "config2"
    assert len(body["retrieved"]) == 3
    assert np.linalg.norm(np.array(body["C"]) - np.array(camera["C"])) < 0.25


def test_an_unrelated_photo_fails_with_a_reason(client):
    response = localize(client, _jpeg(make_scene(7, (640, 480))))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "failed" and body["reason"] and "\n" not in body["reason"]
    assert body["C"] is None and body["R"] is None and body["plot"] is None


# --- errors ----------------------------------------------------------------------------------
def test_bad_uploads_get_the_same_errors_as_search(client):
    photo = (CASTLE / "images" / QUERY).read_bytes()
    for data in (b"this is not an image", b"", photo[:300]):
        found = localize(client, data)
        assert_one_line_error(found)
        searched = client.post("/search", files={"image": ("q.jpg", data, "image/jpeg")})
        assert found.status_code == searched.status_code, (found.text, searched.text)
    assert localize(client, b"this is not an image").status_code == 415


def test_bad_form_fields_are_one_line_4xx(client):
    photo = (CASTLE / "images" / QUERY).read_bytes()
    assert "intrinsics" in assert_one_line_error(localize(client, photo, intrinsics="1,2"), 400)
    assert "config9" in assert_one_line_error(localize(client, photo, preset="config9"), 400)
    mismatch = localize(client, photo, camera_model="PINHOLE 640 480 500 500 320 240")
    assert "640x480" in assert_one_line_error(mismatch, 400)
    both = localize(client, photo, intrinsics="900,900,512,341", camera_model="PINHOLE 1024 683 900 900 512 341")
    assert_one_line_error(both, 400)
    assert localize(client, photo, k=0).status_code == 422
    assert_one_line_error(client.get("/localize/plots/unknown"), 404)


def test_without_a_map_localize_is_404(castle_map):
    bare = TestClient(create_app(castle_map[0], allowed_hosts=TEST_HOSTS))
    response = localize(bare, _jpeg(make_scene(1)))
    assert "--map" in assert_one_line_error(response, 404)
    assert_one_line_error(bare.get("/localize/plots/anything"), 404)


# --- start-up --------------------------------------------------------------------------------
def test_a_map_of_another_index_stops_the_server_at_start(tmp_path, castle_map, built_index, capsys, monkeypatch):
    with pytest.raises(MapError, match="built for another index") as caught:
        create_app(built_index.root, map_dir=castle_map[1])
    assert "\n" not in str(caught.value)

    # The CLI fails before it listens; should it ever start, fail rather than serve for ever.
    import uvicorn

    def refuse(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", refuse)
    damaged = tmp_path / "map"
    shutil.copytree(castle_map[1], damaged)
    (damaged / "points.npz").write_bytes(b"garbage")
    code, out, err = run_cli(capsys, "serve", castle_map[0], "--map", damaged, "--port", "0")
    assert code != 0 and "damaged" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = run_cli(capsys, "serve", built_index.root, "--map", castle_map[1], "--port", "0")
    assert code != 0 and "built for another index" in err and len(err.strip().splitlines()) == 1, err
