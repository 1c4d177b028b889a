"""Evidence baselines computed from a pretrained backbone (for comparing maps, not for ranking).

* **CAM+CroW** (Jiménez et al. 2017; P0's baseline): class activation maps of the top ``n``
  ImageNet classes, ``CAM_c = ReLU(Σ_k w_{c,k} X_k)`` each max-normalised, summed — the spatial
  weighting CAM+CroW pools with. A per-image map: it ignores the other image of the pair.
* **Similarity heatmap** of a global descriptor: the cosine between the other image's pooled
  descriptor (mean of its L2-normalised cells) and every cell of this image's feature map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from matchlens.evidence.cam import upsample


class BackboneMaps:
    """Feature maps of a backbone with a classifier (the embedded EfficientNet-Lite0 by default)."""

    def __init__(self, name: str = "tf_efficientnet_lite0", side: int = 320) -> None:
        from matchlens.models import load_backbone

        self.backbone = load_backbone(name).eval()
        self.side = side
        self.mean = torch.tensor(self.backbone.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(self.backbone.std).view(1, 3, 1, 1)
        model = getattr(self.backbone.body, "model", None)
        classifier = getattr(model, "classifier", None) if model is not None else None
        self.classifier = classifier if isinstance(classifier, torch.nn.Linear) and self.backbone.has_classifier else None

    @torch.no_grad()
    def features(self, image: Image.Image) -> torch.Tensor:
        """``(C, h, w)`` feature map, the image resized to ``side`` on its longest side."""
        scale = self.side / max(image.size)
        size = (max(32, round(image.width * scale)), max(32, round(image.height * scale)))
        x = torch.from_numpy(np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), np.float32) / 255.0)
        x = (x.permute(2, 0, 1)[None] - self.mean) / self.std
        return self.backbone(x)[0]

    def cam_crow_map(self, image: Image.Image, top: int = 5) -> np.ndarray:
        """The CAM+CroW spatial weighting of ``image`` at its resolution, in [0, 1]."""
        if self.classifier is None:
            raise ValueError(f"backbone {self.backbone.name} has no classifier: no class activation maps")
        x = self.features(image).clamp(min=0)
        weight = self.classifier.weight.detach()
        logits = self.classifier(x.mean(dim=(1, 2)))
        classes = torch.topk(logits, top).indices
        cams = F.relu(torch.einsum("kc,chw->khw", weight[classes], x))
        cams = cams / cams.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
        return upsample(cams.sum(0).numpy(), image.size)

    def similarity_map(self, image: Image.Image, other: Image.Image) -> np.ndarray:
        """Cosine of ``other``'s global descriptor with each cell of ``image``, at its resolution."""
        cells = F.normalize(self.features(image), dim=0)
        other_cells = F.normalize(self.features(other), dim=0)
        descriptor = F.normalize(other_cells.mean(dim=(1, 2)), dim=0)
        return upsample(torch.einsum("c,chw->hw", descriptor, cells).clamp(min=0).numpy(), image.size)
