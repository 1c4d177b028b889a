"""Training learned R-MAC regions on an index, without labels (Gordo et al., "002").

``matchlens train-regions INDEX --out head.pt`` runs :func:`train_regions_head`:

1. the frozen backbone of the index's pipeline gives each image's feature map (at ``max_side``);
2. candidate pairs are each image's ``knn`` nearest neighbours by the index's own descriptors; a
   pair is positive when RootSIFT + MAGSAC verifies it, and the bounding box of its inliers is
   each image's box target (:mod:`matchlens.train.inlier_boxes`; features are cached in the
   index's ``cache/`` like the spatial re-ranker's);
3. tuples are both directions of each verified pair, with negatives drawn from the query's
   nearest neighbours outside its verified component;
4. the proposal head (:class:`matchlens.pooling.proposals.LearnedRMAC`) trains with the box loss
   plus the triplet loss through its soft-masked regions (:mod:`matchlens.train.proposals`), for
   ``epochs`` passes or a ``budget`` of process CPU seconds, whichever ends first; a partial file
   beside ``out`` keeps each finished epoch, so an interrupted run resumes there.

The head file is read by the ``learned-rmac`` pooling: ``matchlens index DIR -i IDX --pooling
learned-rmac --pooling-params head=head.pt``. ``benchmarks/learned_regions.py`` measures it
against the rigid grid on held-out landmarks.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from matchlens.errors import ConfigError, MatchlensError
from matchlens.extract.extractor import Extractor
from matchlens.local.features import CACHE_KIND
from matchlens.local.pool import FeaturePool
from matchlens.pooling.proposals import LearnedRMAC, relative_to_cells, save_head
from matchlens.train.config import ProgressFactory
from matchlens.train.inlier_boxes import MIN_INLIERS, VerifiedBoxes, verified_boxes
from matchlens.train.persist import atomic_torch_save
from matchlens.train.positives import _knn_pairs
from matchlens.train.proposals import rpn_loss, triplet_step_loss

__all__ = ["RegionsHeadConfig", "RegionsHeadReport", "box_targets", "train_head", "train_regions_head",
           "training_tuples", "verified_training_boxes"]

#: Row → (C, H, W) backbone map: a list of every row's, or a dict of the rows tuples use.
Maps = Sequence[torch.Tensor] | Mapping[int, torch.Tensor]
KEYPOINTS, FEATURE_SIDE = 1000, 512  # RootSIFT for the box targets: the spatial re-ranker's defaults
NEAREST = 30  # negatives come from this many nearest neighbours outside the query's component


@dataclass
class RegionsHeadConfig:
    """What :func:`train_regions_head` trains; ``budget`` (CPU seconds) may end it before ``epochs``."""

    k: int = 16
    knn: int = 10
    negatives: int = 5
    epochs: int = 3
    budget: float | None = None
    lr: float = 1e-3
    rpn_weight: float = 1.0
    triplet: bool = True
    seed: int = 0
    max_side: int | None = None
    min_inliers: int = MIN_INLIERS
    hidden: int = 64
    sharpness: float = 4.0
    p: float = 3.0

    def check(self) -> "RegionsHeadConfig":
        """One-line ConfigErrors for values that cannot train."""
        for name in ("k", "knn", "epochs", "min_inliers", "hidden"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train-regions: {name} must be >= 1, got {getattr(self, name)}")
        if self.negatives < 1 and self.triplet:
            raise ConfigError("train-regions: the triplet loss needs --negatives >= 1")
        if not self.triplet and self.rpn_weight <= 0:
            raise ConfigError("train-regions: nothing to train (no triplet loss and box-loss weight 0)")
        if self.budget is not None and self.budget <= 0:
            raise ConfigError(f"train-regions: budget must be > 0 CPU seconds, got {self.budget}")
        return self

    def training_keys(self) -> dict[str, Any]:
        """The fields a resumed run must share with the partial file it resumes."""
        return {k: v for k, v in asdict(self).items() if k not in ("epochs", "budget")}


@dataclass
class RegionsHeadReport:
    """What a training run did: sizes, pairs, epochs and the mean loss of each."""

    path: str
    images: int
    candidates: int
    pairs: int
    boxed_images: int
    tuples: int
    epochs: int
    losses: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    resumed_from: int = 0


# --- the training set ---------------------------------------------------------------------------
def verified_training_boxes(paths: Sequence[str], keys: Sequence[str], vectors: np.ndarray, knn: int,
                            cache_dir: Path | None, min_inliers: int = MIN_INLIERS,
                            progress: ProgressFactory | None = None) -> tuple[VerifiedBoxes, int]:
    """Verified kNN pairs among ``paths`` (neighbours by ``vectors``) with their inlier boxes, and the
    number of candidates; ``keys`` (e.g. SHA-256 of each file) key the RootSIFT cache in
    ``cache_dir``. Features are read as pairs need them (an LRU over the cache), never all at once."""
    pool = FeaturePool(list(paths).__getitem__, list(keys).__getitem__, cache_dir, KEYPOINTS, FEATURE_SIDE,
                       load_side=2 * FEATURE_SIDE, label="train-regions")
    candidates = _knn_pairs(vectors, knn)
    advance = progress(len(candidates), "verifying pairs") if progress else None
    return verified_boxes(pool, candidates, min_inliers=min_inliers, advance=advance), len(candidates)


def training_tuples(found: VerifiedBoxes, vectors: np.ndarray, negatives: int, seed: int = 0) -> list[list[int]]:
    """(query, positive, negatives…) of row numbers: both directions of each verified pair; the
    negatives are drawn from the query's nearest neighbours outside its verified component."""
    n = len(vectors)
    edges = np.array(found.pairs, np.int64).reshape(-1, 2)
    graph = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    x = np.asarray(vectors, np.float32)
    rng = random.Random(seed)
    out = []
    for i, j in [*found.pairs, *[(b, a) for a, b in found.pairs]]:
        order = [int(c) for c in _nearest(x, i, 2 * NEAREST) if component[c] != component[i]][:NEAREST]
        out.append([i, j, *rng.sample(order, min(negatives, len(order)))])
    return out


