"""R-MAC with learned regions (Gordo et al., "002"): a region proposal head on the backbone map.

R-MAC sums the L2-normalised pooled vectors of a rigid grid of square regions
(:func:`matchlens.pooling.regions.rmac_regions`). Gordo et al. replace the grid by the boxes of a
region proposal network (RPN) trained on boxes of the landmark, so the regions follow the object.
Here, small enough to train on a CPU:

* :class:`ProposalHead` - a 1×1 and a 3×3 conv on the backbone's map, then per cell and per
  anchor (scales × aspect ratios, in map cells) an objectness logit and four box offsets (Faster
  R-CNN's parametrisation); :meth:`ProposalHead.propose` keeps the ``k`` best after non-maximum
  suppression;
* :func:`regional_descriptor` - ``L2(Σ_r L2(pool(X in r)))``, each region pooled by GeM (or MAC)
  under a mask of the map's cells. With ``sharpness=None`` the mask is hard (the cells whose
  centres lie inside the box), so the grid's boxes give exactly rigid R-MAC; a finite sharpness
  makes the mask a product of sigmoids of the distance to each edge, so the triplet loss
  reaches the box offsets (:class:`LearnedRMAC`);
* :func:`save_head` / :func:`load_head` - the trained head as one file, with the backbone it was
  trained on; the ``learned-rmac`` pooling (:mod:`matchlens.pooling.specs`) reads it, so an
  index built with ``--pooling learned-rmac --pooling-params head=FILE`` pools every image and
  query over its learned regions.

The losses and the training are :mod:`matchlens.train.proposals` and
:mod:`matchlens.train.learned_regions`. Boxes are ``(x0, y0, x1, y1)`` in map cells: cell
(row i, column j) covers [j, j+1] × [i, i+1].
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from matchlens.errors import ConfigError
from matchlens.fileio import atomic_path
from matchlens.pooling.regions import rmac_regions
from matchlens.pooling.specs import file_id

__all__ = ["HEAD_FORMAT", "LearnedRMAC", "ProposalHead", "box_iou", "decode", "encode", "file_id", "grid_boxes",
           "load_head", "make_anchors", "nms", "pool_regions", "regional_descriptor", "relative_to_cells",
           "save_head"]

HEAD_FORMAT = "matchlens-regions-head"
HEAD_VERSION = 1

SCALES = (0.35, 0.6, 1.0)   # anchor side, times the map's short side
ASPECTS = (0.6, 1.0, 1.7)   # width / height
POSITIVE_IOU = 0.5
NEGATIVE_IOU = 0.3
MAX_LOG_SCALE = 3.0         # offsets may grow or shrink an anchor at most e³ times
EPS = 1e-6


def grid_boxes(height: int, width: int, levels: int = 3) -> torch.Tensor:
    """The rigid R-MAC grid of an ``height × width`` map as (R, 4) cell boxes, in pooling order."""
    return torch.tensor([[x0, y0, x0 + w, y0 + h] for y0, x0, h, w in rmac_regions(height, width, levels)],
                        dtype=torch.float32)


def relative_to_cells(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Relative ``(x0, y0, x1, y1)`` boxes in [0, 1] → cells of an ``height × width`` map."""
    return boxes * torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)


def box_masks(boxes: torch.Tensor, height: int, width: int, sharpness: float | None) -> torch.Tensor:
    """(R, H, W) weights of each map cell in each box: 1 inside and 0 outside (hard), or the
    product of sigmoids of the cell centre's distance to the four edges, times ``sharpness``."""
    cx = torch.arange(width, dtype=boxes.dtype, device=boxes.device) + 0.5
    cy = torch.arange(height, dtype=boxes.dtype, device=boxes.device) + 0.5
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))
    if sharpness is None:
        mx = ((cx > x0) & (cx < x1)).to(boxes.dtype)
        my = ((cy > y0) & (cy < y1)).to(boxes.dtype)
    else:
        mx = torch.sigmoid(sharpness * (cx - x0)) * torch.sigmoid(sharpness * (x1 - cx))
        my = torch.sigmoid(sharpness * (cy - y0)) * torch.sigmoid(sharpness * (y1 - cy))
    return my[:, :, None] * mx[:, None, :]


