"""A trained composer as a user holds it: the model file, its index check and the modified search.

A :class:`ComposerModel` joins a text encoder (:mod:`matchlens.queries.textenc`) and a composer
(:mod:`matchlens.queries.composers`) trained for ONE index's descriptor space: the query is the
reference image's own searchable vector (extracted by the index's pipeline) composed with the
text, searched against the stored vectors through the one search pipeline
(:func:`modified_pipeline`). The file records that space (pipeline fingerprint, width, whitening
file hash); another index is refused in one line.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from matchlens.errors import ConfigError, IndexError_, WeightsError
from matchlens.fileio import atomic_path
from matchlens.index.vectors import VectorIndex
from matchlens.pipeline.encoder import QueryEncoder, timer
from matchlens.pipeline.search import SearchPipeline
from matchlens.queries.composers import Composer, make_composer
from matchlens.queries.textenc import TextEncoder, load_text_encoder, save_text_encoder

__all__ = ["FORMAT", "ComposerModel", "DescriptorSpace", "ModifiedQueryEncoder", "load_composer", "modified_pipeline"]

FORMAT = "matchlens-composer/1"


def _file_sha(path: Path | None) -> str | None:
    if path is None:
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class DescriptorSpace:
    """What makes two indexes' vectors comparable: pipeline fingerprint, width, fitted whitening."""

    fingerprint: str
    describe: str
    dim: int
    whitening: str | None

    @classmethod
    def of(cls, index: Any) -> "DescriptorSpace":
        """The space of an :class:`~matchlens.pipeline.Index` or a VectorIndex."""
        store: VectorIndex = getattr(index, "store", index)
        return cls(store.spec.fingerprint(), store.spec.describe(), int(store.dim), _file_sha(store.whitening_file()))

    def check(self, index: Any, model_path: str | os.PathLike | None = None) -> None:
        """Refuse an index whose vectors live in another space (one line naming both)."""
        theirs = DescriptorSpace.of(index)
        name = f"composer '{model_path}'" if model_path else "the composer"
        root = getattr(index, "root", "")
        if (theirs.fingerprint, theirs.dim) != (self.fingerprint, self.dim):
            raise IndexError_(f"{name} was trained for an index built with [{self.describe}] ({self.dim}-D) but index "
                              f"'{root}' uses [{theirs.describe}] ({theirs.dim}-D); train one for this index "
                              "(matchlens train-composer)")
        if theirs.whitening != self.whitening:
            raise IndexError_(f"{name} was trained for another fitting of [{self.describe}]'s whitening than index "
                              f"'{root}' holds; train one for this index (matchlens train-composer)")


@dataclass
class ComposerModel:
    """A text encoder and a composer for one descriptor space, with what training recorded."""

    text: TextEncoder
    composer: Composer
    space: DescriptorSpace
    info: dict[str, Any] = field(default_factory=dict)
    scale: float = 16.0  # the loss's similarity scale (learned; only training reads it)

    @property
    def name(self) -> str:
        """The composer's registry name (``tirg``, ``film``, ...)."""
        return self.composer.name

    def check_text(self, text: str) -> None:
        """One-line ConfigError for an empty text or one with no word seen in training."""
        self.text.check(text)

    @torch.no_grad()
    def compose(self, vectors: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """(B, D) unit float32 queries from the references' searchable vectors (B, D) and texts."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != self.space.dim:
            raise ConfigError(f"the composer takes {self.space.dim}-D vectors, got {vectors.shape[1]}-D")
        if len(texts) != len(vectors):
            raise ConfigError(f"{len(vectors)} vectors but {len(texts)} texts")
        for text in texts:
            self.check_text(text)
        self.text.eval()
        self.composer.eval()
        image = torch.from_numpy(vectors)
        text_vectors = self.text.encode(list(texts)) if self.composer.uses_text else \
            torch.zeros(len(vectors), self.composer.text_dim)
        return self.composer(image, text_vectors).numpy().astype(np.float32)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model file atomically; returns its path."""
        path = Path(path).expanduser()
        payload = {"format": FORMAT, "composer": {"name": self.composer.name, "params": self.composer.params(),
                                                  "state": _cpu(self.composer.state_dict())},
                   "text": save_text_encoder(self.text), "space": asdict(self.space), "info": self.info,
                   "scale": float(self.scale)}
        if path.parent and not path.parent.is_dir():
            raise ConfigError(f"cannot write '{path}': folder '{path.parent}' does not exist")
        with atomic_path(path, suffix=".tmp.pt") as tmp:
            torch.save(payload, tmp)
        return path


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


def load_composer(path: str | os.PathLike) -> ComposerModel:
    """Read a model file written by :meth:`ComposerModel.save` (one-line WeightsError if it is not one)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"composer model '{path}' does not exist (train one with matchlens train-composer)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a foreign or damaged file: pickle, zip and torch errors alike (their text is long)
        raise WeightsError(f"'{path}' is not a composer model ({FORMAT}: a PyTorch file written by "
                           "matchlens train-composer)") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(f"'{path}' is not a composer model ({FORMAT}); train one with matchlens train-composer")
    try:
        spec = payload["composer"]
        composer = make_composer(spec["name"], **spec["params"])
        composer.load_state_dict(spec["state"])
        text = load_text_encoder(payload["text"])
        space = DescriptorSpace(**payload["space"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise WeightsError(f"composer model '{path}' cannot be restored: {str(exc).splitlines()[0]}") from None
    return ComposerModel(text, composer.eval(), space, dict(payload.get("info") or {}),
                         float(payload.get("scale", 16.0)))


class ModifiedQueryEncoder(QueryEncoder):
    """The index's query encoder, then the composer: the searchable vector of the reference image
    composed with ``text`` (timed as ``compose``). Shares the base encoder's network and memo."""

    def __init__(self, base: QueryEncoder, model: ComposerModel, text: str) -> None:
        super().__init__(base.index)
        model.check_text(text)
        self.base, self.model, self.text = base, model, text

    @property
    def extractor(self) -> Any:
        return self.base.extractor

    @property
    def loaded(self) -> bool:
        return self.base.loaded

    def whiten(self, raw: np.ndarray) -> np.ndarray:
        return self.base.whiten(raw)

    def encode(self, query: Any, box: Sequence[float] | None = None, keep_image: bool = False,
               timings: dict[str, float] | None = None) -> tuple[Image.Image | None, np.ndarray]:
        steps: dict[str, float] = {} if timings is None else timings
        image, vector = self.base.encode(query, box, keep_image, steps)
        with timer(steps, "compose"):
            composed = self.model.compose(vector[None, :], [self.text])[0]
        return image, composed


def modified_pipeline(index: Any, model: ComposerModel, text: str, model_path: str | os.PathLike | None = None
                      ) -> SearchPipeline:
    """The search pipeline of ``index`` (an :class:`~matchlens.pipeline.Index`) whose query vector is
    the reference's composed with ``text``; refuses an index of another descriptor space."""
    model.space.check(index, model_path)
    return SearchPipeline(index.store, ModifiedQueryEncoder(index.pipeline.encoder, model, text))

