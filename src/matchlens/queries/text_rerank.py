"""What CAMP and CAAN share: the region and word streams, in-batch training, and the re-ranker
step that re-scores the joint embedding's shortlist of a text query.

A cross-modal model scores every (text, image) pair of two batches at once:
``model(regions (Ni, R, C), region_mask, words (Nt, L, Dw), word_mask) → (Nt, Ni)``. Regions are
:class:`~matchlens.queries.text_data.RegionFeatures` of the indexed images (R-MAC grid or given
boxes, ROI-pooled on the index's backbone map); words are the token features of the text model's
encoder, read by a bi-GRU (CAAN eq. 2-4: the mean of both directions).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from matchlens.components import non_negative_float, positive_int
from matchlens.errors import ConfigError
from matchlens.queries.text_data import Captions, RegionFeatures
from matchlens.queries.text_model import TextModel, positives_mask
from matchlens.rerank import QueryInput, Reranker, RerankContext, Shortlist

__all__ = ["CrossModalReranker", "CrossModel", "TextQuery", "fused", "masked_softmax", "rescore", "train_cross"]

ProgressFactory = Callable[[int, str], Callable[[int], None]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def masked_softmax(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over ``dim`` where ``mask`` (broadcastable, 1 = real) is 0 → weight 0."""
    return torch.softmax(x.masked_fill(mask == 0, -1e4), dim=dim)


