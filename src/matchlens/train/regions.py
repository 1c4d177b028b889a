"""Per-region fine-tuning (PS-Net eq. 2–3): the tuple loss summed over a layout's regions.

``matchlens train ... --regions garment5`` trains the same network as plain training (backbone +
GeM, saved in the same checkpoint format, so an index built with ``--weights`` and its regional
kind both use it), but each tuple's loss is

    L_tra = Σ_r loss(f_r(I), f_r(I⁺), f_r(I⁻₁..ₙ))

with f_r the GeM-pooled, L2-normalised descriptor of region r's cells of the backbone map — the
cells :func:`matchlens.regional.descriptors.region_cells` gives the regional kind, so training and
indexing pool the same cells. With the triplet loss this is eq. 2 of the paper (per-region hinge,
summed). Mining and validation still use the whole-image descriptor (the regions' sum would rank
like uniform λ; the whole image is what the index's global search uses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from matchlens.errors import ConfigError
from matchlens.regional.descriptors import region_cells
from matchlens.regional.layouts import REGION_LAYOUTS, Box, KeypointsLayout, make_layout
from matchlens.train.losses import tuple_loss
from matchlens.train.model import RetrievalNet

__all__ = ["layout_boxes", "region_descriptors", "regional_tuple_loss"]


def layout_boxes(layout: str) -> list[Box]:
    """The relative boxes of a fixed layout (garment5, grid2x2, grid3x3); keypoint layouts need
    per-image landmarks, which tuples do not carry, so they are refused in one line."""
    if issubclass(REGION_LAYOUTS.get(layout), KeypointsLayout):
        fixed = [n for n in REGION_LAYOUTS.names() if not issubclass(REGION_LAYOUTS.get(n), KeypointsLayout)]
        raise ConfigError(f"--regions {layout}: per-region training needs a fixed layout ({', '.join(fixed)})")
    return list(make_layout(layout).boxes())


def region_descriptors(model: RetrievalNet, images: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
    """(B, R, C): each box's cells of the backbone map, pooled by the model's GeM, L2-normalised."""
    images = images.to(model.mean.device)
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    fmap = model.backbone((x - model.mean) / model.std)
    height, width = fmap.shape[-2:]
    pooled = []
    for box in boxes:
        r0, c0, r1, c1 = region_cells(box, height, width)
        pooled.append(model.pool(fmap[:, :, r0:r1, c0:c1]))
    return F.normalize(torch.stack(pooled, dim=1), dim=2)


def regional_tuple_loss(name: str, descriptors: torch.Tensor, margin: float | None = None) -> torch.Tensor:
    """Σ_r tuple_loss over regions; ``descriptors`` (n, R, C) ordered query, positive, negatives."""
    return sum((tuple_loss(name, descriptors[:, r], margin) for r in range(descriptors.shape[1])),
               torch.zeros((), device=descriptors.device))
