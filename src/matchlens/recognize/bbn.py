"""BBN (P1k): Bilateral-Branch Network with cumulative learning.

Two branches share the trunk and each has its own copy of the last stage and its own classifier.
The *conventional* branch sees a uniform sampler (the data's long-tailed distribution), the
*re-balancing* branch BBN's reversed sampler ``P_i ∝ N_max/N_i``. The logits are
``z = α·W_cᵀf_c + (1 − α)·W_rᵀf_r`` and the loss ``α·CE(z, y_c) + (1 − α)·CE(z, y_r)``, with the
cumulative schedule ``α = 1 − (T/T_max)²`` (features first, then the classifier's balance); at
test both branches see the image and ``α = 0.5`` (:meth:`RecognitionNet.logits`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from matchlens.errors import ConfigError
from matchlens.recognize.heads import METHODS, ExtraLoss, Method
from matchlens.recognize.network import RecognitionNet
from matchlens.train.sampling import draw

__all__ = ["BBN", "cumulative_alpha"]


def cumulative_alpha(epoch: int | float, epochs: int | float) -> float:
    """BBN's adaptor α = 1 − (T/T_max)²: 1 at the start (conventional branch), → 0 at the end."""
    return 1.0 - (float(epoch) / float(epochs)) ** 2


@METHODS.register("bbn")
class BBN(Method):
    """Bilateral branches: uniform + reversed samplers, cumulative α = 1 − (T/T_max)²."""

    branches = 2
    samplers = ("uniform", "reversed")

    def draw(self, labels: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
        return [draw(labels, batch, sampler, rng) for sampler in self.samplers]

    def loss(self, net: RecognitionNet, maps: list[torch.Tensor], targets: list[torch.Tensor],
             progress: float, extra: ExtraLoss | None = None) -> torch.Tensor:
        if extra is not None:
            raise ConfigError("titles (SICoT) go with --method ce, rs or rw, not bbn")
        alpha = cumulative_alpha(progress, 1.0)
        logits = (alpha * net.classifiers[0](net.feature(maps[0], 0))
                  + (1 - alpha) * net.classifiers[1](net.feature(maps[1], 1)))
        return alpha * F.cross_entropy(logits, targets[0]) + (1 - alpha) * F.cross_entropy(logits, targets[1])
