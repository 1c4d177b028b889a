"""Learned-region R-MAC (Gordo et al.): label-free boxes from verified matches, the proposal head
and its losses, and the regional descriptor against rigid R-MAC."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import paste_patch, texture_image
from matchlens.local.features import extract_rootsift
from matchlens.pooling.functional import rmac
from matchlens.pooling.proposals import (LearnedRMAC, ProposalHead, box_iou, decode, encode, grid_boxes, make_anchors,
                                         nms, pool_regions, regional_descriptor)
from matchlens.train.inlier_boxes import pair_boxes, verified_boxes
from matchlens.train.proposals import rpn_loss, triplet_step_loss


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(box_iou(torch.tensor(a)[None], torch.tensor(b)[None])[0, 0])


def test_inlier_boxes_of_a_generated_pair_are_the_pasted_regions():
    rng = np.random.default_rng(0)
    patch = texture_image(rng, 120, 150)
    first = paste_patch(texture_image(rng, 240, 320), patch, 30, 60)
    bigger = cv2.resize(patch, (180, 144), interpolation=cv2.INTER_CUBIC)
    second = paste_patch(texture_image(rng, 260, 360), bigger, 150, 90)
    a = extract_rootsift(Image.fromarray(first), 1000, 512)
    b = extract_rootsift(Image.fromarray(second), 1000, 512)
    found = pair_boxes(a, b)
    assert found is not None
    box_a, box_b, inliers = found
    assert inliers >= 30
    expected_a = np.array([30 / 320, 60 / 240, 180 / 320, 180 / 240], np.float32)
    expected_b = np.array([150 / 360, 90 / 260, 330 / 360, 234 / 260], np.float32)
    # keypoints lie a few pixels inside the patch's edges, so the inlier box is slightly smaller
    assert _iou(box_a, expected_a) > 0.7 and _iou(box_b, expected_b) > 0.7
    for box, expected in ((box_a, expected_a), (box_b, expected_b)):
        assert (box[:2] >= expected[:2] - 0.02).all() and (box[2:] <= expected[2:] + 0.02).all()
    np.testing.assert_allclose(box_a, expected_a, atol=0.06)
    np.testing.assert_allclose(box_b, expected_b, atol=0.06)
    # a pair of unrelated images gives no box, and verified_boxes keeps only the verified pair
    other = extract_rootsift(Image.fromarray(texture_image(rng, 240, 320)), 1000, 512)
    assert pair_boxes(a, other) is None
    collected = verified_boxes([a, b, other], [(0, 1), (0, 2), (1, 2)])
    assert collected.pairs == [(0, 1)] and set(collected.boxes) == {0, 1}


def test_descriptor_on_the_grid_boxes_is_rigid_rmac():
    torch.manual_seed(0)
    fmap = torch.randn(16, 5, 7)
    boxes = grid_boxes(5, 7)
    assert len(boxes) == 21  # 1 + 2 + 6 + 12, as rmac_regions documents for a 5×7 map
    ours = regional_descriptor(fmap, boxes, p=None)
    np.testing.assert_allclose(ours.numpy(), F.normalize(rmac(fmap[None]), dim=1)[0].numpy(), atol=1e-6)
    assert float(torch.linalg.vector_norm(ours)) == pytest.approx(1.0, abs=1e-6)
    # GeM under a hard mask is GeM of the slice
    y0, x0, y1, x1 = 1, 2, 4, 6
    gem = fmap[:, y0:y1, x0:x1].clamp(min=1e-6).pow(3).mean(dim=(1, 2)).pow(1 / 3)
    pooled = pool_regions(fmap, torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32), p=3.0)
    np.testing.assert_allclose(pooled[0].numpy(), gem.numpy(), rtol=1e-5)


def test_learned_descriptor_is_normalised_and_differentiable_in_the_boxes():
    torch.manual_seed(0)
    model = LearnedRMAC(8, k=4, hidden=8)
    fmap = torch.rand(8, 6, 9)
    regions = model.regions(fmap)
    assert regions.shape == (5, 4)
    assert (regions[:, 2] <= 9).all() and (regions[:, 3] <= 6).all() and (regions[:, :2] >= 0).all()
    descriptor = model(fmap)
    assert float(torch.linalg.vector_norm(descriptor.detach())) == pytest.approx(1.0, abs=1e-5)
    descriptor.sum().backward()
    assert model.head.offsets.bias.grad is not None and model.head.offsets.bias.grad.abs().sum() > 0


def test_anchor_offsets_round_trip_and_nms_drops_overlaps():
    anchors = make_anchors(4, 6)
    assert anchors.shape == (4 * 6 * 9, 4)
    targets = torch.tensor([[1.0, 0.5, 4.0, 3.5]]).expand(len(anchors), 4)
    back = decode(anchors, encode(anchors, targets), 4, 6)
    np.testing.assert_allclose(back.numpy(), targets.numpy(), atol=1e-4)
    boxes = torch.tensor([[0, 0, 4, 4], [0.2, 0, 4.2, 4], [5, 5, 8, 8]], dtype=torch.float32)
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5, 3).tolist() == [0, 2]


def test_rpn_loss_decreases_and_the_head_finds_the_target():
    torch.manual_seed(0)
    fmap = torch.rand(8, 6, 8)
    fmap[:, 1:4, 4:7] += 2.0  # the "object": what the head can see
    target = torch.tensor([[4.0, 1.0, 7.0, 4.0]])
    head = ProposalHead(8, hidden=16)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = rpn_loss(*head(fmap), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]
    boxes, _ = head.propose(fmap, 1)
    assert float(box_iou(boxes.detach(), target)[0, 0]) > 0.6


def test_triplet_step_pulls_the_positive_closer():
    torch.manual_seed(0)
    model = LearnedRMAC(8, k=3, hidden=8)
    query, positive, negative = torch.rand(8, 5, 6), torch.rand(8, 5, 6), torch.rand(8, 5, 6)
    positive[:4] += query[:4]
    targets = [torch.tensor([[0.0, 0.0, 3.0, 3.0]]), None, None]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = float(triplet_step_loss(model, [query, positive, negative], targets).detach())
    for _ in range(30):
        loss = triplet_step_loss(model, [query, positive, negative], targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss.detach()) < first