def _nearest(x: np.ndarray, i: int, count: int) -> np.ndarray:
    """Row ``i``'s ``count`` most similar rows, most similar first (a partial sort: large collections)."""
    sims = x @ x[i]
    count = min(count, len(sims))
    top = np.argpartition(-sims, count - 1)[:count]
    return top[np.argsort(-sims[top], kind="stable")]


def box_targets(found: VerifiedBoxes, maps: Maps) -> dict[int, torch.Tensor]:
    """Per row with boxes: its inlier boxes in the cells of its map (M, 4)."""
    out: dict[int, torch.Tensor] = {}
    for i, boxes in found.boxes.items():
        height, width = maps[i].shape[-2:]
        out[i] = relative_to_cells(torch.tensor(np.stack(boxes)), height, width)
    return out


# --- the training loop --------------------------------------------------------------------------
def _tuple_loss(model: LearnedRMAC, maps: Maps, targets: Mapping[int, torch.Tensor], t: list[int],
                config: RegionsHeadConfig) -> torch.Tensor:
    if config.triplet:
        return triplet_step_loss(model, [maps[i].float() for i in t], [targets.get(i) for i in t], config.rpn_weight)
    # Box loss only (Gordo's separately trained RPN): the pair's two images.
    loss = torch.zeros(())
    for i in t[:2]:
        boxes = targets.get(i)
        if boxes is not None:
            logits, deltas, anchors = model.head(maps[i].float())
            loss = loss + rpn_loss(logits, deltas, anchors, boxes)
    return loss


def train_head(maps: Maps, targets: Mapping[int, torch.Tensor], tuples: list[list[int]],
               config: RegionsHeadConfig, progress: ProgressFactory | None = None,
               state: dict[str, Any] | None = None,
               on_epoch: Callable[[LearnedRMAC, torch.optim.Optimizer, int, list[float]], None] | None = None,
               ) -> tuple[LearnedRMAC, list[float], float]:
    """Train a :class:`LearnedRMAC` on ``tuples`` of ``maps`` (row → (C, H, W) map: a list, or a
    dict holding only the rows the tuples use); ``state`` (from ``on_epoch``'s
    partial file) resumes after its epoch. Returns the model (eval), each epoch's mean loss and the
    CPU seconds spent in this call."""
    torch.manual_seed(config.seed)
    model = LearnedRMAC(maps[tuples[0][0]].shape[0], k=config.k, p=config.p, sharpness=config.sharpness, hidden=config.hidden)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    losses: list[float] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        losses = list(state["losses"])
    start = time.process_time()
    for epoch in range(len(losses), config.epochs):
        order = list(tuples)
        random.Random(config.seed * 1000 + epoch).shuffle(order)  # per-epoch order: resuming repeats it
        advance = progress(len(order), f"epoch {epoch + 1}/{config.epochs}") if progress else None
        total, steps = 0.0, 0
        for t in order:
            loss = _tuple_loss(model.train(), maps, targets, t, config)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, steps = total + float(loss.detach()), steps + 1
            if advance:
                advance(1)
            if config.budget is not None and time.process_time() - start >= config.budget:
                break
        losses.append(total / max(steps, 1))
        if on_epoch:
            on_epoch(model, optimiser, epoch + 1, losses)
        if config.budget is not None and time.process_time() - start >= config.budget:
            break
    return model.eval(), losses, time.process_time() - start


