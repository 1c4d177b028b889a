"""Fine-tuning for retrieval through the frozen quality network (the paper's sections 4 and 5).

* :func:`finetune_qa` — an enhancer (DnCNN denoiser or the SR network) pre-trained with the MSE is
  fine-tuned with ``L = (1 − AP_pred) + λ·MSE`` (eq. 3): ``AP_pred`` is the frozen quality
  network's prediction for the enhanced patch, ``MSE`` its distance to the clean patch, so the
  enhancer learns what helps retrieval without drifting far from the photo.
* :class:`FeatureAdapter` / :func:`train_feature_adaptation` — feature adaptation (eq. 4): instead
  of the pixels, the retrieval network's last feature map is adapted for (enhanced) degraded
  queries by a residual 1×1 convolution trained with ``L = (1 − AP_pred) + λ·M``, where
  ``AP_pred`` is the quality head applied to the adapted, pooled feature (the feature QA network)
  and ``M`` the mean squared change of the feature map. The backbone stays frozen (the paper
  fine-tunes the whole extractor with a very low learning rate; on a CPU only this last-layer
  adaptation is affordable — stated wherever its numbers are shown). The database keeps its
  descriptors; only queries are described through the adapter (:func:`adapted_vector`).

λ balances the two terms; the paper picks it on validation data. The defaults here make the two
terms comparable in size for 8-bit photos in [0, 1] (MSE ≈ 10⁻³) and Lite0 feature maps.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from matchlens.errors import ConfigError
from matchlens.extract import Extractor, l2_normalize
from matchlens.quality.net import BACKBONE, QualityNet, minibatch_epochs, to_tensor

__all__ = ["FeatureAdapter", "adapted_vector", "finetune_qa", "train_feature_adaptation"]

LAMBDA_MSE = 100.0
LAMBDA_M = 10.0


def finetune_qa(enhancer: nn.Module, net: QualityNet, degraded: np.ndarray, clean: np.ndarray, lam: float = LAMBDA_MSE,
                epochs: int = 1, lr: float = 1e-4, batch: int = 8, seed: int = 0,
                advance: Callable[[int], None] | None = None) -> list[float]:
    """Fine-tune ``enhancer`` on (degraded, clean) uint8 patch pairs at the quality net's patch size
    with eq. 3; ``net`` stays frozen. Returns the mean loss of each epoch."""
    torch.manual_seed(seed)
    net.eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    x, y = to_tensor(degraded), to_tensor(clean)
    optimiser = torch.optim.Adam(enhancer.parameters(), lr=lr)
    enhancer.train()

    def loss_of(chosen: torch.Tensor) -> torch.Tensor:  # eq. 3: (1 − AP_pred) + λ·MSE
        out = enhancer(x[chosen]).clamp(0, 1)
        return (1 - net(out)).mean() + lam * nn.functional.mse_loss(out, y[chosen])

    losses = minibatch_epochs(optimiser, len(x), loss_of, epochs, batch, seed, advance)
    enhancer.eval()
    return losses


class FeatureAdapter(nn.Module):
    """Residual 1×1 convolution on the backbone's feature map, starting as the identity."""

    def __init__(self, channels: int = 1280) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        nn.init.zeros_(self.conv.weight)  # the identity until trained

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap + self.conv(fmap)

    def config(self) -> dict[str, Any]:
        return {"channels": int(self.conv.in_channels)}


@torch.no_grad()
def _feature_maps(net: QualityNet, patches: np.ndarray, batch: int = 32) -> torch.Tensor:
    """The frozen backbone's feature maps of uint8 patches (computed once)."""
    maps = [net.backbone((to_tensor(patches[i:i + batch]) - net.mean) / net.std) for i in range(0, len(patches), batch)]
    return torch.cat(maps)


def train_feature_adaptation(adapter: FeatureAdapter, net: QualityNet, patches: np.ndarray, lam: float = LAMBDA_M,
                             epochs: int = 20, lr: float = 1e-3, batch: int = 32, seed: int = 0,
                             advance: Callable[[int], None] | None = None) -> list[float]:
    """Fit the adapter with eq. 4 on the (enhanced) degraded uint8 patches; the quality head acts as
    the feature QA network. Returns the mean loss of each epoch."""
    torch.manual_seed(seed)
    net.eval()
    maps = _feature_maps(net, patches)
    optimiser = torch.optim.Adam(adapter.parameters(), lr=lr)

    def loss_of(chosen: torch.Tensor) -> torch.Tensor:  # eq. 4: (1 − AP_pred) + λ·M on the feature map
        fmap = maps[chosen]
        adapted = adapter(fmap)
        return (1 - net.head(adapted.mean(dim=(2, 3)))).mean() + lam * nn.functional.mse_loss(adapted, fmap)

    losses = minibatch_epochs(optimiser, len(maps), loss_of, epochs, batch, seed, advance)
    return losses


@torch.no_grad()
def adapted_vector(extractor: Extractor, adapter: FeatureAdapter, image: Image.Image,
                   whiten: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The searchable vector of ``image`` described through the adapter: the index's scales and
    pooling on the adapted feature maps, summed, L2-normalised, whitened like the index."""
    if extractor.spec.backbone != BACKBONE:
        raise ConfigError(f"feature adaptation adapts the quality network's backbone ({BACKBONE}); "
                          f"this index uses {extractor.spec.backbone}")
    total = np.zeros(extractor.dim, np.float64)
    for scale in extractor.spec.scales:
        fmap = adapter(extractor.feature_map(image, scale))
        total += l2_normalize(extractor.pooling(fmap).float().numpy())[0]
    return whiten(l2_normalize(total)[None, :].astype(np.float32))[0]
