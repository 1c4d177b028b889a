"""``matchlens train --positives selfsup --selfsup moco``: the training run of
:mod:`matchlens.train.trainer` (images, epochs, checkpoints, validation, resume) whose step is
MoCo v2's (:class:`matchlens.train.selfsup.MoCo`) instead of SimCLR's.

The MLP head, the key encoder and the queue live beside the model: exported weights
(``best.pt``) hold the query encoder (backbone + GeM) as every run's do, so ``--weights
OUT/best.pt`` loads it. ``last.pt`` also holds both heads, the key encoder (with its own
BatchNorm statistics), the queue and its pointer, so a resumed run continues exactly where the
interrupted one was (the same weights and queue as a run never interrupted). A ``last.pt`` written
before it kept that state still resumes, with a note: the head restarts, the key encoder restarts
from the resumed weights and the queue refills.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from matchlens.train.checkpoint import LAST
from matchlens.train.config import ProgressFactory, TrainConfig, TrainResult
from matchlens.train.selfsup import MoCo, two_views
from matchlens.train.trainer import _Trainer, train

__all__ = ["train_selfsup"]


def train_selfsup(config: TrainConfig, progress: ProgressFactory | None = None, log: Callable[[str], None] | None = None,
                  on_step: Callable[[int, int], None] | None = None) -> TrainResult:
    """Run (or resume) a training run, with MoCo's step when ``config.selfsup`` is ``moco``
    (every other run is :func:`matchlens.train.train`'s)."""
    if config.selfsup != "moco":
        return train(config, progress=progress, log=log, on_step=on_step)
    return _MoCoTrainer(config, progress, log or (lambda text: None), on_step).run()


class _MoCoTrainer(_Trainer):
    """The run of :mod:`matchlens.train.trainer` with MoCo's loss."""

    moco: MoCo | None = None

    def __init__(self, config: TrainConfig, progress, log, on_step) -> None:
        super().__init__(config, progress, log, on_step)
        self._attach_moco()

    def _attach_moco(self) -> MoCo:
        """Build MoCo around the model once and give its head a parameter group (at the backbone's
        rate), before a resume loads the optimizer state that has that group."""
        if self.moco is None:
            cfg = self.config
            self.moco = MoCo(self.model, self.model.backbone.out_channels, cfg.queue, momentum=cfg.moco_momentum,
                             temperature=cfg.moco_temperature, seed=cfg.seed).to(self.device)
            self.optimizer.add_param_group({"params": list(self.moco.head_q.parameters())})
        return self.moco

    def _resume(self) -> tuple[int, int]:
        self._attach_moco()  # the head's parameter group must exist before the optimizer state loads
        return super()._resume()

    def _selfsup_state(self) -> dict[str, Any] | None:
        return {"moco": self._attach_moco().resume_state()}

    def _restore_selfsup(self, saved: dict[str, Any] | None) -> None:
        moco = self._attach_moco()
        if saved is not None and "moco" in saved:
            moco.load_resume_state(saved["moco"])
            return
        moco.encoder_k.load_state_dict(self.model.state_dict())  # keys from the resumed weights
        self.log(f"{self.out / LAST} holds no MoCo state (an older checkpoint): the head restarts, the key "
                 "encoder restarts from the resumed weights and the queue refills")

    def _selfsup_loss(self, epoch: int, start: int, batch: list[int]) -> float:
        gen = torch.Generator().manual_seed(hash((self.config.seed, epoch, start)) % (2**31))
        view_q, view_k = two_views([self.store.image(self.images[i]) for i in batch], self.config.crop, gen)
        moco = self._attach_moco()
        moco.encoder_k.eval()  # key BatchNorm uses its statistics: no batch leak (MoCo's shuffle-BN on one device)
        loss = moco.step_loss(view_q.to(self.device), view_k.to(self.device))
        loss.backward()
        return float(loss.detach())
