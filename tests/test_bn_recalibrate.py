"""P4's indexing options. BatchNorm statistics re-estimated on a collection
(matchlens.train.bn_recalibrate): the running statistics become the collection's (checked against
a direct computation), the network is stored with the index, and its searches and ONNX exports use
it. Ensembles (matchlens.train.ensemble): concatenation weighs the parts' cosines, then PCA."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import matchlens
from matchlens.config import PipelineSpec
from matchlens.errors import ConfigError
from matchlens.extract import Extractor
from matchlens.models import load_backbone
from matchlens.train.ensemble import Ensemble, concatenate
from matchlens.whitening import PCAWhitening
from matchlens.train.bn_recalibrate import (BN_FOLDER, batchnorm_layers, recalibrate_batchnorm, recalibrated_spec,
                                            sample_paths, spec_inputs)
from tests.conftest import run_cli


def _net_and_activations(sizes):
    """A conv-BN-ReLU-dropout-conv-BN net, inputs of ``sizes``, and each BN's inputs computed directly."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(5, 4, 1),
                        nn.BatchNorm2d(4)).eval()
    inputs = [torch.randn(1, 3, h, w) * (i + 1) + 3 * i for i, (h, w) in enumerate(sizes)]
    conv1, bn1, conv2 = net[0], net[1], net[4]
    with torch.no_grad():
        first = [conv1(x) for x in inputs]
        # the second layer sees the first normalised by each pass's own batch statistics; no dropout
        second = [conv2(F.relu(F.batch_norm(f, None, None, bn1.weight, bn1.bias, training=True, eps=bn1.eps)))
                  for f in first]
    return net, inputs, ((net[1], first), (net[5], second))


def test_running_statistics_become_the_collections():
    net, inputs, layers = _net_and_activations([(9, 7), (12, 10), (8, 8), (15, 6)])
    assert recalibrate_batchnorm(net, inputs) == 4
    for bn, acts in layers:
        every = torch.cat([a.permute(1, 0, 2, 3).reshape(a.shape[1], -1) for a in acts], dim=1)  # (C, all positions)
        assert torch.allclose(bn.running_mean, every.mean(1), atol=1e-5)
        assert torch.allclose(bn.running_var, every.var(1, unbiased=True), rtol=1e-4, atol=1e-6)
        assert bn.momentum == 0.1 and not bn.training
    assert not net.training


def test_per_pass_average_is_pytorchs_cumulative_average():
    net, inputs, layers = _net_and_activations([(9, 7)] * 4)
    assert recalibrate_batchnorm(net, inputs, pooled=False) == 4
    for bn, acts in layers:
        mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in acts]).mean(0)
        var = torch.stack([a.var(dim=(0, 2, 3), unbiased=True) for a in acts]).mean(0)
        assert torch.allclose(bn.running_mean, mean, atol=1e-5)
        assert torch.allclose(bn.running_var, var, rtol=1e-5, atol=1e-6)
    first = torch.cat([a.permute(1, 0, 2, 3).reshape(a.shape[1], -1) for a in layers[0][1]], dim=1)
    assert layers[0][0].running_var.sum() < 0.9 * first.var(1).sum()  # the variance between the images is left out


def test_a_network_without_batchnorm_is_refused():
    with pytest.raises(ConfigError, match="no BatchNorm layer"):
        recalibrate_batchnorm(nn.Conv2d(3, 3, 1), [torch.zeros(1, 3, 4, 4)])


@pytest.fixture(scope="module")
def recalibrated(tmp_path_factory, scenes_dir):
    """An index of the scenes built with BatchNorm re-estimated on 4 of them (embedded backbone, 96 px)."""
    torch.set_num_threads(1)
    spec = PipelineSpec(max_side=96, scales=(1.0, 0.75))
    paths = sorted(str(p) for p in scenes_dir.glob("*.jpg"))
    root = tmp_path_factory.mktemp("bn") / "index"
    new = recalibrated_spec(spec, paths, 4, root)
    index = matchlens.build_index(paths, root, spec=new)
    return spec, new, paths, index


def test_index_stores_the_recalibrated_network(recalibrated):
    spec, new, paths, index = recalibrated
    stored = Path(index.spec.weights)
    assert stored.parent == Path(index.root) / BN_FOLDER and stored.is_file()
    assert index.spec.weights_id and index.spec.weights_id != Extractor(spec, runtime="pytorch").spec.weights_id
    # direct recomputation: the same 4 images through a fresh backbone
    fresh = load_backbone(spec.backbone)
    recalibrate_batchnorm(fresh, spec_inputs(spec, fresh, sample_paths(paths, 4)))
    loaded = load_backbone(spec.backbone, stored)
    want, got = batchnorm_layers(fresh), batchnorm_layers(loaded)
    assert len(got) == len(want) > 10
    for a, b in zip(want, got):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
        assert torch.allclose(a.running_var, b.running_var, atol=1e-6)
    original = load_backbone(spec.backbone)
    assert not torch.allclose(batchnorm_layers(original)[0].running_mean, got[0].running_mean)


def test_search_and_onnx_export_use_the_recalibrated_network(recalibrated):
    spec, new, paths, index = recalibrated
    torch_vec = Extractor(index.spec, runtime="pytorch").describe(paths[2])
    onnx_vec = Extractor(index.spec, runtime="onnxruntime").describe(paths[2])
    plain_vec = Extractor(spec, runtime="pytorch").describe(paths[2])
    stored = np.asarray(index.vectors()[index.search_vectors(torch_vec[None].astype(np.float32), 1)[1][0, 0]])
    assert float(torch_vec @ onnx_vec) > 0.9999  # the export holds the re-estimated statistics
    assert float(torch_vec @ plain_vec) < 0.999  # and they change the descriptor
    assert float(stored @ torch_vec) > 0.9999
    hits = index.search(paths[2], k=1)
    assert Path(hits[0].path).name == Path(paths[2]).name and hits[0].score > 0.999


def test_cli_option_and_errors(tmp_path, scenes_dir, capsys):
    code, _, err = run_cli(capsys, "index", str(scenes_dir), "-i", str(tmp_path / "i"), "--max-side", "128",
                           "--bn-recalibrate", "2", "-q")
    assert code == 0, err
    assert list((tmp_path / "i" / BN_FOLDER).glob("*.pt"))
    code, _, err = run_cli(capsys, "index", str(scenes_dir), "-i", str(tmp_path / "j"), "--bn-recalibrate", "0")
    assert code != 0
    with pytest.raises(ConfigError, match="at least 1"):
        recalibrated_spec(PipelineSpec(), [], 0, tmp_path)
    tiny = str(next(scenes_dir.glob("*.jpg")))
    with pytest.raises(ConfigError, match="under 64 px on a side at --max-side 48"):
        recalibrated_spec(PipelineSpec(max_side=48), [tiny], 1, tmp_path)


def test_ensemble_concatenation_weighs_cosines_then_pca():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 8)), rng.normal(size=(30, 5))
    joint = concatenate([a, b], weights=[3.0, 1.0])
    na, nb = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    assert np.allclose(joint @ joint.T, (3 * na @ na.T + nb @ nb.T) / 4, atol=1e-5)
    ensemble = Ensemble(dim=6, power=0.5, weights=[3.0, 1.0]).fit([a, b])
    direct = PCAWhitening(dim=6, power=0.5).fit(joint).transform(joint)
    assert np.allclose(ensemble.transform([a, b]), direct, atol=1e-5)
    with pytest.raises(ConfigError, match="at least two"):
        concatenate([a])
    with pytest.raises(ConfigError, match="different numbers of images"):
        concatenate([a, b[:10]])