def pool_regions(fmap: torch.Tensor, boxes: torch.Tensor, p: float | torch.Tensor | None = 3.0,
                 sharpness: float | None = None) -> torch.Tensor:
    """(C, H, W) map → (R, C): each box's cells pooled by GeM(``p``), or MAC for ``p`` None
    (values clamped at 0 as :func:`matchlens.pooling.functional.mac`)."""
    masks = box_masks(boxes, fmap.shape[-2], fmap.shape[-1], sharpness).flatten(1)  # (R, HW)
    x = fmap.flatten(1)  # (C, HW)
    if p is None:
        return (x.clamp(min=0)[None] * masks[:, None]).amax(dim=2)
    powered = x.clamp(min=EPS).pow(p)
    mean = (masks @ powered.T) / (masks.sum(dim=1, keepdim=True) + EPS)
    return mean.clamp(min=EPS).pow(1.0 / p)


def regional_descriptor(fmap: torch.Tensor, boxes: torch.Tensor, p: float | torch.Tensor | None = 3.0,
                        sharpness: float | None = None) -> torch.Tensor:
    """R-MAC-style descriptor (C,) of one (C, H, W) map: ``L2(Σ_r L2(pool_r))`` over ``boxes`` (R, 4).
    Regions are normalised as cirtorch does (``v / (‖v‖ + 1e-6)``)."""
    pooled = pool_regions(fmap, boxes, p, sharpness)
    summed = (pooled / (torch.linalg.vector_norm(pooled, dim=1, keepdim=True) + EPS)).sum(dim=0)
    return F.normalize(summed, dim=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) intersection over union of boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + EPS)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, keep: int) -> torch.Tensor:
    """Indices of at most ``keep`` boxes, best score first, none overlapping a kept one by more
    than ``threshold`` IoU (greedy NMS; a few hundred anchors, so a plain loop)."""
    order = torch.argsort(scores, descending=True)
    iou = box_iou(boxes, boxes)
    chosen: list[int] = []
    for i in order.tolist():
        if all(float(iou[i, j]) <= threshold for j in chosen):
            chosen.append(i)
            if len(chosen) == keep:
                break
    return torch.tensor(chosen, dtype=torch.long, device=boxes.device)


def make_anchors(height: int, width: int) -> torch.Tensor:
    """(H·W·A, 4) anchors centred on every cell, A = scales × aspects, in the head's output order."""
    short = min(height, width)
    shapes = [(s * short * math.sqrt(a), s * short / math.sqrt(a)) for s in SCALES for a in ASPECTS]
    sizes = torch.tensor(shapes, dtype=torch.float32)  # (A, 2) w, h
    cy, cx = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2).float()  # (HW, 1, 2)
    return torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1).reshape(-1, 4)


def encode(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Faster R-CNN offsets (dx, dy, dw, dh) taking ``anchors`` to ``boxes`` (row-aligned)."""
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    wb, hb = (boxes[:, 2] - boxes[:, 0]).clamp(min=EPS), (boxes[:, 3] - boxes[:, 1]).clamp(min=EPS)
    dx = ((boxes[:, 0] + boxes[:, 2]) - (anchors[:, 0] + anchors[:, 2])) / 2 / wa
    dy = ((boxes[:, 1] + boxes[:, 3]) - (anchors[:, 1] + anchors[:, 3])) / 2 / ha
    return torch.stack([dx, dy, torch.log(wb / wa), torch.log(hb / ha)], dim=1)


def decode(anchors: torch.Tensor, deltas: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boxes from ``anchors`` moved by ``deltas`` (inverse of :func:`encode`), clipped to the map."""
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx = (anchors[:, 0] + anchors[:, 2]) / 2 + deltas[:, 0] * wa
    cy = (anchors[:, 1] + anchors[:, 3]) / 2 + deltas[:, 1] * ha
    w = wa * torch.exp(deltas[:, 2].clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE))
    h = ha * torch.exp(deltas[:, 3].clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE))
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(boxes.clamp(min=0), limits)


