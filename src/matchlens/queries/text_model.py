"""The text model file (``text.pt``): a joint embedding, optionally CAMP / CAAN re-rankers, the
text encoder they read, and the index pipeline they were trained for.

One file holds everything a text query needs: ``matchlens train-text ... --model joint`` writes it,
``--model camp`` / ``--model caan`` add a re-ranker to it. It records the index's pipeline (the
descriptor space the joint embedding maps into, and the backbone the region features come from)
and is refused, in one line, by an index of another pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from matchlens.config import parse_params
from matchlens.errors import ConfigError, WeightsError
from matchlens.registry import Registry

__all__ = ["CROSS_MODELS", "FORMAT", "TextEncoderHandle", "TextModel", "check_text", "positives_mask"]

FORMAT = "matchlens-text/1"
CROSS_MODELS: Registry[Any] = Registry("text re-ranking model")  # camp, caan (their nn.Module classes)


def positives_mask(texts: list[str], rows: np.ndarray) -> torch.Tensor:
    """(B, B) True where text i and image j match: the same image, or the same caption."""
    rows_t = torch.as_tensor(np.asarray(rows))
    same_row = rows_t[:, None] == rows_t[None, :]
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    codes = torch.tensor([ids[t] for t in texts])
    return same_row | (codes[:, None] == codes[None, :])


class TextEncoderHandle:
    """A text encoder of :mod:`matchlens.queries.textenc` (learned with the joint head) with what
    training and saving need."""

    def __init__(self, name: str, encoder: Any) -> None:
        self.name, self.encoder = name, encoder

    @classmethod
    def create(cls, name: str, texts: list[str], dim: int = 256) -> "TextEncoderHandle":
        """A new encoder ``name`` (``pieces``, ``sentence``, ``lstm``, ``bigru``; parameters after a
        colon, e.g. ``bigru:tokens=words,embed=128``) whose vocabulary is the tokens of ``texts``."""
        from matchlens.queries.textenc import build_text_encoder

        base, _, params = name.partition(":")
        return cls(base.strip(), build_text_encoder(base.strip(), texts, **{"dim": dim, **parse_params(params)}))

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> "TextEncoderHandle":
        """The encoder as :meth:`state` saved it."""
        from matchlens.queries.textenc import text_encoder_from_spec

        return cls(saved["spec"]["name"], text_encoder_from_spec(saved["spec"], saved["state"]))

    def state(self) -> dict[str, Any]:
        """What a model file keeps of the encoder (its spec with the vocabulary, and weights)."""
        return {"spec": self.encoder.spec(), "state": self.encoder.state_dict()}

    @property
    def dim(self) -> int:
        """Width of the sentence and token features."""
        return int(self.encoder.dim)

    def parameters(self) -> list[nn.Parameter]:
        """The encoder's trainable parameters."""
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def encode(self, texts: list[str], train: bool = False) -> torch.Tensor:
        """(B, dim) sentence features (with gradients when ``train``)."""
        self.encoder.train(train)
        with torch.set_grad_enabled(train):
            return self.encoder.encode(texts).float()

    def encode_tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, L, dim), mask (B, L)) of the words, without gradients (the cross-modal
        models read the joint embedding's trained encoder as it is)."""
        self.encoder.eval()
        with torch.no_grad():
            feats, mask = self.encoder.encode_tokens(texts)
        return feats.float(), mask.float()

    def check(self, text: str) -> None:
        """One-line ConfigError for an empty text or one with no word seen in training."""
        self.encoder.check(text)


def check_text(text: str, handle: TextEncoderHandle) -> str:
    """``text`` stripped; an empty text or one of unknown words only → one-line ConfigError."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("the text query is empty: describe the image, e.g. --text \"a red cube at top-left\"")
    handle.check(text)
    return text.strip()


class TextModel:
    """A loaded text model: encoder, joint embedding, re-rankers, and the pipeline it belongs to."""

    def __init__(self, pipeline: str, dim: int, index: str, encoder: TextEncoderHandle, joint: Any,
                 cross: dict[str, Any] | None = None, regions: dict[str, Any] | None = None,
                 facts: dict[str, Any] | None = None) -> None:
        self.pipeline, self.dim, self.index = pipeline, dim, index
        self.encoder, self.joint = encoder, joint
        self.cross: dict[str, Any] = dict(cross or {})  # name → CrossModel
        self.regions = dict(regions or {})
        self.facts: dict[str, Any] = dict(facts or {})

    @classmethod
    def for_index(cls, index: Any, encoder: TextEncoderHandle, joint: Any) -> "TextModel":
        """A model of ``index``'s pipeline."""
        return cls(index.spec.describe(), int(index.dim), str(index.root), encoder, joint)

    # --- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the model file atomically."""
        from matchlens.train.persist import atomic_torch_save

        payload = {"format": FORMAT, "pipeline": self.pipeline, "dim": self.dim, "index": self.index,
                   "encoder": self.encoder.state(),
                   "joint": {"config": self.joint.config, "state": self.joint.state_dict()},
                   "cross": {name: {"config": m.config, "state": m.state_dict()} for name, m in self.cross.items()},
                   "regions": self.regions, "facts": self.facts}
        atomic_torch_save(payload, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> "TextModel":
        """Read a model file (a missing or foreign file → one-line WeightsError)."""
        from matchlens.queries import caan, camp  # noqa: F401  (register the re-ranking models)
        from matchlens.queries.joint import JointEmbedding

        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsError(f"text model not found: {path} (train one with 'matchlens train-text')")
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input
            raise WeightsError(f"{path} is not a readable text model: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise WeightsError(f"{path} is not a matchlens text model (written by 'matchlens train-text')")
        joint = JointEmbedding(**data["joint"]["config"])
        joint.load_state_dict(data["joint"]["state"])
        cross = {}
        for name, saved in data["cross"].items():
            module = CROSS_MODELS.get(name)(**saved["config"])
            module.load_state_dict(saved["state"])
            cross[name] = module.eval()
        return cls(data["pipeline"], int(data["dim"]), data["index"], TextEncoderHandle.restore(data["encoder"]),
                   joint.eval(), cross, data.get("regions"), data.get("facts"))

    def check(self, index: Any) -> None:
        """Refuse an index of another pipeline (one line naming both)."""
        if index.spec.describe() != self.pipeline or int(index.dim) != self.dim:
            raise ConfigError(f"the text model was trained for pipeline {self.pipeline} ({self.dim}-D, index "
                              f"{self.index}); {index.root} uses {index.spec.describe()} ({index.dim}-D): "
                              "train one for it with 'matchlens train-text CAPTIONS --index IDX'")

    # --- embeddings ----------------------------------------------------------------------------
    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """(B, D) unit joint-space embeddings of ``texts``."""
        return self.joint.embed_text(self.encoder.encode(texts))

    @torch.no_grad()
    def image_embeddings(self, vectors: np.ndarray) -> torch.Tensor:
        """(N, D) joint-space embeddings of stored vectors."""
        return self.joint.embed_image(torch.as_tensor(np.asarray(vectors, np.float32)))

    @torch.no_grad()
    def query_vectors(self, texts: list[str]) -> np.ndarray:
        """(B, d) float32: the texts as vectors of the index's own space (searched by its backend)."""
        return self.joint.to_index_space(self.text_embeddings(texts)).numpy().astype(np.float32)

    def reranker(self, name: str) -> Any:
        """The trained re-ranking model ``name`` (one line when the file has none)."""
        if name not in self.cross:
            raise ConfigError(f"the text model has no {name} re-ranker (it has: "
                              f"{', '.join(self.cross) or 'none'}); add one with 'matchlens train-text CAPTIONS "
                              f"--index IDX --model {name} --out TEXT_MODEL'")
        return self.cross[name]
