"""The quality warning in the HTTP service and on its page: present exactly when the index has a
quality model and the upload's predicted AP is below its threshold."""

from __future__ import annotations

import io
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from tests.conftest import make_scene

pytest.importorskip("fastapi")
torch = pytest.importorskip("torch")
from fastapi.testclient import TestClient  # noqa: E402

from matchlens.service import create_app  # noqa: E402

HOSTS = ["testserver"]


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _constant_model(index, predicted: float, low: float):
    """A quality model whose head predicts ``predicted`` for every patch (last layer: bias only)."""
    from matchlens.quality.net import QualityHead
    from matchlens.quality.store import QualityModel, target_of

    head = QualityHead()
    last = head.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(float(torch.logit(torch.tensor(predicted))))
    return QualityModel(head.eval(), target_of(index), low)


def _search(client, image):
    return client.post("/search", files={"image": ("q.jpg", _jpeg(image), "image/jpeg")}, data={"k": "3"})


def test_service_warns_beside_the_results_only_with_a_low_prediction(tmp_path, built_index):
    import matchlens
    from matchlens.quality.store import default_model_path

    root = tmp_path / "index"
    shutil.copytree(built_index.root, root)
    index = matchlens.open_index(root)
    plain = TestClient(create_app(root, allowed_hosts=HOSTS))
    body = _search(plain, make_scene(2)).json()
    assert len(body["results"]) == 3 and body["quality"] is None  # no model: no check, no cost

    _constant_model(index, 0.1, 0.4).save(default_model_path(index))
    low = _search(TestClient(create_app(root, allowed_hosts=HOSTS)), make_scene(2)).json()
    assert len(low["results"]) == 3
    assert low["quality"]["low"] is True and low["quality"]["predicted_ap"] == pytest.approx(0.1, abs=1e-3)
    assert "low query quality" in low["quality"]["warning"]

    _constant_model(index, 0.8, 0.4).save(default_model_path(index))
    fine = _search(TestClient(create_app(root, allowed_hosts=HOSTS)), make_scene(2)).json()
    assert fine["quality"]["low"] is False and fine["quality"]["warning"] is None


def test_page_has_the_warning_slot():
    from pathlib import Path

    import matchlens.service as service

    static = Path(service.__file__).parent / "static"
    assert 'id="quality-warning"' in (static / "index.html").read_text()
    assert "body.quality" in (static / "app.js").read_text()
