"""The torch-free query encoder: same descriptors as the Extractor, no torch imported, a damaged
export falls back (or fails in one line), and the NumPy poolings equal the torch ones."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from matchlens.config import spec_from_preset
from matchlens.errors import ConfigError, IndexError_, MatchlensError
from matchlens.extract import Extractor, export
from matchlens.extract import light
from matchlens.extract.light import LightEncoder, open_query_encoder, read_query_model, write_query_model
from tests.conftest import make_scene

pytest.importorskip("onnxruntime")

SRC = str(Path(__file__).resolve().parents[1] / "src")
PHOTOS = {name: Image.fromarray(getattr(skimage.data, name)()) for name in ("astronaut", "chelsea", "coffee")}
PHOTOS["coffee_portrait"] = PHOTOS["coffee"].transpose(Image.Transpose.ROTATE_90)
PRESETS = ("default", "gem")  # default: rmac-ms (three scales); gem: single scale


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """For each preset: (torch Extractor, folder with its query model); the user's cache untouched."""
    root = tmp_path_factory.mktemp("light")
    patch = pytest.MonkeyPatch()
    patch.setenv(export.CACHE_ENV, str(root / "cache"))
    try:
        made = {}
        for preset in PRESETS:
            extractor = Extractor(spec_from_preset(preset), runtime="pytorch")
            folder = root / preset / "model"
            assert write_query_model(extractor.spec, folder, backbone=extractor.backbone) is not None
            made[preset] = (extractor, folder)
        yield made
    finally:
        patch.undo()


@pytest.mark.parametrize("preset", PRESETS)
def test_light_descriptors_equal_the_torch_extractors(exports, preset):
    extractor, folder = exports[preset]
    encoder = open_query_encoder(extractor.spec, folder)
    assert isinstance(encoder, LightEncoder) and "torch-free" in encoder.runtime
    assert encoder.dim == extractor.dim and encoder.spec == extractor.spec
    for name, image in PHOTOS.items():
        got, want = encoder.describe_image(image), extractor.describe_image(image)
        assert got.shape == want.shape and got.dtype == np.float32
        assert float(got @ want) > 0.9999, name
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_files_and_boxes_load_as_the_extractor_loads_them(exports, tmp_path):
    extractor, folder = exports["default"]
    encoder = open_query_encoder(extractor.spec, folder)
    path = tmp_path / "q.jpg"
    make_scene(3, size=(1400, 900)).save(path, quality=90)  # large: JPEG draft decoding applies
    for box in (None, (100, 80, 900, 700)):
        assert encoder.load(path, box).size == extractor.load(path, box).size
        assert float(encoder.describe(path, box) @ extractor.describe(path, box)) > 0.9999


def test_numpy_poolings_equal_the_torch_poolings():
    import torch

    from matchlens.extract import numpy_pooling as N
    from matchlens.pooling import functional as F

    sizes = list(itertools.product(range(1, 50), range(1, 50))) + [(11, 47), (47, 11), (20, 80), (3, 11)]
    for h, w in sizes:  # the shared NumPy grid equals cirtorch's torch float32 computation
        assert list(N.rmac_regions(h, w, 3)) == _torch_rmac_grid(h, w, 3), (h, w)
    rng = np.random.default_rng(0)
    cases = [("mac", {}), ("spoc", {}), ("spoc", {"centre_prior": False}), ("gem", {"p": 3.0}),
             ("gem", {"p": 2.5, "eps": 1e-5}), ("rmac", {"levels": 3}), ("rmac", {"levels": 2}), ("crow", {})]
    for (name, params), (h, w) in itertools.product(cases, [(7, 9), (20, 15), (1, 1)]):
        fmap = rng.standard_normal((1, 32, h, w)).astype(np.float32)
        want = getattr(F, name)(torch.from_numpy(fmap), **params)[0].numpy()
        got = N.numpy_pooling(name, params)(fmap[0])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="has no parameter q"):
        N.numpy_pooling("gem", {"q": 1})


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_importing_extract_imports_no_torch():
    done = _run("""
        import sys
        import matchlens.extract, matchlens.extract.light, matchlens.extract.export, matchlens.extract.runtime
        heavy = [m for m in ("torch", "timm", "torchvision", "onnxruntime", "openvino") if m in sys.modules]
        assert not heavy, heavy
    """)
    assert done.returncode == 0, done.stderr


