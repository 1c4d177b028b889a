"""The training methods of ``matchlens train-recognizer --method``: a registry (:data:`METHODS`).

Single-branch baselines of BBN's Table 1 (P1k):

* ``ce`` - plain cross-entropy, examples drawn uniformly (the data's long-tailed distribution);
* ``rs`` - class-balanced re-sampling: each class equally likely in every batch;
* ``rw`` - re-weighting: uniform draws, the loss of class ``i`` weighted by ``1/N_i`` (scaled so
  that the average example weight is 1);

and ``bbn`` (:mod:`matchlens.recognize.bbn`): two branches with a uniform and a reversed sampler.
A method draws each step's example indices (one array per branch) and turns the branches'
outputs into the loss; the trainer (:mod:`matchlens.recognize.fit`) owns everything else.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from matchlens.recognize.network import RecognitionNet
from matchlens.registry import Registry
from matchlens.train.sampling import draw

__all__ = ["METHODS", "Method", "ExtraLoss"]

# A second loss on the branch's pooled feature (SICoT's mixed stream): (feature, classifier) → loss.
ExtraLoss = Callable[[torch.Tensor, nn.Module], torch.Tensor]


class Method:
    """Single-branch training: one sampler, cross-entropy with optional class weights."""

    name: str  # set by the registry
    branches = 1
    sampler = "uniform"

    def __init__(self, counts: np.ndarray) -> None:
        self.counts = np.asarray(counts, np.float64)
        self.weight: torch.Tensor | None = None

    def draw(self, labels: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
        """One step's example indices, one array per branch."""
        return [draw(labels, batch, self.sampler, rng)]

    def loss(self, net: RecognitionNet, maps: list[torch.Tensor], targets: list[torch.Tensor],
             progress: float, extra: ExtraLoss | None = None) -> torch.Tensor:
        """The step's loss; ``progress`` = epoch / epochs (T / T_max), unused by single branches."""
        feature = net.feature(maps[0])
        weight = self.weight.to(feature.device) if self.weight is not None else None
        loss = F.cross_entropy(net.classifiers[0](feature), targets[0], weight=weight)
        return loss + extra(feature, net.classifiers[0]) if extra is not None else loss


METHODS: Registry[type[Method]] = Registry("recognition method")


@METHODS.register("ce")
class CrossEntropy(Method):
    """Plain cross-entropy on uniformly drawn examples (the long-tailed baseline)."""


@METHODS.register("rs")
class ReSampling(Method):
    """Class-balanced re-sampling: every class equally likely in a batch."""

    sampler = "balanced"


@METHODS.register("rw")
class ReWeighting(Method):
    """Re-weighting: class i's loss weighted by 1/N_i (average example weight 1)."""

    def __init__(self, counts: np.ndarray) -> None:
        super().__init__(counts)
        inverse = 1.0 / self.counts
        # Scaled so Σ_i N_i·w_i = N: the loss keeps the size of plain CE and the same learning rate fits.
        inverse *= self.counts.sum() / (inverse * self.counts).sum()
        self.weight = torch.tensor(inverse, dtype=torch.float32)
