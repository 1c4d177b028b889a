"""What a training run learns and validates from: the dataset at DATA (or a plain folder), the
images of a label-free run, the training set of tuples for each ``--positives`` source, and the
validation set (``--val-data`` or ``--val-groups``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from matchlens.errors import ConfigError, MatchlensError, SourceError
from matchlens.io.collection import scan_source
from matchlens.io.formats import detect_format, load_dataset
from matchlens.train import positives as sources
from matchlens.train.config import ProgressFactory, TrainConfig
from matchlens.train.model import ImageStore, RetrievalNet, describe
from matchlens.train.positives import TrainingSet, holdout_images
from matchlens.train.validation import ValidationSet, validation_from_dataset


def maybe_dataset(data: str, dataset_format: str | None):
    """The dataset at ``data`` (gt.json or an official layout), or None for a plain folder."""
    if not Path(data).expanduser().exists():
        raise SourceError(f"training data '{data}' does not exist")
    if dataset_format is None:
        try:
            dataset_format = detect_format(data)
        except MatchlensError:
            return None
    return load_dataset(data, dataset_format)


def unlabeled_images(config: TrainConfig, dataset) -> list[str]:
    """The images of a label-free run: the dataset's images minus held-out groups, or a folder."""
    if dataset is not None:
        drop = holdout_images(dataset, set(config.holdout_groups))
        return [str(dataset.image_path(n)) for n in dataset.images if n not in drop]
    images = scan_source(config.data)
    if not images:
        raise SourceError(f"no images in '{config.data}'")
    return images


def build_trainset(config: TrainConfig, dataset, model: RetrievalNet, store: ImageStore,
                   progress: ProgressFactory | None) -> TrainingSet:
    """The training set from ``config.positives``: ground truth, group folders, or pairs found
    without labels (spatial verification or manifold neighbours of the initial model's descriptors)."""
    if config.positives == "gt":
        if dataset is None:
            raise ConfigError(f"'{config.data}' has no ground truth (gt.json or an official layout); "
                              "use --positives folders, sv, manifold or selfsup")
        train = set(config.train_groups) if config.train_groups else None
        return sources.from_dataset(dataset, train, set(config.holdout_groups))
    if config.positives == "folders":
        return sources.from_group_folders(config.data)
    images = unlabeled_images(config, dataset)
    advance = progress(len(images), "describing (initial model)") if progress else None
    vectors = describe(model, store, images, advance)
    if config.positives == "sv":
        n_pairs = len(sources._knn_pairs(vectors, config.knn))
        advance = progress(n_pairs, "verifying pairs") if progress else None
        return sources.from_verification(images, vectors, k=config.knn, min_inliers=config.min_inliers,
                                         advance=advance)
    return sources.from_manifold(images, vectors, anchors=config.anchors, k=max(config.knn, 5))


def validation_set(config: TrainConfig, dataset) -> ValidationSet | None:
    """The validation set: ``--val-data``'s dataset, else ``--val-groups`` of the training dataset
    (without the other held-out groups' images), else None."""
    if config.val_data:
        return validation_from_dataset(load_dataset(config.val_data))
    if config.val_groups:
        if dataset is None:
            raise ConfigError("--val-groups needs a dataset with ground truth as DATA")
        hidden = set(config.holdout_groups) - set(config.val_groups)
        drop = holdout_images(dataset, hidden)
        dataset = dataclasses.replace(dataset, images=tuple(n for n in dataset.images if n not in drop))
        return validation_from_dataset(dataset, set(config.val_groups))
    return None