def test_extract_does_not_import_the_index_package():
    # the package's own __init__ (the API) imports the index; extract alone must not
    done = _run("""
        import sys, types
        pkg = types.ModuleType("matchlens"); pkg.__path__ = [sys.argv[1] + "/matchlens"]
        sys.modules["matchlens"] = pkg
        import matchlens.extract, matchlens.extract.light, matchlens.extract.export
        assert not [m for m in sys.modules if m.startswith("matchlens.index")], sorted(sys.modules)
        assert "torch" not in sys.modules
    """, SRC)
    assert done.returncode == 0, done.stderr


def test_a_light_query_runs_without_torch_timm_or_torchvision(exports, tmp_path):
    extractor, folder = exports["default"]
    path = tmp_path / "q.png"
    PHOTOS["chelsea"].save(path)
    done = _run("""
        import json, sys
        import numpy as np
        from matchlens.config import PipelineSpec
        from matchlens.extract.light import LightEncoder, open_query_encoder
        spec = PipelineSpec.from_dict(json.loads(sys.argv[1]))
        encoder = open_query_encoder(spec, sys.argv[2])
        assert isinstance(encoder, LightEncoder), type(encoder)
        np.save(sys.argv[4], encoder.describe(sys.argv[3]))
        heavy = [m for m in ("torch", "timm", "torchvision") if m in sys.modules]
        assert not heavy, heavy
    """, json.dumps(extractor.spec.to_dict()), str(folder), str(path), str(tmp_path / "v.npy"))
    assert done.returncode == 0, done.stderr
    assert float(np.load(tmp_path / "v.npy") @ extractor.describe(path)) > 0.9999