# --- on an index --------------------------------------------------------------------------------
def _feature_maps(extractor: Extractor, paths: Sequence[str], rows: Sequence[int], side: int,
                  progress: ProgressFactory | None) -> dict[int, torch.Tensor]:
    """The frozen backbone's (C, h, w) map at ``side`` px of ``paths[r]`` for each of ``rows`` (only
    the images the tuples use; float16 to halve the memory, the loss works in float32)."""
    advance = progress(len(rows), "feature maps") if progress else None
    scale = side / extractor.spec.max_side
    maps = {}
    for r in rows:
        maps[r] = extractor.feature_map(extractor.load(paths[r]), scale)[0].half()
        if advance:
            advance(1)
    return maps


def _partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _resume_state(out: Path, config: RegionsHeadConfig, fingerprint: str, rows: list[int],
                  log: Callable[[str], None]) -> dict[str, Any] | None:
    """The partial file's state when it belongs to this run (same settings, index and images)."""
    partial = _partial(out)
    if not partial.is_file():
        return None
    try:
        state = torch.load(partial, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: start afresh rather than fail
        log(f"{partial} is unreadable; starting afresh")
        return None
    if state.get("keys") != config.training_keys() or state.get("index") != fingerprint or state.get("rows") != rows:
        log(f"{partial} is from other settings or another index; starting afresh")
        return None
    log(f"resuming after epoch {len(state['losses'])} ({partial})")
    return state


def train_regions_head(index: Any, out: str | Path, config: RegionsHeadConfig, rows: Sequence[int] | None = None,
                       progress: ProgressFactory | None = None,
                       log: Callable[[str], None] = lambda text: None) -> RegionsHeadReport:
    """Train a regions head on the images of ``index`` (an opened :class:`matchlens.Index`; ``rows``:
    only these vector rows, e.g. leaving a test set out) and write it to ``out``."""
    config.check()
    out = Path(out)
    if not out.parent.is_dir():  # say so before minutes of verification, not at the first save
        raise MatchlensError(f"cannot write {out}: the folder {out.parent} does not exist")
    rows = sorted(set(range(index.size) if rows is None else (int(r) for r in rows)))
    if len(rows) < 2:
        raise MatchlensError(f"train-regions needs at least 2 images, the index has {len(rows)}")
    entries = [index.entry_for_row(r) for r in rows]
    paths = [e.path for e in entries]
    vectors = np.asarray(index.vectors()[rows], np.float32)
    found, candidates = verified_training_boxes(paths, [e.sha256 for e in entries], vectors, config.knn,
                                                index.store.cache_dir(CACHE_KIND), config.min_inliers, progress)
    if not found.pairs:
        raise MatchlensError(f"no verified pairs among the {candidates} nearest-neighbour pairs of {len(rows)} images: "
                             f"the boxes come from two views of the same object; add such views or lower --min-inliers")
    tuples = training_tuples(found, vectors, config.negatives, config.seed)
    extractor = Extractor(index.spec)  # the PyTorch one: the query encoder may be the torch-free export
    used = sorted({i for t in tuples for i in t})
    maps = _feature_maps(extractor, paths, used, config.max_side or extractor.spec.max_side, progress)
    fingerprint = index.spec.fingerprint()
    state = _resume_state(out, config, fingerprint, rows, log)

    def keep(model: LearnedRMAC, optimiser: torch.optim.Optimizer, epoch: int, losses: list[float]) -> None:
        atomic_torch_save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "losses": losses,
                           "keys": config.training_keys(), "index": fingerprint, "rows": rows}, _partial(out))

    model, losses, seconds = train_head(maps, box_targets(found, maps), tuples, config, progress, state, keep)
    meta = {"backbone": index.spec.backbone, "weights_id": index.spec.weights_id, "trained_on": fingerprint,
            "images": len(rows), "pairs": len(found.pairs), "max_side": config.max_side or extractor.spec.max_side,
            "config": asdict(config), "losses": losses}
    save_head(out, model, meta)
    _partial(out).unlink(missing_ok=True)
    return RegionsHeadReport(str(out), len(rows), candidates, len(found.pairs), len(found.boxes), len(tuples),
                             len(losses), losses, seconds, len(state["losses"]) if state else 0)
