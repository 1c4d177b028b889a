"""Evidence-quality measures (IoU over thresholds), the map baselines and the explain_pair entry point."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from matchlens.evidence import EvidenceModel, VerifierConfig, explain_pair
from matchlens.evidence.iou import THRESHOLDS, box_mask, iou_curve, mean_iou
from tests.conftest import make_scene


def test_box_mask_and_iou_curve_on_a_constructed_map():
    region = box_mask((10, 4), (0, 0, 5, 4))  # left half of a 10x4 image
    assert region.sum() == 20
    heat = np.zeros((4, 10), np.float32)
    heat[:, :5] = 0.9
    heat[:, 5:8] = 0.5  # 12 more pixels above 0.5
    curve = iou_curve(heat, region, thresholds=(0.3, 0.6, 0.95))
    np.testing.assert_allclose(curve, [20 / 32, 1.0, 0.0])
    assert mean_iou([curve, np.zeros(3)]) == pytest.approx(np.mean(curve) / 2)
    assert THRESHOLDS[0] == 0.05 and THRESHOLDS[-1] == 0.95 and len(THRESHOLDS) == 19


def test_iou_refuses_mismatched_sizes():
    with pytest.raises(ValueError):
        iou_curve(np.zeros((3, 3)), np.zeros((4, 3), bool))


def test_baseline_maps_are_image_sized_and_locate_a_pasted_copy(shared_data):
    from matchlens.evidence.baselines import BackboneMaps
    from matchlens.evidence.pairs import load_small

    maps = BackboneMaps(side=224)
    names = sorted((shared_data / "oxford5k_subset" / "images").glob("*.jpg"))
    photo, other = (load_small(names[i], 200).resize((200, 150)) for i in (0, 500))
    cam = maps.cam_crow_map(photo)
    assert cam.shape == (150, 200) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    # the query's global descriptor is most similar to the half of the target that shows the query
    target = Image.new("RGB", (400, 150))
    target.paste(other, (0, 0))
    target.paste(photo, (200, 0))
    sim = maps.similarity_map(target, photo)
    assert sim.shape == (150, 400)
    assert sim[:, 200:].mean() > 2 * sim[:, :200].mean()


def test_explain_pair_accepts_paths_and_a_checkpoint(tmp_path):
    model = EvidenceModel(VerifierConfig(rows=3, cols=3, patch_px=6, metrics=("cosine",)), device="cpu")
    checkpoint = model.save(tmp_path / "v.pt")
    make_scene(1).save(tmp_path / "q.jpg")
    make_scene(2, (200, 300)).save(tmp_path / "t.png")
    explanation = explain_pair(tmp_path / "q.jpg", tmp_path / "t.png", checkpoint)
    assert explanation.query_map.shape == (240, 320) and explanation.target_map.shape == (300, 200)
    assert explanation.query_map.dtype == np.float32 and 0 <= explanation.score <= 1
    assert explanation.png_bytes().startswith(b"\x89PNG")
