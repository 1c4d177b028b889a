"""Per-region fine-tuning (PS-Net eq. 2): the loss is the tuple loss summed over a layout's regions,
the regions are the cells the regional kind pools, and `matchlens train --regions` runs it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from matchlens.errors import ConfigError
from matchlens.models import Backbone
from matchlens.regional.descriptors import pool_regions
from matchlens.train import TrainConfig, tuple_loss
from matchlens.train.model import RetrievalNet
from matchlens.train.regions import layout_boxes, region_descriptors, regional_tuple_loss
from tests.conftest import run_cli
from tests.test_train import gt_dataset, one_thread  # noqa: F401  (fixtures)


def _net(p: float = 3.0) -> RetrievalNet:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4))
    return RetrievalNet(Backbone("tiny", body, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "tiny"), p=p, learn_p=False)


def test_region_descriptors_pool_the_regional_kinds_cells():
    net = _net().eval()
    images = torch.rand(2, 3, 48, 64)
    boxes = layout_boxes("garment5")
    with torch.no_grad():
        ours = region_descriptors(net, images, boxes).numpy()
        fmap = net.backbone((images - net.mean) / net.std).numpy()
    assert ours.shape == (2, 5, 8)
    from matchlens.extract.numpy_pooling import gem
    for b in range(2):  # the regional kind's NumPy ROI pooling on the same map gives the same vectors
        expected = pool_regions(fmap[b], boxes, lambda cells: gem(cells, p=3.0))
        np.testing.assert_allclose(ours[b], expected, atol=1e-5)


def test_regional_tuple_loss_is_the_sum_over_regions():
    torch.manual_seed(1)
    d = nn.functional.normalize(torch.randn(4, 3, 6), dim=2)  # query, positive, 2 negatives × 3 regions
    total = regional_tuple_loss("triplet", d, 0.1)
    assert total == pytest.approx(sum(float(tuple_loss("triplet", d[:, r], 0.1)) for r in range(3)))
    # a positive equal to the query in every region and far negatives: no loss
    d[1] = d[0]
    d[2:] = -d[0]
    assert float(regional_tuple_loss("triplet", d, 0.1)) == 0.0


def test_regions_option_refuses_per_image_layouts_and_selfsup(gt_dataset, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="needs a fixed layout"):
        TrainConfig(data=str(gt_dataset), out=str(tmp_path / "a"), regions="keypoints")
    with pytest.raises(ConfigError, match="unknown region layout"):
        TrainConfig(data=str(gt_dataset), out=str(tmp_path / "b"), regions="nope")
    with pytest.raises(ConfigError, match="self-supervised"):
        TrainConfig(data=str(gt_dataset), out=str(tmp_path / "c"), regions="grid2x2", positives="selfsup")


def test_cli_trains_per_region(gt_dataset, tmp_path, capsys):  # noqa: F811
    code, stdout, stderr = run_cli(capsys, "train", gt_dataset, "--out", tmp_path / "run", "--max-side", "64",
                                   "--tuples", "2", "--batch", "2", "--epochs", "1", "--negatives", "2",
                                   "--loss", "triplet", "--regions", "grid2x2", "--val-groups", "obj3", "--no-lw",
                                   "--holdout-groups", "obj3", "--threads", "1", "-q")
    assert code == 0, stderr
    assert (tmp_path / "run" / "best.pt").is_file() and "epoch 1: loss" in stderr
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert saved["matchlens"]["config"]["regions"] == "grid2x2"
