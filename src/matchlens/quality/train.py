"""What ``matchlens train-quality`` runs: fit the quality head on labels, and (optionally) train the
enhancers — MSE pre-training, then fine-tuning through the frozen quality network."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from matchlens.errors import SourceError
from matchlens.io.degrade import gaussian_noise
from matchlens.io.images import load_image
from matchlens.pipeline import Index
from matchlens.quality.dncnn import DnCNN, default_size, make_pairs, train_mse
from matchlens.quality.enhance import LAMBDA_MSE, finetune_qa
from matchlens.quality.labels import Labelled
from matchlens.quality.net import QualityHead, QualityNet, train_head
from matchlens.quality.patches import MAX_SIDE, PATCH
from matchlens.quality.sr import sr_degrade
from matchlens.quality.store import QualityModel, target_of

__all__ = ["LOW_SHARE", "NOISE_RANGE", "enhancer_degradation", "fit_enhancer", "fit_quality", "label_arrays",
           "training_images"]

LOW_SHARE = 0.5            # "low quality": predicted AP below half the mean AP of clean queries
NOISE_RANGE = (15.0, 90.0)  # σ (0–255) the generic denoiser is trained on, uniform per patch
Advance = Callable[[int], None] | None


def label_arrays(labels: Sequence[Labelled]) -> tuple[np.ndarray, np.ndarray]:
    """Patch features and their image's AP (labels without positives, AP NaN, are left out)."""
    kept = [lab for lab in labels if not math.isnan(lab.ap)]
    if not kept:
        raise SourceError("no labelled query has a positive in the index: nothing to train the quality model on")
    features = np.concatenate([lab.features for lab in kept]).astype(np.float32)
    targets = np.concatenate([np.full(len(lab.features), lab.ap, np.float32) for lab in kept])
    return features, targets


def fit_quality(index: Index, labels: Sequence[Labelled], epochs: int = 60, seed: int = 0, advance: Advance = None,
                info: dict | None = None) -> QualityModel:
    """Fit the head (MAE on patches labelled with their image's AP) and set the low-quality threshold."""
    features, targets = label_arrays(labels)
    head = QualityHead(features.shape[1])
    losses = train_head(head, features, targets, epochs=epochs, seed=seed, advance=advance)
    clean = [lab.ap for lab in labels if lab.variant == "clean" and not math.isnan(lab.ap)]
    low = LOW_SHARE * (float(np.mean(clean)) if clean else float(np.mean(targets)))
    details = {"labels": len(labels), "patches": int(len(targets)), "epochs": epochs, "final_mae": round(losses[-1], 4),
               "mean_clean_ap": round(float(np.mean(clean)), 4) if clean else None, **(info or {})}
    return QualityModel(head, target_of(index), low, details)


def training_images(index: Index, count: int, seed: int = 0) -> list[Image.Image]:
    """Up to ``count`` indexed photos (sampled), at the query side, large enough for a patch."""
    entries = [e for e in index.entries if e.status == "indexed"]
    rng = np.random.default_rng(seed)
    chosen = [entries[i] for i in sorted(rng.choice(len(entries), min(count, len(entries)), replace=False))]
    images = [load_image(e.path, max_side=MAX_SIDE) for e in chosen]
    return [im for im in images if min(im.size) >= PATCH]


def enhancer_degradation(kind: str) -> Callable[[Image.Image, int], Image.Image]:
    """The training degradation of an enhancer kind: noise with σ drawn per patch, or ×4 SR input."""
    if kind == "sr":
        return sr_degrade

    def noisy(image: Image.Image, seed: int) -> Image.Image:
        sigma = float(np.random.default_rng(seed).uniform(*NOISE_RANGE))
        return gaussian_noise(image, sigma, seed)
    return noisy


def fit_enhancer(kind: str, images: Sequence[Image.Image], net: QualityNet | None, pairs: int = 2000, epochs: int = 3,
                 qa_pairs: int = 256, qa_epochs: int = 1, lam: float = LAMBDA_MSE, size: tuple[int, int] | None = None,
                 seed: int = 0, advance: Advance = None) -> DnCNN:
    """Train a DnCNN-architecture enhancer with the MSE on 40-px patch pairs, then (with ``net``)
    fine-tune it through the frozen quality network on 128-px pairs (eq. 3)."""
    degrade = enhancer_degradation(kind)
    model = DnCNN(*(size or default_size()))
    noisy, clean = make_pairs(images, degrade, pairs, 40, seed)
    train_mse(model, noisy, clean, epochs=epochs, seed=seed, advance=advance)
    if net is not None and qa_pairs > 0:
        noisy, clean = make_pairs(images, degrade, qa_pairs, PATCH, seed + 1)
        finetune_qa(model, net, noisy, clean, lam=lam, epochs=qa_epochs, seed=seed, advance=advance)
    return model
