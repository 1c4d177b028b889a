"""The scene-graph embedding network of Schroeder & Tripathi ("Structured query-based image
retrieval using scene graphs"), a layout-prediction network after sg2im (Johnson et al.).

* object and predicate embeddings (``dim`` = 128);
* a 5-layer graph convolution over ⟨s, p, o⟩ triplets (:class:`TripleConv`: each edge's
  [s, p, o] through an MLP of hidden width 512 gives new s, p, o candidates; an object averages
  the candidates of every edge it takes part in, then a second MLP);
* a layout head: each object's box (x0, y0, x1, y1 in [0, 1]) regressed from its embedding
  (sg2im's box net; L2 loss);
* the triplet heads of Schroeder et al. (ICCV-W 2019), on the triplet embedding [s, p, o]:
  a triplet mask (M x M cells over the triplet's superbox, each labelled background / subject /
  object: pixel-wise cross-entropy) and the superbox (the box enclosing subject and object: L2).

sg2im's per-object mask head and its masks need segmentation masks; with boxes only, the layout is
the boxes, and the triplet mask's ground truth is rasterised from the two boxes (box masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Graphs", "LayoutLosses", "SceneGraphNet", "TripleConv", "superboxes", "triplet_mask_targets"]


@dataclass
class Graphs:
    """A batch of scene graphs: object categories (N,), triplets (T, 3) as (subject row, predicate,
    object row) into the batch's objects, the graph of each object (N,), and boxes (N, 4) in [0, 1]
    when known (training)."""

    objects: torch.Tensor
    triplets: torch.Tensor
    graph_of: torch.Tensor
    boxes: torch.Tensor | None = None


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers)


class TripleConv(nn.Module):
    """One graph convolution over triplets (sg2im's GraphTripleConv, average pooling)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.net1 = _mlp([3 * dim, hidden, 2 * hidden + dim])
        self.net2 = _mlp([hidden, hidden, dim])

    def forward(self, obj: torch.Tensor, pred: torch.Tensor, triplets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, o = triplets[:, 0], triplets[:, 2]
        out = self.net1(torch.cat([obj[s], pred, obj[o]], dim=1))
        new_s, new_p, new_o = out.split([self.hidden, out.shape[1] - 2 * self.hidden, self.hidden], dim=1)
        pooled = obj.new_zeros(len(obj), self.hidden)
        pooled.index_add_(0, s, new_s).index_add_(0, o, new_o)
        counts = obj.new_zeros(len(obj)).index_add_(0, s, obj.new_ones(len(s))).index_add_(0, o, obj.new_ones(len(o)))
        # An object in no triplet keeps a zero message (sg2im links every object to an image node instead).
        return self.net2(pooled / counts.clamp(min=1)[:, None]), new_p


class SceneGraphNet(nn.Module):
    """Embeddings + graph convolutions + layout (box) head + triplet mask and superbox heads."""

    def __init__(self, num_objects: int, num_predicates: int, dim: int = 128, hidden: int = 512, layers: int = 5,
                 mask_size: int = 16) -> None:
        super().__init__()
        self.config = {"num_objects": num_objects, "num_predicates": num_predicates, "dim": dim, "hidden": hidden,
                       "layers": layers, "mask_size": mask_size}
        self.obj_embed = nn.Embedding(num_objects, dim)
        self.pred_embed = nn.Embedding(num_predicates, dim)
        self.convs = nn.ModuleList(TripleConv(dim, hidden) for _ in range(layers))
        self.box_head = nn.Sequential(_mlp([dim, hidden]), nn.Linear(hidden, 4))
        self.mask_size = mask_size
        self.mask_head = nn.Sequential(_mlp([3 * dim, hidden]), nn.Linear(hidden, 3 * mask_size * mask_size))
        self.superbox_head = nn.Sequential(_mlp([3 * dim, hidden]), nn.Linear(hidden, 4))

    def embed(self, graphs: Graphs) -> tuple[torch.Tensor, torch.Tensor]:
        """(object embeddings (N, dim), predicate embeddings (T, dim)) after the convolutions."""
        obj = self.obj_embed(graphs.objects)
        pred = self.pred_embed(graphs.triplets[:, 1])
        for conv in self.convs:
            obj, pred = conv(obj, pred, graphs.triplets)
        return obj, pred

    def triplet_embeddings(self, graphs: Graphs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(s, p, o) embeddings of every triplet, each (T, dim)."""
        obj, pred = self.embed(graphs)
        return obj[graphs.triplets[:, 0]], pred, obj[graphs.triplets[:, 2]]

    def forward(self, graphs: Graphs) -> dict[str, torch.Tensor]:
        """Predicted boxes (N, 4), triplet mask logits (T, 3, M, M) and superboxes (T, 4)."""
        obj, pred = self.embed(graphs)
        triplet = torch.cat([obj[graphs.triplets[:, 0]], pred, obj[graphs.triplets[:, 2]]], dim=1)
        m = self.mask_size
        return {"boxes": torch.sigmoid(self.box_head(obj)),
                "masks": self.mask_head(triplet).view(-1, 3, m, m),
                "superboxes": torch.sigmoid(self.superbox_head(triplet))}


def superboxes(boxes: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
    """The box enclosing subject and object of each triplet (T, 4)."""
    s, o = boxes[triplets[:, 0]], boxes[triplets[:, 2]]
    return torch.cat([torch.minimum(s[:, :2], o[:, :2]), torch.maximum(s[:, 2:], o[:, 2:])], dim=1)


def triplet_mask_targets(boxes: torch.Tensor, triplets: torch.Tensor, size: int) -> torch.Tensor:
    """(T, M, M) labels over each superbox: 0 background, 1 subject, 2 object; where the boxes
    overlap the smaller one wins (it is the one visible in front, and ``inside`` stays learnable)."""
    sup = superboxes(boxes, triplets)
    centres = (torch.arange(size, dtype=boxes.dtype) + 0.5) / size
    wh = (sup[:, 2:] - sup[:, :2]).clamp(min=1e-6)
    xs = sup[:, None, 0] + centres[None] * wh[:, None, 0]  # (T, M) cell centres in image coordinates
    ys = sup[:, None, 1] + centres[None] * wh[:, None, 1]

    def inside(box: torch.Tensor) -> torch.Tensor:
        in_x = (xs >= box[:, None, 0]) & (xs <= box[:, None, 2])
        in_y = (ys >= box[:, None, 1]) & (ys <= box[:, None, 3])
        return in_y[:, :, None] & in_x[:, None, :]

    s, o = boxes[triplets[:, 0]], boxes[triplets[:, 2]]
    in_s, in_o = inside(s), inside(o)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    subject_first = (area(s) <= area(o))[:, None, None]
    labels = torch.zeros(in_s.shape, dtype=torch.long)
    labels[in_o] = 2
    labels[in_s & (subject_first | ~in_o)] = 1
    return labels


@dataclass
class LayoutLosses:
    """The training objective: sg2im's box loss, plus the two triplet losses when ``triplet``
    (the paper's 'Triplet' models; 'NoTriplet' models train on the box loss alone)."""

    triplet: bool = True
    mask_weight: float = 1.0
    superbox_weight: float = 1.0

    def __call__(self, net: SceneGraphNet, graphs: Graphs) -> dict[str, torch.Tensor]:
        assert graphs.boxes is not None  # training graphs carry their boxes
        out = net(graphs)
        losses = {"box": F.mse_loss(out["boxes"], graphs.boxes)}
        if self.triplet and len(graphs.triplets):
            target = triplet_mask_targets(graphs.boxes, graphs.triplets, net.mask_size)
            losses["triplet_mask"] = self.mask_weight * F.cross_entropy(out["masks"], target)
            losses["triplet_superbox"] = self.superbox_weight * F.mse_loss(
                out["superboxes"], superboxes(graphs.boxes, graphs.triplets))
        losses["total"] = sum(losses.values(), torch.zeros(()))
        return losses
