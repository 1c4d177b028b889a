"""Losses and hard-negative mining of `matchlens train`, on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from matchlens.train import contrastive_loss, mine_negatives, nt_xent_loss, triplet_loss, tuple_loss


def test_contrastive_loss_by_hand():
    anchor = torch.tensor([1.0, 0.0])
    others = torch.tensor([[0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    labels = torch.tensor([1, 0, 0])
    # match at d² = 0.8 → 0.4; negative at d = √2 > τ → 0; negative at d = √0.4 → ½(0.7 - √0.4)².
    expected = 0.4 + 0.0 + 0.5 * (0.7 - math.sqrt(0.4)) ** 2
    assert float(contrastive_loss(anchor, others, labels, margin=0.7)) == pytest.approx(expected, rel=1e-6)


def test_triplet_loss_by_hand():
    anchor, positive = torch.tensor([1.0, 0.0]), torch.tensor([0.8, 0.6])
    negatives = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # d²(a,p) = 0.4; d²(a,n1) = 0.8 → max(0, 0.1 + 0.4 - 0.8) = 0; d²(a,n2) = 0 → 0.5.
    assert float(triplet_loss(anchor, positive, negatives, margin=0.1)) == pytest.approx(0.5, rel=1e-6)


def test_tuple_loss_reads_query_positive_negatives_in_order():
    rows = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    assert float(tuple_loss("contrastive", rows)) == pytest.approx(0.4 + 0.5 * (0.7 - math.sqrt(0.4)) ** 2, rel=1e-6)
    assert float(tuple_loss("triplet", rows[[0, 3, 1, 2]])) == pytest.approx(0.0, abs=1e-7)  # 0.1+0.4-0.8 and 0.1+0.4-2


def test_nt_xent_by_hand():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    z = torch.cat([e1, e2])
    # Each view: its twin at similarity 1, the two others at 0 → -log(e^10 / (e^10 + 2)).
    expected = -math.log(math.exp(10) / (math.exp(10) + 2))
    assert float(nt_xent_loss(z, z.clone(), temperature=0.1)) == pytest.approx(expected, rel=1e-3)  # float32
    assert float(nt_xent_loss(z, z.flip(0), temperature=0.1)) > 5  # views matched to the wrong image


def _unit(angles_deg):
    a = np.radians(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_mining_returns_hardest_non_matching_at_most_one_per_group():
    query = _unit([0])
    # pool ids 10..15 at increasing angle (decreasing similarity to the query)
    pool = _unit([5, 10, 20, 30, 40, 50])
    ids = [10, 11, 12, 13, 14, 15]
    groups = [7, 3, 3, -1, 4, -1]  # 10 is in the query's group; 11 and 12 share group 3
    mined = mine_negatives(query, [7], pool, ids, groups, count=3, excluded=[{13}])
    # 10: same group → skipped; 11: hardest negative; 12: second of group 3 → skipped;
    # 13: excluded (e.g. junk) → skipped; then 14 and 15.
    assert mined == [[11, 14, 15]]


def test_mining_ungrouped_query_and_fewer_candidates_than_asked():
    query = _unit([0, 90])
    pool = _unit([80, 10])
    mined = mine_negatives(query, [-1, -1], pool, [0, 1], [-1, -1], count=5, excluded=[set(), {0}])
    assert mined == [[1, 0], [1]]