class ProposalHead(nn.Module):
    """1×1 conv (channel reduction, so a 3×3 conv on a 1280-channel map stays cheap on a CPU), 3×3
    conv, then per cell and anchor an objectness logit and four box offsets (RPN, Ren et al., as
    Gordo et al. train it on landmark boxes)."""

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        anchors = len(SCALES) * len(ASPECTS)
        self.conv = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1))
        self.objectness = nn.Conv2d(hidden, anchors, 1)
        self.offsets = nn.Conv2d(hidden, 4 * anchors, 1)
        nn.init.zeros_(self.offsets.weight)  # starts at the anchors themselves
        if self.offsets.bias is not None:
            nn.init.zeros_(self.offsets.bias)

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (N,), offsets (N, 4) and anchors (N, 4) of one (C, H, W) map; N = H·W·A."""
        height, width = fmap.shape[-2:]
        hidden = F.relu(self.conv(fmap[None]))
        logits = self.objectness(hidden)[0].permute(1, 2, 0).reshape(-1)
        deltas = self.offsets(hidden)[0].permute(1, 2, 0).reshape(-1, 4)
        return logits, deltas, make_anchors(height, width).to(fmap.device)

    def propose(self, fmap: torch.Tensor, k: int, iou: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best boxes after NMS (K, 4) in cells, differentiable in the offsets, and their logits."""
        logits, deltas, anchors = self(fmap)
        boxes = decode(anchors, deltas, fmap.shape[-2], fmap.shape[-1])
        with torch.no_grad():
            keep = nms(boxes.detach(), logits.detach(), iou, k)
        return boxes[keep], logits[keep]


class LearnedRMAC(nn.Module):
    """R-MAC over the whole map plus the ``k`` regions a :class:`ProposalHead` proposes, each
    GeM-pooled under a soft box mask, L2-normalised, summed and L2-normalised again."""

    def __init__(self, channels: int, k: int = 16, p: float = 3.0, sharpness: float = 4.0, hidden: int = 64,
                 include_whole: bool = True) -> None:
        super().__init__()
        self.head = ProposalHead(channels, hidden)
        self.channels, self.hidden = channels, hidden
        self.k, self.p, self.sharpness, self.include_whole = k, p, sharpness, include_whole

    def config(self) -> dict[str, Any]:
        """The keywords that rebuild this module (without its weights)."""
        return {"channels": self.channels, "k": self.k, "p": self.p, "sharpness": self.sharpness,
                "hidden": self.hidden, "include_whole": self.include_whole}

    def regions(self, fmap: torch.Tensor) -> torch.Tensor:
        """The (R, 4) cell boxes this map is pooled over."""
        boxes, _ = self.head.propose(fmap, self.k)
        if self.include_whole:
            whole = torch.tensor([[0.0, 0.0, fmap.shape[-1], fmap.shape[-2]]], device=fmap.device)
            boxes = torch.cat([whole, boxes])
        return boxes

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """The (C,) descriptor of one (C, H, W) map."""
        return regional_descriptor(fmap, self.regions(fmap), self.p, self.sharpness)


def save_head(path: str | os.PathLike, model: LearnedRMAC, meta: dict[str, Any]) -> str:
    """Write ``model`` (atomically) with ``meta`` (backbone, weights_id, what it was trained on);
    returns the file's id (:func:`file_id`)."""
    payload = {"format": HEAD_FORMAT, "version": HEAD_VERSION, "config": model.config(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": dict(meta)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return file_id(path)


def load_head(path: str | os.PathLike) -> tuple[LearnedRMAC, dict[str, Any]]:
    """The :class:`LearnedRMAC` saved in ``path`` (eval mode) and its ``meta``; a one-line
    ConfigError for a missing file or one that is not a regions head."""
    if not Path(path).is_file():
        raise ConfigError(f"regions head {path} not found; train one with 'matchlens train-regions INDEX --out FILE'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for a file that is not its own
        raise ConfigError(f"{path} is not a regions head ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != HEAD_FORMAT:
        raise ConfigError(f"{path} is not a regions head (made by 'matchlens train-regions')")
    if int(payload.get("version", 0)) > HEAD_VERSION:
        raise ConfigError(f"regions head {path} is format version {payload['version']}; this matchlens reads "
                          f"<= {HEAD_VERSION}: upgrade matchlens")
    model = LearnedRMAC(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.eval(), dict(payload.get("meta", {}))
