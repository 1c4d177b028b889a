"""Fine-tuning for retrieval (``matchlens train``): tuple datasets, positives with or without labels,
hard-negative mining, contrastive/triplet/NT-Xent losses, the trainer, learned whitening Lw.

See :mod:`matchlens.train.trainer` for the run layout and defaults (P3, LITERATURE.md "Fine-tuning"),
:mod:`matchlens.train.config` for a run's options, :mod:`matchlens.train.checkpoint` for its checkpoints.
"""

from matchlens.train.config import POSITIVE_SOURCES, TrainConfig, TrainingInterrupted, TrainResult
from matchlens.train.losses import contrastive_loss, nt_xent_loss, triplet_loss, tuple_loss
from matchlens.train.mining import mine_negatives
from matchlens.train.positives import TrainingSet
from matchlens.train.trainer import train

__all__ = ["POSITIVE_SOURCES", "TrainConfig", "TrainResult", "TrainingInterrupted", "TrainingSet",
           "contrastive_loss", "mine_negatives", "nt_xent_loss", "train", "triplet_loss", "tuple_loss"]
