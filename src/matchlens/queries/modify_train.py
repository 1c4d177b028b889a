"""Training a composer on (reference, text, target) triplets of one index (``matchlens train-composer``).

The image side is the index's own, frozen: a reference's input is its searchable vector as a
query would get it (the stored raw descriptor, whitened like a query), a target's is its stored
searchable vector. Only the text encoder and the composer learn, with one of TIRG's two losses
(:mod:`matchlens.queries.composer_losses`), so the composed query searches the existing index.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from matchlens.components import positive_float, positive_int
from matchlens.errors import ConfigError, SourceError
from matchlens.index.writer import ProgressFactory
from matchlens.io.collection import listed_path
from matchlens.queries.composer_losses import COMPOSER_LOSSES
from matchlens.queries.composers import COMPOSERS, Composer, make_composer
from matchlens.queries.modify import ComposerModel, DescriptorSpace
from matchlens.queries.textenc import TEXT_ENCODERS, TextEncoder, build_text_encoder

__all__ = ["ComposerSettings", "TripletSet", "evaluate_composer", "read_triplets", "train_composer",
           "train_from_index"]


@dataclass
class ComposerSettings:
    """What :func:`train_composer` learns and how (defaults: TIRG with an LSTM, soft triplet loss)."""

    composer: str = "tirg"
    text: str = "lstm"
    loss: str = "triplet"
    text_dim: int = 512
    hidden: int | None = None  # composer hidden width (default: the descriptor's)
    text_params: dict[str, Any] = field(default_factory=dict)  # e.g. {"tokens": "words"}
    epochs: int = 30
    batch: int = 32
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        COMPOSERS.get(self.composer)
        TEXT_ENCODERS.get(self.text)
        COMPOSER_LOSSES.get(self.loss)
        for name in ("text_dim", "epochs"):
            positive_int(getattr(self, name), name)
        if positive_int(self.batch, "batch") < 2:
            raise ConfigError("batch must be >= 2 (the losses contrast the targets of a batch)")
        positive_float(self.lr, "lr")


@dataclass
class TripletSet:
    """Triplets as index rows: reference rows, texts, target rows (aligned)."""

    references: np.ndarray
    texts: list[str]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


def read_triplets(path: str | Path) -> list[tuple[str, str, str]]:
    """(reference path, text, target path) rows of a CSV with columns ``reference,text,target``
    (others ignored); relative paths are relative to the CSV's folder."""
    path = Path(path).expanduser()
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"reference", "text", "target"} - set(reader.fieldnames or [])
            if missing:
                raise SourceError(f"triplets file '{path}' lacks the column(s) {', '.join(sorted(missing))} "
                                  "(it needs reference,text,target)")
            rows = [(r["reference"] or "", r["text"] or "", r["target"] or "") for r in reader]
    except OSError as exc:
        raise SourceError(f"cannot read triplets file '{path}': {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise SourceError(f"triplets file '{path}' is not a CSV file: {exc}") from None
    if not rows:
        raise SourceError(f"triplets file '{path}' holds no triplets")
    base = path.parent
    for number, (_, text, _) in enumerate(rows, start=2):
        if not text.strip():
            raise SourceError(f"triplets file '{path}' line {number}: the text is empty")
    return [(listed_path(base / ref), text.strip(), listed_path(base / tgt)) for ref, text, tgt in rows]


def match_triplets(index: Any, rows: Sequence[tuple[str, str, str]], where: str) -> TripletSet:
    """The triplets as rows of ``index``; refuses (one line, with a count and an example) any
    image the index does not hold."""
    row_of = {e.path: int(e.row) for e in index.entries if e.status == "indexed" and e.row is not None}
    absent = [p for ref, _, tgt in rows for p in (ref, tgt) if p not in row_of]
    if absent:
        raise SourceError(f"{len(absent)} image(s) of '{where}' are not in index '{index.root}' (e.g. '{absent[0]}'); "
                          "index them first (matchlens index / add)")
    return TripletSet(np.array([row_of[r] for r, _, _ in rows], dtype=np.int64), [t for _, t, _ in rows],
                      np.array([row_of[t] for _, _, t in rows], dtype=np.int64))


def reference_vectors(index: Any, rows: np.ndarray) -> np.ndarray:
    """Searchable vectors of indexed images as a query gets them: raw descriptor, whitened (no DBA)."""
    raw = np.asarray(index.store.descriptors()[np.asarray(rows)], dtype=np.float32)
    return np.asarray(index.pipeline.encoder.whiten(raw), dtype=np.float32)


def train_composer(references: np.ndarray, texts: Sequence[str], targets: np.ndarray, target_ids: np.ndarray,
                   space: DescriptorSpace, settings: ComposerSettings | None = None,
                   progress: ProgressFactory | None = None) -> ComposerModel:
    """Learn a composer from reference vectors (n, D), texts and target vectors (n, D); equal
    ``target_ids`` mark triplets whose targets are the same image (never negatives of each other)."""
    settings = settings or ComposerSettings()
    references, targets = np.asarray(references, np.float32), np.asarray(targets, np.float32)
    if not len(references) == len(texts) == len(targets) == len(target_ids):
        raise ConfigError("references, texts, targets and target ids must have the same length")
    if len(texts) < settings.batch:
        raise ConfigError(f"{len(texts)} triplets are fewer than one batch ({settings.batch})")
    torch.manual_seed(settings.seed)
    text = build_text_encoder(settings.text, list(texts), dim=settings.text_dim, **settings.text_params)
    composer = make_composer(settings.composer, space.dim, text.dim, settings.hidden)
    log_scale = nn.Parameter(torch.tensor(math.log(16.0)))
    trained = list(composer.parameters()) + (list(text.parameters()) if composer.uses_text else [])
    start, losses = time.perf_counter(), []
    if trained:
        losses = _fit(composer, text, log_scale, trained, (references, list(texts), targets, target_ids), settings,
                      progress)
    info = {"composer": settings.composer, "text": settings.text, "loss": settings.loss, "epochs": settings.epochs,
            "triplets": len(texts), "minutes": round((time.perf_counter() - start) / 60, 3),
            "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None}
    return ComposerModel(text.eval(), composer.eval(), space, info, float(log_scale.detach().exp()))


def _fit(composer: Composer, text: TextEncoder, log_scale: nn.Parameter, trained: list[nn.Parameter],
         data: tuple[np.ndarray, list[str], np.ndarray, np.ndarray], settings: ComposerSettings,
         progress: ProgressFactory | None) -> list[float]:
    references, texts, targets, target_ids = data
    loss_fn = COMPOSER_LOSSES.get(settings.loss)
    optimiser = torch.optim.Adam([*trained, log_scale], lr=settings.lr)
    rng = np.random.default_rng(settings.seed)
    steps = settings.epochs * (len(texts) // settings.batch)
    advance = progress(steps, f"training {settings.composer}") if progress else None
    composer.train()
    text.train()
    losses: list[float] = []
    for _ in range(settings.epochs):
        order = rng.permutation(len(texts))
        for begin in range(0, len(order) - settings.batch + 1, settings.batch):  # full batches: BatchNorm, contrast
            pick = order[begin:begin + settings.batch]
            image = torch.from_numpy(references[pick])
            words = text.encode([texts[i] for i in pick]) if composer.uses_text else \
                torch.zeros(len(pick), composer.text_dim)
            query = composer(image, words)
            target = nn.functional.normalize(torch.from_numpy(targets[pick]), dim=1)
            ids = torch.from_numpy(np.asarray(target_ids)[pick])
            loss = loss_fn(query, target, ids[:, None] == ids[None, :], log_scale.exp())
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(trained, 10.0)  # the LSTMs' occasional spikes
            optimiser.step()
            losses.append(float(loss.detach()))
            if advance:
                advance(1)
    return losses


def train_from_index(index: Any, triplets_csv: str | Path, settings: ComposerSettings | None = None,
                     progress: ProgressFactory | None = None) -> tuple[ComposerModel, TripletSet]:
    """Read ``triplets_csv``, find its images in ``index`` and train a composer for its space."""
    found = match_triplets(index, read_triplets(triplets_csv), str(triplets_csv))
    model = train_composer(reference_vectors(index, found.references), found.texts,
                           np.asarray(index.vectors()[found.targets], np.float32), found.targets,
                           DescriptorSpace.of(index), settings, progress)
    return model, found


def evaluate_composer(model: ComposerModel, references: np.ndarray, texts: Sequence[str], gallery: np.ndarray,
                      correct: np.ndarray, exclude: np.ndarray | None = None, ks: Sequence[int] = (1, 5, 10),
                      batch: int = 256) -> dict[int, float]:
    """TIRG's R@k (%): the share of queries with a correct gallery item (``correct`` (Q, N)) among
    the first k; ``exclude`` (Q,) gallery columns (the reference itself) never count."""
    hits = np.zeros(len(ks))
    gallery = np.asarray(gallery, np.float32)
    for begin in range(0, len(texts), batch):
        part = slice(begin, begin + batch)
        scores = model.compose(references[part], list(texts[part])) @ gallery.T
        if exclude is not None:
            scores[np.arange(scores.shape[0]), exclude[part]] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, : max(ks)]
        found = np.take_along_axis(correct[part], order, axis=1)
        hits += [found[:, :k].any(axis=1).sum() for k in ks]
    return {k: round(100.0 * h / max(len(texts), 1), 2) for k, h in zip(ks, hits)}