def _copy(folder: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in (light.MODEL_FILE, light.META_FILE):
        (target / name).write_bytes((folder / name).read_bytes())
    return target


def _one_line(exc: MatchlensError) -> bool:
    return "\n" not in str(exc) and "Traceback" not in str(exc)


@pytest.mark.parametrize("damage", ["flipped-bytes", "truncated", "bad-json", "missing-model", "unparsable-onnx"])
def test_a_damaged_export_falls_back_or_fails_in_one_line(exports, tmp_path, damage):
    extractor, folder = exports["gem"]
    copy = _copy(folder, tmp_path / "model")
    model, meta_path = copy / light.MODEL_FILE, copy / light.META_FILE
    if damage == "flipped-bytes":
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "truncated":
        model.write_bytes(model.read_bytes()[:1000])
    elif damage == "bad-json":
        meta_path.write_text("{not json")
    elif damage == "missing-model":
        model.unlink()
    else:  # checksum agrees, yet ONNX Runtime cannot read it
        model.write_bytes(b"not an onnx model")
        meta = json.loads(meta_path.read_text())
        meta.update(size=model.stat().st_size, sha256=export.file_sha256(model))
        meta_path.write_text(json.dumps(meta))
    with pytest.raises(IndexError_) as caught:
        open_query_encoder(extractor.spec, copy, strict=True)
    assert _one_line(caught.value) and str(copy) in str(caught.value)
    messages: list[str] = []
    encoder = open_query_encoder(extractor.spec, copy, runtime="onnxruntime", warn=messages.append)
    assert isinstance(encoder, Extractor) and len(messages) == 1 and "\n" not in messages[0]
    image = PHOTOS["astronaut"]
    assert float(encoder.describe_image(image) @ extractor.describe_image(image)) > 0.999


def test_no_export_or_another_network_or_an_explicit_runtime_use_the_extractor(exports, tmp_path):
    extractor, folder = exports["gem"]
    quiet: list[str] = []
    assert isinstance(open_query_encoder(extractor.spec, tmp_path / "none", warn=quiet.append), Extractor)
    assert quiet == []  # an index without a query model is normal, not a warning
    assert read_query_model(extractor.spec, tmp_path / "none") is None
    other = extractor.spec.replace(weights_id="0123456789abcdef")
    with pytest.raises(IndexError_, match="is for tf_efficientnet_lite0 weights"):
        read_query_model(other, folder)
    assert isinstance(open_query_encoder(extractor.spec, folder, runtime="pytorch"), Extractor)
    assert isinstance(open_query_encoder(extractor.spec, None), Extractor)


def test_writing_again_keeps_an_intact_export_and_repairs_a_damaged_one(exports, tmp_path):
    extractor, folder = exports["gem"]
    copy = _copy(folder, tmp_path / "model")
    model = copy / light.MODEL_FILE
    before = model.stat().st_mtime_ns, model.stat().st_ino
    meta = write_query_model(extractor.spec, copy, backbone=extractor.backbone)
    assert (model.stat().st_mtime_ns, model.stat().st_ino) == before and meta["sha256"] == export.file_sha256(model)
    model.write_bytes(b"junk")
    meta = write_query_model(extractor.spec, copy, backbone=extractor.backbone)
    assert read_query_model(extractor.spec, copy) == meta
    assert not [p for p in copy.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_network_onnx_cannot_express_gives_no_query_model_and_a_warning(exports, tmp_path, monkeypatch):
    extractor, _ = exports["gem"]
    monkeypatch.setenv(export.CACHE_ENV, str(tmp_path / "cache"))

    def refuse(backbone, target):
        raise ConfigError("backbone cannot be exported to ONNX (test)")

    monkeypatch.setattr(export, "_trace_to_onnx", refuse)
    messages: list[str] = []
    assert write_query_model(extractor.spec, tmp_path / "model", backbone=extractor.backbone, warn=messages.append) is None
    assert len(messages) == 1 and "cannot be exported" in messages[0]
    assert not (tmp_path / "model" / light.META_FILE).exists()
    assert read_query_model(extractor.spec, tmp_path / "model") is None  # queries use the Extractor


def test_changed_weights_are_refused_when_writing(exports, tmp_path):
    extractor, _ = exports["gem"]
    with pytest.raises(ConfigError, match="weights of backbone"):
        write_query_model(extractor.spec.replace(weights_id="0123456789abcdef"), tmp_path / "m",
                          backbone=extractor.backbone)


def _torch_rmac_grid(height: int, width: int, levels: int) -> list[tuple[int, int, int, int]]:
    """cirtorch's R-MAC grid computed with torch float32 tensors, as matchlens computed it before
    the grid became one NumPy function (the reference the NumPy arithmetic must reproduce)."""
    import math

    import torch

    short, long = min(height, width), max(height, width)
    extra = 0
    if short != long:
        steps = torch.tensor((2, 3, 4, 5, 6, 7), dtype=torch.float32)
        overlap = (short**2 - short * ((long - short) / (steps - 1))) / short**2
        extra = int(torch.argmin(torch.abs(overlap - 0.4))) + 1
    extra_w, extra_h = (extra, 0) if width > height else (0, extra)

    def starts(side: int, size: int, count: int) -> list[int]:
        if count == 1:
            return [0]
        half = math.floor(size / 2 - 1)
        ks = torch.arange(count, dtype=torch.float32)
        return [int(v) for v in (torch.floor(half + ks * ((side - size) / (count - 1))) - half).tolist()]

    regions = [(0, 0, height, width)]
    for level in range(1, levels + 1):
        size = math.floor(2 * short / (level + 1))
        if size:
            regions += [(y, x, size, size) for y in starts(height, size, level + extra_h)
                        for x in starts(width, size, level + extra_w)]
    return regions
