"""The losses that train learned R-MAC regions (Gordo et al., "002"); the head and the pooling
are :mod:`matchlens.pooling.proposals`, the training loop :mod:`matchlens.train.learned_regions`.

* :func:`rpn_loss` - objectness (anchors with IoU ≥ 0.5 to a target box, or the best anchor of
  a target, are positive; IoU < 0.3 negative; both sides averaged separately) plus smooth-L1 on
  the positives' offsets. The target boxes come label-free from spatially verified matches
  (:mod:`matchlens.train.inlier_boxes`);
* :func:`triplet_step_loss` - the triplet loss of the learned-region descriptors of one tuple
  (through the soft box masks, so it reaches the box offsets), plus the box loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from matchlens.pooling.proposals import NEGATIVE_IOU, POSITIVE_IOU, LearnedRMAC, box_iou, encode
from matchlens.train.losses import triplet_loss

__all__ = ["rpn_loss", "triplet_step_loss"]


def rpn_loss(logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Objectness (positives and negatives averaged separately, then summed) plus smooth-L1 on the
    positive anchors' offsets toward their best target; ``targets`` (M, 4) in cells, M ≥ 1."""
    iou = box_iou(anchors, targets)
    best, which = iou.max(dim=1)
    positive = best >= POSITIVE_IOU
    positive[iou.argmax(dim=0)] = True  # every target has at least its best anchor
    negative = (best < NEGATIVE_IOU) & ~positive
    labels = positive.to(logits.dtype)
    per_anchor = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    objectness = per_anchor[positive].mean()
    if negative.any():
        objectness = objectness + per_anchor[negative].mean()
    wanted = encode(anchors[positive], targets[which[positive]])
    return objectness + F.smooth_l1_loss(deltas[positive], wanted, beta=1 / 9)


def triplet_step_loss(model: LearnedRMAC, maps: list[torch.Tensor], targets: list[torch.Tensor | None],
                      rpn_weight: float = 1.0, margin: float = 0.1) -> torch.Tensor:
    """One tuple's loss: the triplet loss of the learned-region descriptors of ``maps`` (query,
    positive, negatives…) plus ``rpn_weight`` × :func:`rpn_loss` on each map with target boxes."""
    descriptors = torch.stack([model(m) for m in maps])
    loss = triplet_loss(descriptors[0], descriptors[1], descriptors[2:], margin)
    for fmap, boxes in zip(maps, targets):
        if boxes is not None and rpn_weight > 0:
            logits, deltas, anchors = model.head(fmap)
            loss = loss + rpn_weight * rpn_loss(logits, deltas, anchors, boxes)
    return loss
