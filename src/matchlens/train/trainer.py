"""The training loop of ``matchlens train``: tuples, re-mined hard negatives, loss, checkpoints.

Defaults follow P3 (LITERATURE.md "Fine-tuning"): tuples of 1 query, 1 positive and 5 negatives;
negatives re-mined from the current model 3 times per epoch, at most one per group; contrastive
loss with margin 0.7 (triplet: 0.1); SGD lr 1e-3, momentum 0.9, weight decay 5e-4 (Adam: lr 1e-6
as cirtorch); lr decayed by exp(-0.01) per epoch; 5 tuples per optimizer step; BatchNorm frozen.

Output folder ``OUT`` (file names and checkpoint content: :mod:`matchlens.train.checkpoint`;
the options: :class:`~matchlens.train.config.TrainConfig`):

* ``last.pt`` - model, optimizer, scheduler, RNG state, epoch/step, history (and MoCo's heads,
  key encoder and queue), written atomically every epoch (and every ``save_every`` optimizer
  steps): a run interrupted (Ctrl-C, crash, power) resumes from it when the same command is run
  again;
* ``best.pt`` - the weights with the best validation mAP (epoch 0 = before training), with the
  pipeline spec and the learned whitening Lw: ``matchlens index DIR --weights OUT/best.pt``;
* ``trainset.json`` - the tuples' source (images, positives, groups), so a resumed run trains on
  the same pairs even when they were mined without labels;
* ``history.json`` and ``curve.png`` - loss and validation mAP per epoch.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from matchlens.config import PipelineSpec
from matchlens.models import load_backbone
from matchlens.models.weights import read_checkpoint
from matchlens.train.checkpoint import (BEST, CURVE, HISTORY, LAST, PROGRESS_KEYS, SELFSUP, TRAINSET,
                                        load_best_weights, resume_training, save_checkpoint, trained_spec,
                                        training_state)
from matchlens.train.config import ProgressFactory, TrainConfig, TrainingInterrupted, TrainResult
from matchlens.train.data import build_trainset, maybe_dataset, unlabeled_images, validation_set
from matchlens.train.losses import nt_xent_loss, tuple_loss
from matchlens.train.mining import mine_negatives
from matchlens.train.model import ImageStore, RetrievalNet, describe, reestimate_batchnorm, set_batchnorm_mode
from matchlens.train.persist import load_trainset, plot_curve, save_trainset
from matchlens.train.positives import TrainingSet
from matchlens.train.regions import layout_boxes, region_descriptors, regional_tuple_loss
from matchlens.train.sampling import example_probabilities
from matchlens.train.validation import ValidationSet
from matchlens.whitening.learned import LearnedWhitening

__all__ = ["train"]


def train(config: TrainConfig, progress: ProgressFactory | None = None, log: Callable[[str], None] | None = None,
          on_step: Callable[[int, int], None] | None = None) -> TrainResult:
    """Run (or resume) a training run; see the module docstring for what it writes.

    ``on_step(epoch, step)`` is called after every optimizer step (``step`` counts tuples done in
    the epoch); raising KeyboardInterrupt from it behaves like Ctrl-C.
    """
    return _Trainer(config, progress, log or (lambda text: None), on_step).run()


class _Trainer:
    def __init__(self, config: TrainConfig, progress, log, on_step) -> None:
        self.config, self.progress, self.log, self.on_step = config, progress, log, on_step
        self.out = Path(config.out).expanduser()
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        if config.threads:
            from threadpoolctl import threadpool_limits  # deferred: training's thread limits only

            # On a busy CPU one thread can be much faster than two (torch and BLAS spin-wait).
            torch.set_num_threads(config.threads)
            threadpool_limits(config.threads)
        backbone = load_backbone(config.backbone, config.weights)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = RetrievalNet(backbone, config.gem_p, config.learn_p).to(self.device)
        self.regions = layout_boxes(config.regions) if config.regions else None  # per-region loss (PS-Net eq. 2)
        self.store = ImageStore(config.max_side)
        self.optimizer = _optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=math.exp(-0.01))
        self.state: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "best_map": None, "best_epoch": 0}
        self.resumed_from = self._resume() if (self.out / LAST).exists() else None
        self.dataset = maybe_dataset(config.data, config.dataset_format)
        self.trainset = self._trainset()
        self.valset = self._valset()
        self._negatives: dict[int, list[int]] = {}

    # --- run -------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.config
        if not self.state["history"]:
            self._finish_epoch(0, None, 0.0)  # epoch 0: the model before fine-tuning
        for epoch in range(self.state["epoch"], cfg.epochs):
            start = time.monotonic()
            losses = self._train_epoch(epoch)
            self.scheduler.step()
            if cfg.bn == "reestimate":
                reestimate_batchnorm(self.model, self.store, self._bn_paths(epoch))
            self._finish_epoch(epoch + 1, float(np.mean(losses)) if losses else None, time.monotonic() - start)
        lw_map = self._learn_whitening() if cfg.lw and self.trainset is not None else None
        curve = self._plot()
        return TrainResult(self.out / BEST, self.out / LAST, self.state["history"], self.state["best_epoch"],
                           self.state["best_map"], self.resumed_from, lw_map, curve,
                           self.trainset.notes if self.trainset else [])

    def _train_epoch(self, epoch: int) -> list[float]:
        cfg = self.config
        first = self.state["step"] if self.state["epoch"] == epoch else 0
        items = self._epoch_items(epoch)
        advance = self.progress(len(items) - first, f"epoch {epoch + 1}/{cfg.epochs}") if self.progress else None
        set_batchnorm_mode(self.model, cfg.bn)
        losses: list[float] = []
        done = first
        self.optimizer.zero_grad()
        try:
            for start in range(first, len(items), cfg.batch):
                batch = items[start:start + cfg.batch]
                losses.append(self._batch_loss(epoch, start, batch))
                self.optimizer.step()
                self.optimizer.zero_grad()
                done = start + len(batch)
                if advance:
                    advance(len(batch))
                self._after_step(epoch, done, len(items))
        except KeyboardInterrupt:
            self.optimizer.zero_grad()
            self._save_last(epoch, done)
            raise TrainingInterrupted(f"interrupted in epoch {epoch + 1} after {done} of {len(items)} "
                                      f"{'images' if cfg.positives == 'selfsup' else 'tuples'}; "
                                      f"run the same command again to resume from {self.out / LAST}") from None
        return losses

    def _after_step(self, epoch: int, done: int, total: int) -> None:
        cfg = self.config
        steps = math.ceil(done / cfg.batch)
        if cfg.save_every and steps % cfg.save_every == 0 and done < total:
            self._save_last(epoch, done)
        if self.on_step:
            self.on_step(epoch, done)

    def _batch_loss(self, epoch: int, start: int, batch: list) -> float:
        """Forward/backward one optimizer step's worth of tuples (or images); returns the mean loss."""
        cfg = self.config
        if cfg.positives == "selfsup":
            return self._selfsup_loss(epoch, start, batch)
        assert self.trainset is not None  # every mode but selfsup trains on tuples of a training set
        total = 0.0
        for offset, (q, p) in enumerate(batch):
            negatives = self._negatives_for(epoch, start + offset, q)
            ids = [q, p, *negatives]
            loss = self._tuple_loss([self.store.tensor(self.trainset.images[i]).unsqueeze(0) for i in ids])
            (loss / len(batch)).backward()  # gradients accumulate over the batch's tuples
            total += float(loss.detach())
        return total / len(batch)

    def _tuple_loss(self, images: list[torch.Tensor]) -> torch.Tensor:
        """One tuple's loss: on whole-image descriptors, or summed over the layout's regions."""
        cfg = self.config
        if self.regions is not None:
            regional = torch.cat([region_descriptors(self.model, image, self.regions) for image in images])
            return regional_tuple_loss(cfg.loss, regional, cfg.margin)
        return tuple_loss(cfg.loss, torch.cat([self.model(image) for image in images]), cfg.margin)

    # --- tuples and mining ---------------------------------------------------------------------
    def _epoch_items(self, epoch: int) -> list:
        """The epoch's (query, positive) tuples, or image ids for self-supervised training; fixed by
        (seed, epoch) so a resumed epoch continues the same sequence."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, epoch])
        if cfg.positives == "selfsup":
            n = len(self.images)
            return [int(i) for i in rng.choice(n, cfg.tuples, replace=cfg.tuples > n)]
        assert self.trainset is not None  # every mode but selfsup trains on tuples of a training set
        queries = self.trainset.queries
        # --sampler reversed (BBN): queries of landmarks with few images are drawn more often
        weights = None if cfg.sampler == "uniform" else example_probabilities(self.trainset.groups[queries], cfg.sampler)
        chosen = rng.choice(len(queries), cfg.tuples, replace=cfg.tuples > len(queries), p=weights)
        positives = self.trainset.positives
        return [(queries[i], int(rng.choice(positives[queries[i]]))) for i in chosen]

    def _negatives_for(self, epoch: int, position: int, query: int) -> list[int]:
        """Negatives of the tuple at ``position``: re-mined with the current model at the start of
        each of the ``remine`` chunks of the epoch (and after a resume)."""
        cfg = self.config
        chunk = math.ceil(cfg.tuples / cfg.remine)
        if position % chunk == 0 or not self._negatives:
            items = self._epoch_items(epoch)[position - position % chunk:][:chunk]
            self._mine(sorted({q for q, _ in items}), epoch, position // chunk)
            set_batchnorm_mode(self.model, cfg.bn)
        return self._negatives[query]

    def _mine(self, queries: list[int], epoch: int, chunk: int) -> None:
        cfg, ts = self.config, self.trainset
        assert ts is not None  # mining is for the tuples of a training set
        rng = np.random.default_rng([cfg.seed, epoch, chunk, 1])
        pool = list(ts.pool)
        if len(pool) > cfg.pool_size:  # P3 mines from a random pool re-drawn each time
            pool = sorted(int(i) for i in rng.choice(pool, cfg.pool_size, replace=False))
        ids = sorted(set(pool) | set(queries))
        where = {i: k for k, i in enumerate(ids)}
        advance = self.progress(len(ids), "mining negatives") if self.progress else None
        vectors = describe(self.model, self.store, [ts.images[i] for i in ids], advance)
        mined = mine_negatives(vectors[[where[q] for q in queries]], ts.groups[queries], vectors[[where[i] for i in pool]],
                               pool, ts.groups[pool], cfg.negatives, [ts.excluded.get(q, {q}) for q in queries])
        self._negatives = dict(zip(queries, mined))

    # --- self-supervised ----------------------------------------------------------------------
    def _selfsup_loss(self, epoch: int, start: int, batch: list[int]) -> float:
        from matchlens.train.selfsup import two_views  # deferred: torchvision's transforms, self-supervised runs only

        gen = torch.Generator().manual_seed(hash((self.config.seed, epoch, start)) % (2**31))
        v1, v2 = two_views([self.store.image(self.images[i]) for i in batch], self.config.crop, gen)
        loss = nt_xent_loss(self.model(v1), self.model(v2), self.config.temperature)
        loss.backward()
        return float(loss.detach())

    def _selfsup_state(self) -> dict[str, Any] | None:
        """What the self-supervised step keeps besides the model, saved in ``last.pt`` (MoCo's);
        SimCLR's step has none: NT-Xent on the descriptors, no head."""
        return None

    def _restore_selfsup(self, saved: dict[str, Any] | None) -> None:
        """Restore :meth:`_selfsup_state` from a resumed checkpoint (``None``: it holds none)."""

    # --- data ----------------------------------------------------------------------------------
    @property
    def images(self) -> list[str]:
        return self.trainset.images if self.trainset is not None else self._unlabeled

    def _trainset(self) -> TrainingSet | None:
        path = self.out / TRAINSET
        if self.config.positives == "selfsup":
            self._unlabeled = unlabeled_images(self.config, self.dataset)
            return None
        if path.exists() and self.resumed_from is not None:
            return load_trainset(path)
        trainset = build_trainset(self.config, self.dataset, self.model, self.store, self.progress)
        save_trainset(path, trainset)
        for note in trainset.notes:
            self.log(note)
        self.log(f"training set: {len(trainset.queries)} queries, {len(trainset.pairs())} positive pairs, "
                 f"{len(trainset.pool)} candidate negatives ({trainset.source})")
        return trainset

    def _valset(self) -> ValidationSet | None:
        return validation_set(self.config, self.dataset)

    def _bn_paths(self, epoch: int) -> list[str]:
        rng = np.random.default_rng([self.config.seed, epoch, 2])
        images = self.images
        return [images[i] for i in rng.choice(len(images), min(len(images), 200), replace=False)]

    # --- validation, checkpoints ---------------------------------------------------------------
    def _validate(self) -> float | None:
        if self.valset is None or not self.valset.queries:
            return None
        advance = self.progress(len(self.valset.images), "validating") if self.progress else None
        return self.valset.mean_ap(describe(self.model, self.store, self.valset.images, advance))

    def _finish_epoch(self, epoch: int, loss: float | None, seconds: float) -> None:
        val = self._validate()
        entry = {"epoch": epoch, "loss": loss, "val_map": val, "seconds": round(seconds, 2),
                 "gem_p": round(self.model.gem_p, 4), "lr": self.optimizer.param_groups[0]["lr"]}
        self.state["history"].append(entry)
        best = self.state["best_map"]
        improved = epoch == 0 or (val is not None and (best is None or val > best)) or (val is None)
        if improved:
            self.state["best_map"], self.state["best_epoch"] = val, epoch
            self._save(self.out / BEST, epoch, training=False)
        self._save_last(epoch, 0)
        (self.out / HISTORY).write_text(json.dumps(self.state["history"], indent=1))
        val_text = "n/a" if val is None else f"{100 * val:.2f}"
        loss_text = "" if loss is None else f"loss {loss:.4f}, "
        self.log(f"epoch {epoch}: {loss_text}val mAP {val_text}, GeM p {self.model.gem_p:.3f}"
                 f"{', best so far' if improved else ''} ({seconds:.1f} s)")

    def _save_last(self, epoch: int, step: int) -> None:
        self.state["epoch"], self.state["step"] = epoch, step
        self._save(self.out / LAST, epoch, training=True)

    def _save(self, path: Path, epoch: int, training: bool, lw: dict | None = None) -> None:
        state = (training_state(self.model, self.optimizer, self.scheduler, self.state, self._selfsup_state())
                 if training else None)
        save_checkpoint(path, self.config, self.model, epoch, self.state["best_map"], lw, state)

    def spec(self) -> PipelineSpec:
        """The pipeline spec of the trained model (what an index built from the checkpoint uses)."""
        return trained_spec(self.config, self.model)

    def _resume(self) -> tuple[int, int]:
        training = resume_training(self.out, self.config, self.model, self.optimizer, self.scheduler)
        for key in PROGRESS_KEYS:
            self.state[key] = training[key]
        self._restore_selfsup(training.get(SELFSUP))
        self.log(f"resuming from epoch {training['epoch'] + 1}, tuple {training['step']} ({self.out / LAST})")
        return int(training["epoch"]), int(training["step"])

    # --- learned whitening ----------------------------------------------------------------------
    def _learn_whitening(self) -> float | None:
        """Fit Lw on the best model's descriptors of the training pairs (matching: query-positive;
        non-matching: query and its mined hard negatives), store it in best.pt, and return the
        validation mAP with it."""
        best = read_checkpoint(self.out / BEST)
        load_best_weights(self.model, self.config.backbone, self.out / BEST, best)
        ts = self.trainset
        assert ts is not None  # run() learns Lw only with a training set
        queries = ts.queries
        self._mine(queries, self.config.epochs + 1, 0)  # an RNG stream no training epoch uses
        matching = ts.pairs()
        non_matching = [(q, n) for q in queries for n in self._negatives[q]]
        used = sorted({i for pair in matching + non_matching for i in pair})
        where = {i: k for k, i in enumerate(used)}
        vectors = describe(self.model, self.store, [ts.images[i] for i in used])
        dim = self.config.lw_dim
        lw = LearnedWhitening(dim=dim).fit_pairs(vectors, [(where[a], where[b]) for a, b in matching],
                                                 [(where[a], where[b]) for a, b in non_matching])
        arrays: dict[str, Any] = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in lw.arrays().items()}
        arrays["params"] = lw.params()
        lw_map = None
        if self.valset is not None and self.valset.queries:
            raw = describe(self.model, self.store, self.valset.images)
            lw_map = self.valset.mean_ap(lw.transform(raw))
        self._save(self.out / BEST, int(best["matchlens"]["epoch"]), training=False, lw=arrays)
        history = self.state["history"]
        self.log(f"learned whitening Lw from {len(matching)} matching / {len(non_matching)} non-matching pairs"
                 + (f": val mAP {100 * lw_map:.2f} with Lw" if lw_map is not None else ""))
        (self.out / HISTORY).write_text(json.dumps(history + [{"lw_val_map": lw_map}], indent=1))
        return lw_map

    def _plot(self) -> Path | None:
        return plot_curve(self.state["history"], self.out / CURVE)


def _optimizer(model: RetrievalNet, config: TrainConfig) -> torch.optim.Optimizer:
    lr = config.learning_rate
    pool = [p for p in model.pool.parameters() if p.requires_grad]
    # cirtorch: GeM's p learns 10x faster and without weight decay (one scalar, far from 0).
    groups: list[dict[str, Any]] = [{"params": [p for p in model.backbone.parameters() if p.requires_grad]},
                                    {"params": pool, "lr": 10 * lr, "weight_decay": 0.0}]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
