"""Self-supervised options (P4, LITERATURE.md "Fine-tuning"): two random views of each image.

* SimCLR (``--selfsup simclr``, the default): the two views of an image are positives of each
  other, every other view of the batch a negative (NT-Xent, :func:`matchlens.train.losses.nt_xent_loss`);
* MoCo v2 (``--selfsup moco``, He et al. / Chen et al. 2020): a query encoder (the trained network
  plus an MLP head) against a *momentum* key encoder (an exponential moving average of it,
  ``θ_k ← m·θ_k + (1-m)·θ_q``) and a FIFO *queue* of the last keys as negatives, with the InfoNCE
  loss ``-log exp(q·k⁺/τ) / (exp(q·k⁺/τ) + Σ_queue exp(q·k⁻/τ))``. Defaults as MoCo v2: τ = 0.2,
  m = 0.999, a 2-layer MLP head (hidden = descriptor width, 128-d output); the queue is
  shorter than MoCo's 65536 because a retrieval collection to fine-tune on holds a few thousand
  images, and a key older than an epoch comes from a stale encoder.

The head only shapes the loss: exported weights (``best.pt``, ``--weights``) hold the query
encoder (backbone + GeM) without it, as MoCo's released weights drop ``fc``; ``last.pt`` also
keeps MoCo's heads, key encoder and queue (:meth:`MoCo.resume_state`) so a resumed run continues
exactly. SimCLR's step has no head (NT-Xent on the descriptors), so it has nothing more to keep.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from matchlens.errors import ConfigError
from matchlens.registry import Registry

__all__ = ["METHODS", "MoCo", "info_nce_loss", "mlp_head", "momentum_update", "two_views"]

# The self-supervised methods ``--selfsup`` accepts (the trainer's loss for each: SimCLR is the
# trainer's own NT-Xent step, MoCo runs :class:`MoCo`).
METHODS: Registry[str] = Registry("self-supervised method")
METHODS.register("simclr")("SimCLR: NT-Xent between the two views of each image of a batch")
METHODS.register("moco")("MoCo v2: momentum key encoder, queue of negatives, InfoNCE, MLP head")

MOCO_TEMPERATURE = 0.2
MOCO_MOMENTUM = 0.999
MOCO_QUEUE = 4096
MOCO_DIM = 128


def _augment(size: int) -> v2.Compose:
    # SimCLR's recipe, milder crops: instance retrieval needs the object to stay in view.
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ])


def two_views(images: Sequence[Image.Image], size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches (B, 3, size, size) uint8: independent random views of each image."""
    augment = _augment(size)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    torch.manual_seed(seed)  # torchvision's transforms draw from the global generator
    tensors = [torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1) for img in images]
    first = torch.stack([augment(t) for t in tensors])
    second = torch.stack([augment(t) for t in tensors])
    return first, second


def mlp_head(width: int, out: int = MOCO_DIM) -> nn.Sequential:
    """MoCo v2's projection head: Linear(width, width) → ReLU → Linear(width, out)."""
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, out))


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, momentum: float) -> None:
    """``θ_k ← m·θ_k + (1 - m)·θ_q`` for every parameter (buffers, e.g. BatchNorm statistics, are
    the key encoder's own, as in MoCo)."""
    for k, q in zip(key.parameters(), query.parameters()):
        k.mul_(momentum).add_(q.detach(), alpha=1.0 - momentum)


def info_nce_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: ``q``, ``k`` (B, d) L2-normalised queries and their positive keys, ``queue``
    (K, d) negatives; cross-entropy with the positive as class 0 of [q·k, q·queue] / τ."""
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.T
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


class MoCo(nn.Module):
    """MoCo v2 around a query encoder ``encoder`` (images → L2 descriptors, e.g. RetrievalNet).

    ``head_q`` is trained with the encoder; ``encoder_k``/``head_k`` follow by momentum; the queue
    holds the last ``queue_size`` keys (filled with random unit vectors at first, as MoCo does).
    """

    queue: torch.Tensor  # buffers, registered in __init__
    pointer: torch.Tensor

    def __init__(self, encoder: nn.Module, width: int, queue_size: int = MOCO_QUEUE, dim: int = MOCO_DIM,
                 momentum: float = MOCO_MOMENTUM, temperature: float = MOCO_TEMPERATURE, seed: int = 0) -> None:
        super().__init__()
        if queue_size < 1 or not 0.0 <= momentum < 1.0 or temperature <= 0:
            raise ConfigError(f"MoCo needs queue >= 1, 0 <= momentum < 1 and temperature > 0; got "
                              f"{queue_size}, {momentum}, {temperature}")
        self.encoder_q, self.momentum, self.temperature = encoder, momentum, temperature
        self.head_q = mlp_head(width, dim)
        self.encoder_k = copy.deepcopy(encoder)
        self.head_k = copy.deepcopy(self.head_q)
        for p in [*self.encoder_k.parameters(), *self.head_k.parameters()]:
            p.requires_grad_(False)  # keys are never back-propagated
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim, generator=gen), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def step_loss(self, view_q: torch.Tensor, view_k: torch.Tensor) -> torch.Tensor:
        """One MoCo step: update the key encoder by momentum, embed the keys, compute InfoNCE
        against the queue as it was, then enqueue the keys (the caller back-propagates)."""
        momentum_update(self.encoder_k, self.encoder_q, self.momentum)
        momentum_update(self.head_k, self.head_q, self.momentum)
        q = F.normalize(self.head_q(self.encoder_q(view_q)), dim=1)
        with torch.no_grad():
            k = F.normalize(self.head_k(self.encoder_k(view_k)), dim=1)
        loss = info_nce_loss(q, k, self.queue.clone().detach(), self.temperature)
        self.enqueue(k)
        return loss

    def resume_state(self) -> dict[str, Any]:
        """Everything of MoCo but the query encoder (the trained network, which the checkpoint
        holds already) that the next step's loss depends on: both heads, the key encoder
        (parameters and its own BatchNorm statistics), the queue and its pointer."""
        return {"head_q": self.head_q.state_dict(), "head_k": self.head_k.state_dict(),
                "encoder_k": self.encoder_k.state_dict(), "queue": self.queue, "pointer": self.pointer}

    @torch.no_grad()
    def load_resume_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`resume_state` returned; ConfigError when the queue's size differs
        (``--queue`` changed since the checkpoint)."""
        queue = state["queue"]
        if tuple(queue.shape) != tuple(self.queue.shape):
            raise ConfigError(f"the checkpoint's MoCo queue holds {queue.shape[0]} keys, not {self.queue.shape[0]}; "
                              f"resume with --queue {queue.shape[0]}, or --restart to start over")
        self.head_q.load_state_dict(state["head_q"])
        self.head_k.load_state_dict(state["head_k"])
        self.encoder_k.load_state_dict(state["encoder_k"])
        self.queue.copy_(queue)
        self.pointer.copy_(state["pointer"])

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries of the queue with ``keys`` (FIFO, wrapping around)."""
        size = self.queue.shape[0]
        keys = keys.detach()[-size:]
        rows = (int(self.pointer) + torch.arange(len(keys), device=self.queue.device)) % size
        self.queue[rows] = keys.to(self.queue.dtype)
        self.pointer.fill_((int(self.pointer) + len(keys)) % size)