class CrossModel(nn.Module):
    """Region projection and bi-GRU word stream; subclasses score the pairs."""

    def __init__(self, region_dim: int, word_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.config: dict[str, Any] = {"region_dim": region_dim, "word_dim": word_dim, "hidden": hidden}
        self.hidden = hidden
        # L2-normalised 1280-D regions have entries ~0.03: a LayerNorm gives the projection unit-scale inputs
        self.region_in = nn.Sequential(nn.LayerNorm(region_dim), nn.Linear(region_dim, hidden))
        self.word_gru = nn.GRU(word_dim, hidden, batch_first=True, bidirectional=True)

    def streams(self, regions: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(V (Ni, R, h), U (Nt, L, h)): projected regions and the mean of both GRU directions."""
        lengths = word_mask.sum(1).clamp_min(1).long().cpu()
        packed = nn.utils.rnn.pack_padded_sequence(words, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.word_gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=words.shape[1])
        words_h = (out[..., : self.hidden] + out[..., self.hidden:]) / 2
        return self.region_in(regions), words_h

    def match(self, regions: torch.Tensor, region_mask: torch.Tensor, words: torch.Tensor,
              word_mask: torch.Tensor) -> torch.Tensor:
        """(Nt, Ni) scores of every text with every image (higher: a better match)."""
        raise NotImplementedError


@dataclass
class TextQuery:
    """A text query as the pipeline carries it to re-rankers (in ``QueryInput.image``)."""

    text: str
    model: TextModel
    regions: RegionFeatures
    words: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def word_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, L, Dw), (1, L): the query's token features (computed once)."""
        if self.words is None:
            self.words = self.model.encoder.encode_tokens([self.text])
        return self.words


def fused(cross: np.ndarray, joint: np.ndarray, weight: float) -> np.ndarray:
    """The cross-modal scores of a shortlist, plus ``weight`` × the joint scores, both
    standardised over the shortlist (``weight`` 0: the cross-modal score alone, as the papers)."""
    if weight == 0 or len(cross) < 2:
        return cross
    def z(x: np.ndarray) -> np.ndarray:
        return (x - x.mean()) / (x.std() + 1e-6)
    return (z(cross) + weight * z(joint)).astype(np.float32)


class CrossModalReranker(Reranker):
    """Re-score the first ``k`` of a text query's shortlist with a trained cross-modal model
    (the text model's ``name``), by its matching score (``joint`` > 0: plus that weight × the
    joint embedding's score, both standardised over the ``k``); the rest follows below."""

    defaults: ClassVar[dict[str, Any]] = {"k": 100, "joint": 0.0}
    needs_image: ClassVar[bool] = True  # the text query travels in QueryInput.image

    def validate(self) -> None:
        self.check("k", positive_int)
        self.check("joint", non_negative_float)

    def rerank(self, query: QueryInput, shortlist: Shortlist, ctx: RerankContext) -> Shortlist:
        text = query.image
        if not isinstance(text, TextQuery):
            raise ConfigError(f"reranker '{self.name}' re-ranks text queries: use matchlens search IDX --text \"...\"")
        head = shortlist.rows[: self.config["k"]]
        if len(head) == 0:
            return shortlist
        model = text.model.reranker(self.name)
        words, word_mask = text.word_features()
        regions, region_mask = text.regions.batch(head)
        with torch.no_grad():
            scores = model.match(regions, region_mask, words, word_mask)[0].numpy().astype(np.float32)
        scores = fused(scores, shortlist.scores[: len(head)], float(self.config["joint"]))
        order = np.lexsort((np.arange(len(head)), -scores))
        tail_rows = shortlist.rows[len(head):]
        tail_scores = np.full(len(tail_rows), scores.min() - 1.0, np.float32) - np.arange(len(tail_rows)) * 1e-6
        return Shortlist(np.concatenate([head[order], tail_rows]), np.concatenate([scores[order], tail_scores]))


def train_cross(model: CrossModel, loss_fn: LossFn, text_model: TextModel, regions: RegionFeatures,
                captions: Captions, epochs: int = 10, batch: int = 32, lr: float = 1e-3, seed: int = 0,
                progress: ProgressFactory | None = None, hard_batches: bool = True) -> float:
    """Train ``model`` on in-batch pairs of ``captions`` (texts × images, diagonal positives);
    returns the training seconds. Token and region features are computed once.

    ``hard_batches``: half of each batch are the captions of the images the joint embedding ranks
    nearest to a random seed caption — the confusions a re-ranker of its shortlist must resolve —
    so the in-batch hardest negatives are hard; the other half is random."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    words, word_mask = _all_tokens(text_model, captions.texts)
    rows = np.unique(captions.rows)
    regions.warm(rows, progress)
    position = {int(r): i for i, r in enumerate(rows)}
    region_feats, region_mask = regions.batch(rows)
    neighbours = _joint_neighbours(text_model, captions, regions.index.vectors(), batch) if hard_batches else None
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    advance = progress(epochs * math.ceil(len(captions) / batch), f"train {type(model).__name__}") if progress else None
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        for chunk in _batches(len(captions), batch, neighbours, rng):
            at = torch.as_tensor([position[int(r)] for r in captions.rows[chunk]])
            width = int(word_mask[chunk].sum(1).max())
            scores = model.match(region_feats[at], region_mask[at], words[chunk, :width], word_mask[chunk, :width])
            loss = loss_fn(scores, positives_mask([captions.texts[i] for i in chunk], captions.rows[chunk]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if advance:
                advance(1)
    model.eval()
    return time.perf_counter() - start


def _joint_neighbours(text_model: TextModel, captions: Captions, vectors: np.ndarray, count: int) -> np.ndarray:
    """(N, count): for each caption, the captions of the images the joint embedding ranks first."""
    images = text_model.image_embeddings(np.asarray(vectors)[captions.rows])
    texts = torch.cat([text_model.text_embeddings(captions.texts[i:i + 256]) for i in range(0, len(captions), 256)])
    scores = (texts @ images.T).numpy()
    np.fill_diagonal(scores, -np.inf)  # the caption's own image is its positive, not a neighbour
    return np.argsort(-scores, axis=1)[:, :count]


def _batches(n: int, batch: int, neighbours: np.ndarray | None, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of caption batches: random, or half joint neighbours of a seed and half random."""
    order = rng.permutation(n)
    if neighbours is None:
        return [c for c in np.array_split(order, max(1, math.ceil(n / batch))) if len(c) >= 2]
    out = []
    for seed_caption in order[: max(1, math.ceil(n / batch))]:
        near = neighbours[seed_caption, : batch // 2 - 1]
        rest = rng.choice(n, size=min(batch, n), replace=False)
        chunk = np.array(list(dict.fromkeys([int(seed_caption), *near.tolist(), *rest.tolist()]))[:batch])
        out.append(chunk)
    return out


def _all_tokens(text_model: TextModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token features of every text, padded to one width."""
    parts = [text_model.encoder.encode_tokens(texts[i:i + 256]) for i in range(0, len(texts), 256)]
    width = max(p[0].shape[1] for p in parts)
    feats = torch.cat([nn.functional.pad(f, (0, 0, 0, width - f.shape[1])) for f, _ in parts])
    mask = torch.cat([nn.functional.pad(m, (0, width - m.shape[1])) for _, m in parts])
    return feats, mask


def rescore(model: CrossModel, text_model: TextModel, regions: RegionFeatures, texts: list[str],
            rows: np.ndarray) -> np.ndarray:
    """(len(texts), len(rows)) matching scores of every text with every image row (a shortlist)."""
    words, word_mask = _all_tokens(text_model, texts)
    feats, mask = regions.batch(rows)
    with torch.no_grad():
        return model.match(feats, mask, words, word_mask).numpy()
