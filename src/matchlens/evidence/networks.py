"""Verifier networks on the 4D tensor, trained from scratch; each returns (logit, layer maps).

* ``resnet18`` (default): torchvision ``resnet18(weights=None)`` with its first convolution
  taking |Φ| channels, reading the tensor reshaped to (mn)×(mn) (rows: target patch i·n+j,
  columns: query patch k·n+l). P0 does not say how the 4 dimensions enter the CNN.
* ``conv4d``: a small stack of true 4D convolutions (3⁴ kernels, stride 1), so every layer keeps
  the m×n×m×n layout.

"Every layer" for HAR and Grad-CAM: the stem and each residual block (ResNet-18: 9 maps), or
each 4D convolution. The forward pass returns those maps (after HAR) for Grad-CAM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from matchlens.evidence.config import VerifierConfig
from matchlens.evidence.har import HAR


class ResNetVerifier(nn.Module):
    """ResNet-18 from scratch on the (mn)×(mn) pseudo-image with |Φ| channels."""

    def __init__(self, config: VerifierConfig) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None, num_classes=1)
        channels = len(config.metrics)
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.grid = (config.rows, config.cols)
        self.input_norm = nn.BatchNorm2d(channels)  # the metrics have different scales and signs
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.maxpool = net.maxpool
        self.blocks = nn.ModuleList([b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer])
        self.fc = net.fc
        n_maps = 1 + len(self.blocks)
        self.har = nn.ModuleList([HAR(self.grid) for _ in range(n_maps)]) if config.har else None

    def _regulate(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return self.har[index](x) if self.har is not None else x

    def forward(self, tensor: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, m, n = tensor.shape[:4]
        x = self.input_norm(tensor.reshape(b, c, m * n, m * n))
        maps = [self._regulate(self.stem(x), 0)]
        x = self.maxpool(maps[0])
        for i, block in enumerate(self.blocks, start=1):
            x = self._regulate(block(x), i)
            maps.append(x)
        logit = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)).squeeze(1)
        return logit, maps


class Conv4d(nn.Module):
    """4D convolution (kernel k⁴, stride 1, 'same' padding) as a sum of 3D convolutions over the
    first spatial axis (the decomposition NCNet uses)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3) -> None:
        super().__init__()
        self.kernel = kernel
        self.convs = nn.ModuleList([nn.Conv3d(c_in, c_out, kernel, padding=kernel // 2, bias=(i == 0))
                                    for i in range(kernel)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, m, n, p, q = x.shape
        pad = self.kernel // 2
        padded = F.pad(x, (0, 0, 0, 0, 0, 0, pad, pad))  # zero-pad the first spatial axis
        out: torch.Tensor | int = 0
        for offset, conv in enumerate(self.convs):
            # slice i+offset of the padded input feeds output slice i through kernel slice offset
            chunk = padded[:, :, offset:offset + m].permute(0, 2, 1, 3, 4, 5).reshape(b * m, c, n, p, q)
            out = out + conv(chunk)
        assert isinstance(out, torch.Tensor)  # kernel >= 1, so at least one slice was added
        return out.reshape(b, m, -1, n, p, q).permute(0, 2, 1, 3, 4, 5)


class Conv4dVerifier(nn.Module):
    """A small 4D-convolutional verifier: 4 × (Conv4d → BatchNorm → ReLU → HAR), average pool, linear."""

    def __init__(self, config: VerifierConfig, widths: tuple[int, ...] = (16, 32, 32, 32)) -> None:
        super().__init__()
        self.grid = (config.rows, config.cols)
        c_in = len(config.metrics)
        self.input_norm = nn.BatchNorm3d(c_in)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for width in widths:
            self.convs.append(Conv4d(c_in, width))
            self.norms.append(nn.BatchNorm3d(width))
            c_in = width
        self.har = nn.ModuleList([HAR(self.grid) for _ in widths]) if config.har else None
        self.fc = nn.Linear(c_in, 1)

    @staticmethod
    def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        b, c, m, n, p, q = x.shape
        return norm(x.reshape(b, c, m * n, p, q)).reshape(b, c, m, n, p, q)

    def forward(self, tensor: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self._norm(self.input_norm, tensor)
        maps = []
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(self._norm(norm, conv(x)))
            if self.har is not None:
                x = self.har[i](x)
            maps.append(x)
        logit = self.fc(x.mean(dim=(2, 3, 4, 5))).squeeze(1)
        return logit, maps


def build_network(config: VerifierConfig) -> nn.Module:
    """The verifier network named by ``config.arch``."""
    return ResNetVerifier(config) if config.arch == "resnet18" else Conv4dVerifier(config)
