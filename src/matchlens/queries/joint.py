"""An indexable joint text ↔ image embedding (VSE++) over an index's own global descriptors.

Image side: ``e(x) = s · P (x − m)``, a learned linear projection ``P = √D · W / ‖W‖_F`` (D × d,
its Frobenius norm fixed so that the hinge cannot be satisfied by growing it) of the stored
searchable vector ``x``, centred on the training images' mean ``m`` and scaled by a fixed ``s``
(so that ``|e| ≈ 1`` at the start). Text side: ``t = norm(MLP(enc(text)))`` from a text
encoder of :mod:`matchlens.queries.textenc`. Score ``S(t, x) = ⟨t, e(x)⟩``.

Because the image side is linear, ``S(t, x) = ⟨s Pᵀ t, x⟩ − s⟨t, P m⟩``: the text query is the
vector ``q = s Pᵀ t`` of the index's own descriptor space, and the second term is a constant of the
query that does not change its ranking. So ``matchlens search IDX --text "..."`` searches the
stored vectors with the index's own backend (exact, IVF-PQ, HNSW) and nothing is projected or
cached per generation: the model stays valid for every generation of the same pipeline, and is
refused for another pipeline.

Loss: the bidirectional hinge with hardest negatives of VSE++ (Faghri et al.), as CAMP eq. 12
and CAAN eq. 19 write it; :func:`hinge_loss` with ``hardest=False`` sums over all negatives.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from matchlens.errors import ConfigError
from matchlens.queries.text_data import Captions
from matchlens.queries.text_model import TextEncoderHandle, TextModel, positives_mask

__all__ = ["JointEmbedding", "hinge_loss", "train_joint"]

ProgressFactory = Callable[[int, str], Callable[[int], None]]


class JointEmbedding(nn.Module):
    """Text head (MLP → D, L2) and the linear image side ``s · P (x − m)``."""

    def __init__(self, text_dim: int, image_dim: int, dim: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.config = {"text_dim": text_dim, "image_dim": image_dim, "dim": dim, "hidden": hidden}
        self.text_head = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.image_weight = nn.Parameter(torch.randn(dim, image_dim) / math.sqrt(image_dim))
        self.mean: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("mean", torch.zeros(image_dim))
        self.register_buffer("scale", torch.ones(()))

    def fit_centre(self, vectors: torch.Tensor) -> None:
        """Set ``m`` and ``s`` from the training images' vectors (s = 1 / mean distance to m)."""
        self.mean.copy_(vectors.mean(0))
        self.scale.copy_(1.0 / (vectors - self.mean).norm(dim=1).mean().clamp_min(1e-6))

    def projection(self) -> torch.Tensor:
        """``P`` (D × d): the weight with its Frobenius norm fixed to √D."""
        return self.image_weight * (math.sqrt(self.image_weight.shape[0]) / self.image_weight.norm())

    def embed_text(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) unit text embeddings of encoder features (B, text_dim)."""
        return F.normalize(self.text_head(features), dim=-1)

    def embed_image(self, vectors: torch.Tensor) -> torch.Tensor:
        """(N, D) image embeddings of stored vectors (N, image_dim)."""
        return self.scale * (vectors - self.mean) @ self.projection().T

    def to_index_space(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, image_dim): ``s Pᵀ t``, the query vector searched against the stored vectors."""
        return self.scale * text_embeddings @ self.projection()


def hinge_loss(scores: torch.Tensor, positive: torch.Tensor, margin: float = 0.2, hardest: bool = True) -> torch.Tensor:
    """Bidirectional hinge over a (texts × images) score matrix whose diagonal holds the pairs.

    ``positive`` marks every other matching pair (same caption or same image), never a negative.
    ``hardest``: the hardest negative per text and per image (VSE++); else the sum over negatives."""
    diagonal = scores.diagonal()
    blocked = positive.bool() | torch.eye(*scores.shape, dtype=torch.bool)  # a pair is never its own negative
    cost_img = (margin + scores - diagonal[:, None]).clamp_min(0).masked_fill(blocked, 0)  # text → images
    cost_txt = (margin + scores - diagonal[None, :]).clamp_min(0).masked_fill(blocked, 0)  # image → texts
    if hardest:
        return cost_img.max(1).values.mean() + cost_txt.max(0).values.mean()
    return (cost_img.sum(1) + cost_txt.sum(0)).mean()


def train_joint(index: Any, captions: Captions, encoder: str = "bigru", epochs: int = 20, batch: int = 64,
                lr: float = 2e-3, dim: int = 128, margin: float = 0.2, hardest: bool = True, seed: int = 0,
                text_dim: int = 256,
                progress: ProgressFactory | None = None) -> TextModel:
    """Train the joint embedding on ``captions`` of ``index`` images; returns the text model
    (save it with :meth:`TextModel.save`). ``encoder``: a text encoder name of
    :mod:`matchlens.queries.textenc`, learned with the head."""
    if len(captions) < 2:
        raise ConfigError("train-text needs at least 2 captioned images")
    torch.manual_seed(seed)
    start = time.perf_counter()
    handle = TextEncoderHandle.create(encoder, captions.texts, dim=text_dim)
    vectors = torch.from_numpy(np.array(index.vectors(), dtype=np.float32))  # a writable copy of the memory map
    model = JointEmbedding(handle.dim, vectors.shape[1], dim=dim)
    model.fit_centre(vectors[np.unique(captions.rows)])
    params = list(model.parameters()) + handle.parameters()
    optimiser = torch.optim.Adam(params, lr=lr)
    steps = epochs * math.ceil(len(captions) / batch)
    advance = progress(steps, "train joint") if progress else None
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(captions), generator=generator)
        for first in range(0, len(order), batch):
            chunk = order[first:first + batch].numpy()
            if len(chunk) < 2:
                continue
            texts = [captions.texts[i] for i in chunk]
            feats = handle.encode(texts, train=True)
            scores = model.embed_text(feats) @ model.embed_image(vectors[captions.rows[chunk]]).T
            loss = hinge_loss(scores, positives_mask(texts, captions.rows[chunk]), margin, hardest)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if advance:
                advance(1)
    model.eval()
    text_model = TextModel.for_index(index, handle, model)
    text_model.facts["joint"] = {"epochs": epochs, "captions": len(captions), "hardest": hardest,
                                 "train_seconds": round(time.perf_counter() - start, 1)}
    return text_model


def ranked_rows(scores: np.ndarray, rows: Sequence[int] | None = None) -> np.ndarray:
    """Rows (of ``rows`` when given) by decreasing score, ties by position."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order if rows is None else np.asarray(rows)[order]
