"""The recognition network: the backbone split into a shared trunk and its last stage, one or two
copies of the last stage (branches) and one linear classifier per branch.

For the embedded EfficientNet-Lite backbones the *last stage* is the final inverted-residual
stage plus the 1×1 head convolution (192 → 320 → 1280 channels); the trunk is everything before
it. On a CPU the trunk is frozen and its feature maps are computed once (``trunk_features``), so
training touches only the last stage(s) and the classifiers; with a GPU the whole network trains.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from matchlens.errors import ConfigError
from matchlens.io.images import crop_to_box, load_image
from matchlens.models import Backbone

__all__ = ["RecognitionNet", "image_batch", "split_backbone", "trunk_features"]


def split_backbone(backbone: Backbone) -> tuple[nn.Module, nn.Module, int]:
    """(trunk, last stage, feature width) of a backbone whose last stage can be cut out.

    Only timm EfficientNet-style bodies (``blocks`` + ``conv_head``) have one here: the embedded
    ``tf_efficientnet_lite0`` and its lite1/lite2 siblings."""
    model = getattr(backbone.body, "model", None)
    if model is None or not all(hasattr(model, n) for n in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        raise ConfigError(f"the recognizer needs an EfficientNet backbone (tf_efficientnet_lite0/1/2), "
                          f"not {backbone.name!r}")
    trunk = nn.Sequential(model.conv_stem, model.bn1, *list(model.blocks)[:-1])
    last = nn.Sequential(model.blocks[-1], model.conv_head, model.bn2)
    return trunk, last, int(model.conv_head.out_channels)


class RecognitionNet(nn.Module):
    """trunk → ``branches`` copies of the last stage → GAP → one classifier each.

    With two branches (BBN) the logits are ``α·W_cᵀf_c + (1−α)·W_rᵀf_r``; at test both branches see
    the same input and ``α = 0.5``."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, backbone: Backbone, n_classes: int, branches: int = 1) -> None:
        super().__init__()
        trunk, last, width = split_backbone(backbone)
        self.trunk = copy.deepcopy(trunk)  # its own copy: training the trunk never alters the caller's backbone
        # Each branch starts from the pretrained last stage; deep copies so they learn apart.
        self.branches = nn.ModuleList([copy.deepcopy(last) for _ in range(branches)])
        self.classifiers = nn.ModuleList([nn.Linear(width, n_classes) for _ in range(branches)])
        self.width = width
        self.n_classes = n_classes
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        """Trunk feature maps of uint8 (or [0, 1] float) RGB batches."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return self.trunk((x.to(self.mean.device) - self.mean) / self.std)

    def feature(self, maps: torch.Tensor, branch: int = 0) -> torch.Tensor:
        """Pooled feature ``f`` (B, width) of trunk maps through one branch."""
        return self.branches[branch](maps).mean(dim=(2, 3))

    def logits(self, maps: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
        """Test-time logits of trunk maps (both branches see them; α = 0.5 for two)."""
        if len(self.branches) == 1:
            return self.classifiers[0](self.feature(maps))
        return alpha * self.classifiers[0](self.feature(maps, 0)) + (1 - alpha) * self.classifiers[1](self.feature(maps, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities of an image batch."""
        return F.softmax(self.logits(self.stem(images)), dim=1)


def image_batch(sources: Sequence, size: int, boxes: Sequence | None = None) -> torch.Tensor:
    """uint8 (N, 3, size, size): each image (path, bytes, PIL or array) cropped to its box when
    given and resized to a square (classification input, as the ImageNet networks were trained)."""
    out = torch.empty(len(sources), 3, size, size, dtype=torch.uint8)
    for i, source in enumerate(sources):
        image = load_image(source, max_side=2 * size)
        box = boxes[i] if boxes is not None else None
        if box is not None:
            image = crop_to_box(image, box)
        image = image.resize((size, size), Image.Resampling.BICUBIC)
        out[i] = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


@torch.no_grad()
def trunk_features(net: RecognitionNet, images: torch.Tensor, batch: int = 32,
                   advance: Callable[[int], None] | None = None) -> torch.Tensor:
    """Frozen-trunk feature maps (N, C, h, w) of a uint8 image tensor, computed once."""
    net.trunk.eval()
    chunks = []
    for start in range(0, len(images), batch):
        chunks.append(net.stem(images[start:start + batch]).cpu())
        if advance:
            advance(min(batch, len(images) - start))
    return torch.cat(chunks)
