"""The evidence model: pair → 4D tensor → verifier → score, and Grad-CAM → contribution maps.

Contract (DESIGN.md): an evidence model takes a (query, target) pair and returns a relevance score
and two contribution maps at image resolution. :func:`explain_pair` is that entry point.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from matchlens.errors import WeightsError
from matchlens.evidence.cam import aggregate, contributions, upsample
from matchlens.evidence.config import VerifierConfig
from matchlens.evidence.grid import BackbonePatches, describe
from matchlens.evidence.networks import build_network
from matchlens.evidence.tensor import correlation_tensor
from matchlens.fileio import atomic_write
from matchlens.io.images import load_image

CHECKPOINT_FORMAT = "matchlens-verifier"
CHECKPOINT_VERSION = 1
ImageInput = Image.Image | str | os.PathLike | bytes | np.ndarray


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Explanation:
    """A verified pair: the score and where the match is.

    Attributes:
        score: probability that the pair is relevant (sigmoid of the verifier's logit).
        query_map, target_map: contribution maps C_Q / C_T at image resolution, (H, W) float32 in [0, 1].
        query_grid, target_grid: the same maps on the m×n grid, before upsampling.
        evidence: the aggregated Grad-CAM M, (m, n, m, n).
    """

    score: float
    query_map: np.ndarray
    target_map: np.ndarray
    query_grid: np.ndarray
    target_grid: np.ndarray
    evidence: np.ndarray
    query_image: Image.Image | None = field(default=None, repr=False)
    target_image: Image.Image | None = field(default=None, repr=False)

    def render(self, alpha: float = 0.5) -> Image.Image:
        """Side-by-side overlay: heatmap on the query (left) and on the target (right)."""
        from matchlens.evidence.render import side_by_side

        if self.query_image is None or self.target_image is None:
            raise ValueError("this explanation holds no images to draw on")
        return side_by_side(self.query_image, self.query_map, self.target_image, self.target_map, self.score, alpha)

    def png_bytes(self, alpha: float = 0.5) -> bytes:
        """:meth:`render` encoded as PNG."""
        buffer = io.BytesIO()
        self.render(alpha).save(buffer, format="PNG")
        return buffer.getvalue()

    def save_png(self, path: str | os.PathLike, alpha: float = 0.5) -> Path:
        """Write :meth:`png_bytes` to ``path`` (folders created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.png_bytes(alpha))
        return path


class EvidenceModel:
    """A configured verifier ready to score and explain pairs (eval mode)."""

    def __init__(self, config: VerifierConfig, network: torch.nn.Module | None = None,
                 device: torch.device | str | None = None, meta: dict[str, Any] | None = None) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else default_device()
        self.network = (network or build_network(config)).to(self.device).eval()
        self.meta = dict(meta or {})
        self._backbone: BackbonePatches | None = None

    # --------------------------------------------------------------------------------------
    # Pair → tensor

    def descriptors(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Patch descriptors ``(B, mn, D)`` (backbone loaded lazily).

        An image object repeated in ``images`` (one query against many targets) is described once.
        """
        if self.config.source == "backbone" and self._backbone is None:
            self._backbone = BackbonePatches(self.config.backbone, self.config.backbone_side, self.device)
        unique: dict[int, int] = {}
        for image in images:
            unique.setdefault(id(image), len(unique))
        distinct = list({id(im): im for im in images}.values())
        described = describe(distinct, self.config, self._backbone)
        return described[[unique[id(im)] for im in images]]

    def tensors(self, queries: Sequence[Image.Image], targets: Sequence[Image.Image]) -> torch.Tensor:
        """The multi-metric 4D tensors ``(B, |Φ|, m, n, m, n)`` of the pairs."""
        c = self.config
        return correlation_tensor(self.descriptors(targets), self.descriptors(queries), c.rows, c.cols,
                                  c.metrics, c.shrinkage)

    # --------------------------------------------------------------------------------------
    # Scoring and explaining

    @torch.no_grad()
    def score_tensors(self, tensors: torch.Tensor, batch: int = 32) -> np.ndarray:
        """Relevance probabilities of precomputed tensors."""
        self.network.eval()
        out = [torch.sigmoid(self.network(tensors[i:i + batch].to(self.device))[0]).cpu()
               for i in range(0, len(tensors), batch)]
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def score(self, queries: Sequence[Image.Image], targets: Sequence[Image.Image], batch: int = 32) -> np.ndarray:
        """Relevance probabilities of (query, target) pairs."""
        scores = [self.score_tensors(self.tensors(queries[i:i + batch], targets[i:i + batch]), batch)
                  for i in range(0, len(queries), batch)]
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)

    def evidence_tensors(self, tensors: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """(probabilities, M) for a batch of tensors; M is ``(B, m, n, m, n)``.

        The gradient of the sum of logits gives each pair its own gradients: in eval mode the
        pairs of a batch do not interact.
        """
        self.network.eval()
        with torch.enable_grad():
            logits, maps = self.network(tensors.to(self.device))
            grads = torch.autograd.grad(logits.sum(), maps)
        evidence = aggregate([m.detach() for m in maps], grads, self.config.rows, self.config.cols)
        return torch.sigmoid(logits.detach()).cpu().numpy(), evidence.cpu()

    def explain_grids(self, queries: Sequence[Image.Image], targets: Sequence[Image.Image]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(scores, C_Q grids, C_T grids, M) for a batch of pairs, without upsampling."""
        scores, evidence = self.evidence_tensors(self.tensors(queries, targets))
        c_t, c_q = contributions(evidence)
        return scores, c_q.numpy(), c_t.numpy(), evidence.numpy()

    def explain(self, query: Image.Image, target: Image.Image) -> Explanation:
        """Score one pair and decode its contribution maps at image resolution."""
        scores, c_q, c_t, evidence = self.explain_grids([query], [target])
        return Explanation(float(scores[0]), upsample(c_q[0], query.size), upsample(c_t[0], target.size),
                           c_q[0], c_t[0], evidence[0], query, target)

    # --------------------------------------------------------------------------------------
    # Checkpoints

    def save(self, path: str | os.PathLike, **meta: Any) -> Path:
        """Write a checkpoint carrying the configuration (and ``meta``: training settings, history)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": self.config.to_dict(),
                   "meta": {**self.meta, **meta}, "state_dict": self.network.state_dict()}
        with atomic_write(path) as handle:  # a crash never leaves a half-written checkpoint under the real name
            torch.save(payload, handle)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None) -> "EvidenceModel":
        """Rebuild a model from :meth:`save`'s checkpoint; WeightsError (one line) if it is not one."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsError(f"verifier checkpoint {path} does not exist (train one with 'matchlens train-verifier')")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle/zip errors of every kind: not a checkpoint
            raise WeightsError(f"{path} is not a readable verifier checkpoint: {type(error).__name__}") from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise WeightsError(f"{path} is not a matchlens verifier checkpoint")
        config = VerifierConfig.from_dict(payload["config"])
        network = build_network(config)
        try:
            network.load_state_dict(payload["state_dict"])
        except RuntimeError as error:
            raise WeightsError(f"{path}: weights do not fit the stored configuration ({str(error).splitlines()[0]})") from None
        return cls(config, network, device, payload.get("meta"))


_LOADED: dict[tuple[str, int, int], EvidenceModel] = {}


def load_model(model: "EvidenceModel | str | os.PathLike") -> EvidenceModel:
    """An EvidenceModel, or one loaded from a checkpoint path (memoised by path, size and mtime)."""
    if isinstance(model, EvidenceModel):
        return model
    path = Path(model).expanduser()
    stat = path.stat() if path.is_file() else None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns) if stat else None
    if key is not None and key in _LOADED:
        return _LOADED[key]
    loaded = EvidenceModel.load(path)
    if key is not None:
        if len(_LOADED) > 8:
            _LOADED.clear()
        _LOADED[key] = loaded
    return loaded


def explain_pair(query_image: ImageInput, target_image: ImageInput,
                 model: "EvidenceModel | str | os.PathLike", max_side: int = 1024) -> Explanation:
    """Score a (query, target) pair and return where it matches.

    Args:
        query_image, target_image: paths, bytes, PIL images or arrays (decoded upright).
        model: an :class:`EvidenceModel` or the path of a checkpoint from ``matchlens train-verifier``.
        max_side: images are decoded no larger than about this (maps come at the decoded size).

    Returns:
        :class:`Explanation` with ``score``, ``query_map``, ``target_map`` (float arrays at image
        resolution) and ``png_bytes()`` for the side-by-side overlay.
    """
    evidence_model = load_model(model)
    query = _fit(load_image(query_image, max_side=max_side), max_side)
    target = _fit(load_image(target_image, max_side=max_side), max_side)
    return evidence_model.explain(query, target)


def _fit(image: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR)
