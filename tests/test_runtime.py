"""Inference runtimes: every runtime gives the PyTorch reference's descriptors; the ONNX export
is cached, reused and recovered when damaged; the CLI chooses and shows the runtime."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from matchlens.config import MULTI_SCALES, PipelineSpec
from matchlens.errors import ConfigError
from matchlens.extract import Extractor, l2_normalize
from matchlens.extract import export, onnx_runtimes, runtime
from matchlens.models import load_backbone
from matchlens.pooling import make_pooling
from tests.conftest import make_scene, run_cli

AVAILABLE = [name for name in ("pytorch", "onnxruntime", "openvino")
             if name == "pytorch" or importlib.util.find_spec(name) is not None]
SPECS = {
    "single-gem": PipelineSpec(max_side=160, pooling="gem", pooling_params={"p": 3.0}),
    "multi-rmac": PipelineSpec(max_side=160, scales=MULTI_SCALES, pooling="rmac", pooling_params={"levels": 3}),
}


def _images() -> dict[str, Image.Image]:
    """Real photos (skimage): square, landscape with an odd side, portrait; generated scenes: odd
    portrait and a 5:1 strip."""
    photo = lambda name: Image.fromarray(getattr(skimage.data, name)())  # noqa: E731
    return {"astronaut": photo("astronaut"), "chelsea": photo("chelsea"),
            "coffee_portrait": photo("coffee").transpose(Image.Transpose.ROTATE_90),
            "scene241x333": make_scene(1, (241, 333)), "scene500x101": make_scene(2, (500, 101))}


IMAGES = _images()


def reference_descriptor(image: Image.Image, spec: PipelineSpec) -> np.ndarray:
    """cnnimageretrieval-pytorch style: resize, normalise, eager NCHW forward, pool, L2, sum scales."""
    backbone, pooling = _reference_model(spec.backbone), make_pooling(spec.pooling, **spec.pooling_params)
    mean, std = torch.tensor(backbone.mean).view(1, 3, 1, 1), torch.tensor(backbone.std).view(1, 3, 1, 1)
    total = np.zeros(backbone.out_channels)
    for scale in spec.scales:
        side = round(spec.max_side * scale)
        ratio = side / max(image.size)
        size = (max(1, round(image.size[0] * ratio)), max(1, round(image.size[1] * ratio)))
        resized = image.resize(size, Image.BICUBIC, reducing_gap=3.0) if size != image.size else image
        x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        with torch.inference_mode():
            total += l2_normalize(pooling(backbone((x - mean) / std)).numpy())[0]
    return l2_normalize(total)


_REFERENCE: dict[str, torch.nn.Module] = {}


def _reference_model(name: str) -> torch.nn.Module:
    if name not in _REFERENCE:
        _REFERENCE[name] = load_backbone(name)  # its own copy: runtimes may change a backbone's layout
    return _REFERENCE[name]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """One ONNX export for the module's tests, in a temporary cache (the user's is not touched)."""
    folder = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(export.CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def references():
    return {(s, i): reference_descriptor(image, spec) for s, spec in SPECS.items() for i, image in IMAGES.items()}


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("name", AVAILABLE)
def test_every_runtime_gives_the_pytorch_reference_descriptors(name, spec_name, model_cache, references):
    extractor = Extractor(SPECS[spec_name], runtime=name, device="cpu")
    assert extractor.runtime_kind == name and extractor.runtime.startswith(name)
    # queries (one image on every thread) and indexing (one image per stream); PyTorch has one path
    modes = (False,) if name == "pytorch" else (False, True)
    for image_name, image in IMAGES.items():
        reference = references[(spec_name, image_name)]
        for parallel in modes:
            cosine = float(extractor.describe_image(image, parallel=parallel) @ reference)
            assert cosine >= 0.999, (name, spec_name, image_name, parallel, cosine)
        if name == "openvino":  # a shape's second query runs on its own static-shape compilation
            assert float(extractor.describe_image(image) @ reference) >= 0.999, (spec_name, image_name)


@pytest.mark.parametrize("name", AVAILABLE)
def test_describe_files_on_each_runtime_keeps_order_and_matches_reference(name, model_cache, references, tmp_path):
    spec = SPECS["multi-rmac"]
    paths = []
    for image_name, image in IMAGES.items():  # PNG: the decoded pixels are the reference's pixels
        paths.append(tmp_path / f"{image_name}.png")
        image.save(paths[-1])
    paths.insert(2, tmp_path / "missing.png")
    items = list(Extractor(spec, runtime=name, device="cpu").describe_files([str(p) for p in paths * 2]))
    assert [i.path for i in items] == [str(p) for p in paths * 2]
    for item in items:
        stem = item.path.rsplit("/", 1)[-1][:-4]
        if stem == "missing":
            assert item.vector is None and "no such file" in item.error
        else:
            assert float(item.vector @ references[("multi-rmac", stem)]) >= 0.999, (name, stem)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_export_is_cached_reused_and_recovered_when_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv(export.CACHE_ENV, str(tmp_path))
    exports = []
    trace = export._trace_to_onnx
    monkeypatch.setattr(export, "_trace_to_onnx", lambda *a: (exports.append(1), trace(*a)))
    spec, image = PipelineSpec(max_side=128), make_scene(3)
    reference = reference_descriptor(image, spec)

    def fresh_extractor() -> Extractor:
        runtime.clear_loaded()  # as a new process would
        return Extractor(spec, runtime="onnxruntime")

    fresh_extractor()
    model = export.onnx_path(load_backbone(spec.backbone), tmp_path / "onnx")
    assert len(exports) == 1 and model.is_file() and export.verified_digest(model)
    assert not list(model.parent.glob("*.tmp"))  # the atomic write left nothing behind
    assert float(fresh_extractor().describe_image(image) @ reference) >= 0.999
    assert len(exports) == 1  # the second load reused the file

    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated by a crash or a full disk
    assert float(fresh_extractor().describe_image(image) @ reference) >= 0.999
    assert len(exports) == 2 and export.verified_digest(model)

    garbage = b"not an onnx model"  # damaged, yet its checksum file agrees: the runtime's load fails
    model.write_bytes(garbage)
    export._write_atomic(export._sidecar(model), export.file_sha256(model))
    assert float(fresh_extractor().describe_image(image) @ reference) >= 0.999
    assert len(exports) == 3 and model.read_bytes() != garbage


def test_runtime_choice_by_argument_context_and_environment(monkeypatch):
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    assert runtime.requested_runtime() == "auto"
    monkeypatch.setenv(runtime.RUNTIME_ENV, "PyTorch")
    assert runtime.requested_runtime() == "pytorch" and runtime.resolve_runtime() == "pytorch"
    with runtime.use_runtime("onnxruntime"):
        assert runtime.requested_runtime() == "onnxruntime"
        assert runtime.requested_runtime("openvino") == "openvino"  # an explicit argument wins
    assert runtime.requested_runtime() == "pytorch"  # the context is over
    monkeypatch.setenv(runtime.RUNTIME_ENV, "tensorrt")
    with pytest.raises(ConfigError, match="unknown runtime 'tensorrt'; choose one of: auto, onnxruntime, openvino, pytorch"):
        runtime.requested_runtime()


def test_auto_prefers_pytorch_on_a_gpu_then_the_faster_cpu_runtime(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.auto_candidates() == ["pytorch"]
    assert runtime.auto_candidates("cpu")[-1] == "pytorch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    installed = [n for n in ("openvino", "onnxruntime") if importlib.util.find_spec(n) is not None]
    monkeypatch.setattr(runtime, "cpu_has_wide_vectors", lambda: True)
    assert runtime.auto_candidates() == [*installed, "pytorch"]
    monkeypatch.setattr(runtime, "cpu_has_wide_vectors", lambda: False)
    assert runtime.auto_candidates() == [*reversed(installed), "pytorch"]
    monkeypatch.setattr(runtime, "cpu_has_wide_vectors", lambda: True)
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real_find(n, *a))
    assert runtime.auto_candidates()[0] == ("onnxruntime" if "onnxruntime" in installed else "pytorch")


def test_auto_falls_back_to_pytorch_when_the_network_cannot_be_exported(monkeypatch, tmp_path):
    monkeypatch.setenv(export.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)

    def refuse(backbone, target):
        raise ConfigError("backbone cannot be exported to ONNX (test)")

    monkeypatch.setattr(export, "_trace_to_onnx", refuse)
    runtime.clear_loaded()
    with pytest.warns(RuntimeWarning, match="cannot be exported"):
        extractor = Extractor(PipelineSpec(max_side=96), device="cpu")
    assert extractor.runtime_kind == "pytorch"
    if len(AVAILABLE) > 1:
        with pytest.raises(ConfigError, match="cannot be exported"):
            Extractor(PipelineSpec(max_side=96), runtime=AVAILABLE[-1])  # asked for explicitly: an error


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_pytorch_on_cuda_gives_the_reference_descriptors(references):
    extractor = Extractor(SPECS["multi-rmac"], runtime="pytorch", device="cuda")
    assert extractor.runtime.startswith("pytorch") and "cuda" in extractor.runtime
    for image_name, image in IMAGES.items():
        assert float(extractor.describe_image(image) @ references[("multi-rmac", image_name)]) >= 0.999


def test_cli_runtime_option_info_and_interchangeable_descriptors(capsys, scenes_dir, tmp_path, model_cache, monkeypatch):
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    index_dir = tmp_path / "index"
    code, _, err = run_cli(capsys, "index", scenes_dir, "--index", index_dir, "--max-side", "128", "-q",
                           "--runtime", "pytorch")
    assert code == 0, err
    for name in AVAILABLE:
        code, out, _ = run_cli(capsys, "info", index_dir, "--json", "--runtime", name)
        assert code == 0 and json.loads(out)["runtime"].startswith(name)
    code, out, _ = run_cli(capsys, "info", index_dir)
    # the table shows what a search would use: the index's exported query network, torch-free
    assert code == 0 and "onnxruntime" in out and "exported model" in out
    monkeypatch.setenv(runtime.RUNTIME_ENV, "pytorch")
    code, out, _ = run_cli(capsys, "info", index_dir, "--json")
    assert json.loads(out)["runtime"].startswith("pytorch")
    monkeypatch.delenv(runtime.RUNTIME_ENV)

    # The runtime is not part of the pipeline: another runtime re-describes nothing of a built index,
    # and an index built afresh with it gets the same descriptors.
    other = AVAILABLE[-1]
    code, _, err = run_cli(capsys, "index", scenes_dir, "--index", index_dir, "--max-side", "128", "--runtime", other)
    assert code == 0 and "0 computed, 10 reused" in err
    fresh = tmp_path / "fresh"
    code, _, err = run_cli(capsys, "index", scenes_dir, "--index", fresh, "--max-side", "128", "-q", "--runtime", other)
    assert code == 0, err
    import matchlens

    a, b = matchlens.open_index(index_dir), matchlens.open_index(fresh)
    va = {a.entry_for_row(r).path: a.vectors()[r] for r in range(a.size)}
    vb = {b.entry_for_row(r).path: b.vectors()[r] for r in range(b.size)}
    assert va.keys() == vb.keys() and min(float(va[p] @ vb[p]) for p in va) >= 0.999

    code, _, err = run_cli(capsys, "search", index_dir, scenes_dir / "scene_03.jpg", "--runtime", "bogus")
    assert code == 2 and err.strip().splitlines() == [
        "matchlens: error: unknown runtime 'bogus'; choose one of: auto, onnxruntime, openvino, pytorch"]


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_openvino_static_shape_models_equal_the_dynamic_one_and_stay_bounded(model_cache):
    path, _ = export.exported_model(load_backbone("tf_efficientnet_lite0"))
    dynamic = onnx_runtimes.OpenVinoRuntime(path, 2, static_slots=0)
    static = onnx_runtimes.OpenVinoRuntime(path, 2, static_after=1, static_slots=2)
    arrays = [np.random.default_rng(i).standard_normal((1, 3, h, w), dtype=np.float32)
              for i, (h, w) in enumerate([(64, 96), (97, 65), (32, 160)])]
    for parallel in (False, True):
        for x in arrays:
            np.testing.assert_allclose(static.forward(x, parallel), dynamic.forward(x, parallel), rtol=1e-4, atol=1e-4)
        shapes = static._modes[parallel]
        assert list(shapes._static) == [(1, 3, 97, 65), (1, 3, 32, 160)]  # LRU of 2: the oldest shape left
        assert dynamic._modes[parallel]._static == {}


FIRST_INFERENCES_AT_ONCE = """
import sys, threading
import numpy as np, torch
from matchlens.extract import export, onnx_runtimes
torch.manual_seed(0)  # the same tiny network in every process: one export, shared through the lock
net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU()).eval()
path, _ = export.exported_model(net, sys.argv[1])
rt = onnx_runtimes.OpenVinoRuntime(path, 2)
rt.parallelism  # compiles the streams model (no NumPy involved) so that the threads start together
start = threading.Barrier(4)
def run(i):
    start.wait()
    rt.forward(np.full((1, 3, 16, 16), i, np.float32), parallel=True)
threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
# openvino.tools.ovc sends a usage event to Google Analytics on import: it must stay out
assert "openvino_telemetry" not in sys.modules and "openvino.tools.ovc" not in sys.modules, "telemetry imported"
"""


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_a_fresh_process_loads_openvino_without_telemetry_and_infers_in_threads_at_once(tmp_path):
    # OpenVINO's Python bindings set up their NumPy bridge lazily under a once-guard taken with the
    # GIL held: threads reaching it together in a fresh process deadlocked (`matchlens index` hung
    # so; this script hung in about half of its runs) until the runtime set the bridge up first.
    # Three processes: a regression is caught in most runs, not all.
    import os
    import subprocess
    import sys

    script = tmp_path / "first.py"
    script.write_text(FIRST_INFERENCES_AT_ONCE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        for proc in procs:
            assert proc.wait(timeout=120) == 0, proc.stderr.read()
    except subprocess.TimeoutExpired:
        pytest.fail("a process hung in its first parallel inferences")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def test_only_the_most_recently_used_exports_are_kept(tmp_path):
    import os

    models = []
    for i in range(export.KEEP_EXPORTS + 3):
        model = tmp_path / f"net-{i}-opset17.onnx"
        model.write_bytes(b"x")
        export._sidecar(model).write_text("digest")
        os.utime(model, (1_000_000 + i, 1_000_000 + i))  # net-0 is the least recently used
        models.append(model)
    os.utime(models[0])  # ... until it is used again now
    removed = export.prune(tmp_path, keep=models[1])
    assert sorted(removed) == sorted(models[2:4])
    assert not any(m.exists() or export._sidecar(m).exists() for m in removed)
    assert len(list(tmp_path.glob("*.onnx"))) == export.KEEP_EXPORTS + 1  # the kept one on top
