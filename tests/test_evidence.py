"""Indicative retrieval (evidence/): tensor, HAR, Grad-CAM decoding, PRF, training, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from matchlens.errors import ConfigError, WeightsError
from matchlens.evidence import (HAR, EvidenceModel, VerifierConfig, aggregate, contributions, correlation_tensor,
                                hypersphere_mask, pool_query_maps, reweight_query)
from matchlens.evidence.grid import pixel_patches
from matchlens.evidence.har import grid_coordinates
from matchlens.evidence.pairs import label_free_pairs, paste, pasted_object_pairs
from matchlens.evidence.train import TrainSettings, accuracy_auc, train_verifier
from tests.conftest import make_scene


@pytest.fixture()
def one_thread():
    """Training under a loaded shared CPU is far faster on one thread (no oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------
# Patch grid and 4D tensor

def test_pixel_patches_are_row_major_blocks():
    img = np.zeros((4, 6, 3), np.uint8)  # 2 rows x 3 cols of 2x2 patches
    for r in range(2):
        for c in range(3):
            img[2 * r:2 * r + 2, 2 * c:2 * c + 2] = 10 * (3 * r + c)
    patches = pixel_patches([Image.fromarray(img)], rows=2, cols=3, patch_px=2)
    assert patches.shape == (1, 6, 12)
    np.testing.assert_allclose(patches[0, :, 0].numpy() * 255, [0, 10, 20, 30, 40, 50], atol=1e-4)


def test_tensor_channels_match_hand_computed_values():
    # grid 1x2: two target patches, two query patches, 2-d descriptors
    t = torch.tensor([[[1.0, 0.0], [3.0, 4.0]]])
    q = torch.tensor([[[0.0, 2.0], [1.0, 0.0]]])
    out = correlation_tensor(t, q, 1, 2, ["cosine", "euclidean", "manhattan"])
    assert out.shape == (1, 3, 1, 2, 1, 2)
    cos, euc, man = out[0, 0, 0, :, 0, :], out[0, 1, 0, :, 0, :], out[0, 2, 0, :, 0, :]
    np.testing.assert_allclose(cos.numpy(), [[0.0, 1.0], [0.8, 0.6]], atol=1e-6)
    np.testing.assert_allclose(euc.numpy(), np.array([[math.sqrt(5), 0.0], [math.sqrt(13), math.sqrt(20)]]) / math.sqrt(2),
                               atol=1e-5)
    np.testing.assert_allclose(man.numpy(), np.array([[3.0, 0.0], [5.0, 6.0]]) / 2, atol=1e-6)


def test_mahalanobis_channel_equals_explicit_formula():
    rng = np.random.default_rng(0)
    t = torch.tensor(rng.normal(size=(1, 4, 3)))
    q = torch.tensor(rng.normal(size=(1, 4, 3)))
    out = correlation_tensor(t, q, 2, 2, ["mahalanobis"], shrinkage=0.3)[0, 0].reshape(4, 4).numpy()
    both = np.concatenate([t[0].numpy(), q[0].numpy()])
    s = np.cov(both, rowvar=False)
    sigma = 0.7 * s + 0.3 * np.trace(s) / 3 * np.eye(3)
    inv = np.linalg.inv(sigma)
    for a in range(4):
        for b in range(4):
            d = t[0, a].numpy() - q[0, b].numpy()
            assert out[a, b] == pytest.approx(math.sqrt(d @ inv @ d) / math.sqrt(3), rel=1e-4)


def test_tensor_indices_are_target_first():
    # target patch 3 equals query patch 1: the cosine peak must sit at [i,j]=(1,1), [k,l]=(0,1)
    rng = np.random.default_rng(1)
    t = torch.tensor(rng.normal(size=(1, 4, 5)))
    q = torch.tensor(rng.normal(size=(1, 4, 5)))
    q[0, 1] = t[0, 3]
    cos = correlation_tensor(t, q, 2, 2, ["cosine"])[0, 0]
    assert cos[1, 1, 0, 1] == pytest.approx(1.0, abs=1e-6)
    assert torch.argmax(cos).item() == np.ravel_multi_index((1, 1, 0, 1), (2, 2, 2, 2))


def test_config_refuses_bad_values_with_one_line_errors():
    with pytest.raises(ConfigError, match="unknown metric"):
        VerifierConfig(metrics=("cosine", "chebyshev"))
    with pytest.raises(ConfigError, match="arch"):
        VerifierConfig(arch="vgg")
    cfg = VerifierConfig(rows=3, cols=5, metrics=("cosine", "manhattan"), har=False)
    assert VerifierConfig.from_dict(cfg.to_dict()) == cfg


# ------------------------------------------------------------------------------------------
# Hypersphere attention regulation

def test_har_mask_formula_on_a_constructed_case():
    coords = grid_coordinates((2, 2, 2, 2))
    assert coords[1, 0, 1, 1].tolist() == [0.75, 0.25, 0.75, 0.75]
    centre = torch.tensor([0.25, 0.25, 0.25, 0.25])
    mask = hypersphere_mask(coords, centre, torch.tensor(0.0), torch.tensor(0.5))
    assert mask[0, 0, 0, 0] == pytest.approx(1.0)
    # one axis away by 0.5: d = 0.5 → exp(-0.25 / 0.5)
    assert mask[1, 0, 0, 0] == pytest.approx(math.exp(-0.5), rel=1e-6)
    # a shell of radius 0.5: elements at distance 0.5 are fully open, the centre is damped
    shell = hypersphere_mask(coords, centre, torch.tensor(0.5), torch.tensor(0.5))
    assert shell[1, 0, 0, 0] == pytest.approx(1.0)
    assert shell[0, 0, 0, 0] == pytest.approx(math.exp(-0.5), rel=1e-6)


def test_har_parameters_receive_gradients_in_2d_and_4d():
    har = HAR((3, 3))
    x2 = torch.randn(2, 4, 5, 5, requires_grad=True)  # a downsampled (mn)x(mn) map
    x4 = torch.randn(2, 4, 3, 3, 3, 3)
    (har(x2).square().sum() + har(x4).square().sum()).backward()
    assert har.centre.grad is not None and torch.count_nonzero(har.centre.grad) == 4
    assert har.radius.grad is not None and har.radius.grad.abs() > 0
    assert har._sigma.grad is not None and har._sigma.grad.abs() > 0
    assert har.sigma.item() == pytest.approx(1.0, rel=1e-5)


# ------------------------------------------------------------------------------------------
# Grad-CAM aggregation and decoding

def test_gradcam_aggregation_and_contribution_sums():
    # A 4D layer whose gradient weights select channel 0, which is 1 only at (0,1,1,0).
    feature = torch.zeros(1, 2, 2, 2, 2, 2)
    feature[0, 0, 0, 1, 1, 0] = 3.0
    feature[0, 1] = 1.0
    grad = torch.zeros_like(feature)
    grad[0, 0] = 1.0
    grad[0, 1] = -0.01
    # A 2D layer of the (mn)x(mn) reshaped tensor: constant positive map.
    feature2 = torch.ones(1, 1, 4, 4)
    grad2 = torch.ones(1, 1, 4, 4)
    m = aggregate([feature, feature2], [grad, grad2], 2, 2)
    assert m.shape == (1, 2, 2, 2, 2)
    # layer 1 normalised: 1 at the peak, relu(-0.01) = 0 elsewhere; layer 2: all ones → mean
    assert m[0, 0, 1, 1, 0] == pytest.approx(1.0)
    assert m[0, 0, 0, 0, 0] == pytest.approx(0.5)
    c_t, c_q = contributions(m)
    assert c_t[0, 0, 1] == pytest.approx(m[0, 0, 1].sum())
    assert c_q[0, 1, 0] == pytest.approx(m[0, :, :, 1, 0].sum())
    assert c_t.sum() == pytest.approx(m.sum()) and c_q.sum() == pytest.approx(m.sum())
    assert torch.argmax(c_t[0]).item() == 1 and torch.argmax(c_q[0]).item() == 2


# ------------------------------------------------------------------------------------------
# PRF

def test_prf_pooling_avg_and_max():
    a = np.array([[0.0, 1.0], [0.0, 0.0]])
    b = np.array([[0.0, 0.0], [2.0, 0.0]])
    np.testing.assert_allclose(pool_query_maps([a, b], "max"), [[0, 1], [1, 0]])
    np.testing.assert_allclose(pool_query_maps([a, b, b], "avg"), [[0, 0.5], [1, 0]])
    with pytest.raises(ConfigError):
        pool_query_maps([a], "median")


def test_reweight_query_dims_unmatched_regions():
    image = Image.new("RGB", (40, 20), (200, 200, 200))
    out = np.asarray(reweight_query(image, np.array([[0.0, 1.0]]), floor=0.25), np.float32)
    assert out[:, -1].mean() == pytest.approx(200, abs=2)
    assert out[:, 0].mean() == pytest.approx(50, abs=2)


# ------------------------------------------------------------------------------------------
# Learning, explanations, checkpoints

def _scenes(n, offset=0):
    return [make_scene(100 + offset + i, (160, 120)) for i in range(n)]


def test_tiny_verifier_learns_pasted_objects(one_thread):
    """A few training steps separate pasted-object pairs from unrelated pairs better than chance."""
    objects = [make_scene(100 + i, (120, 90)) for i in range(8)]
    backgrounds = [make_scene(200 + i, (160, 120)) for i in range(8)]
    config = VerifierConfig(rows=6, cols=6, patch_px=8, metrics=("cosine", "euclidean"))
    result = train_verifier(pasted_object_pairs(objects, backgrounds, 160, seed=0), config,
                            TrainSettings(epochs=5, batch=16, lr=2e-3, val_fraction=0.0), device="cpu")
    test = pasted_object_pairs(objects, backgrounds, 64, seed=99)  # new placements and backgrounds pairs
    scores = result.model.score([p.query for p in test], [p.target for p in test])
    _, auc = accuracy_auc(scores, np.array([p.label for p in test]))
    assert auc > 0.65, f"AUC {auc:.2f}"
    assert result.history[-1]["loss"] < 0.8 * result.history[0]["loss"]


def test_label_free_pairs_are_balanced_and_boxed():
    images = [make_scene(i, (80, 60)) for i in range(5)]
    pairs = label_free_pairs(images, 40, seed=3, paste_fraction=1.0)
    assert sum(p.label for p in pairs) == 20
    for p in pairs:
        assert (p.box is not None) == bool(p.label)
        if p.box:
            x0, y0, x1, y1 = p.box
            assert 0 <= x0 < x1 <= p.target.width and 0 <= y0 < y1 <= p.target.height


@pytest.mark.parametrize("arch", ["resnet18", "conv4d"])
def test_explanation_maps_and_checkpoint_round_trip(tmp_path, arch, one_thread):
    config = VerifierConfig(rows=3, cols=4, patch_px=6, arch=arch, metrics=("cosine", "mahalanobis"))
    model = EvidenceModel(config, device="cpu")
    query, background = make_scene(1, (120, 90)), make_scene(2, (160, 120))
    target, box = paste(query, background, np.random.default_rng(0))
    explanation = model.explain(query, target)
    assert 0 <= explanation.score <= 1
    assert explanation.query_map.shape == (90, 120) and explanation.target_map.shape == (120, 160)
    assert explanation.query_grid.shape == (3, 4) and explanation.evidence.shape == (3, 4, 3, 4)
    assert 0 <= explanation.target_map.min() and explanation.target_map.max() <= 1
    png = explanation.png_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rendered = Image.open(__import__("io").BytesIO(png))
    assert rendered.height > 300 and rendered.width > 600

    path = model.save(tmp_path / "v.pt", note="x")
    again = EvidenceModel.load(path, device="cpu")
    assert again.config == config and again.meta["note"] == "x"
    for key, value in model.network.state_dict().items():
        assert torch.equal(value, again.network.state_dict()[key]), key
    np.testing.assert_allclose(again.score([query], [target]), model.score([query], [target]), atol=1e-6)


def test_load_refuses_non_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable"):
        EvidenceModel.load(bad)
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="not a matchlens verifier"):
        EvidenceModel.load(tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="does not exist"):
        EvidenceModel.load(tmp_path / "missing.pt")


def test_repeated_query_is_described_once_with_identical_rows():
    model = EvidenceModel(VerifierConfig(rows=2, cols=2, patch_px=4), device="cpu")
    a, b = make_scene(1, (80, 60)), make_scene(2, (80, 60))
    out = model.descriptors([a, b, a])
    assert out.shape == (3, 4, 48)
    assert torch.equal(out[0], out[2]) and not torch.equal(out[0], out[1])
