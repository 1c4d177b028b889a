"""Files of a training run: atomic checkpoint writes, the training set as JSON, the curve PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matchlens.errors import MatchlensError
from matchlens.fileio import atomic_write, write_json_atomic
from matchlens.train.positives import TrainingSet

__all__ = ["atomic_torch_save", "load_trainset", "plot_curve", "save_trainset"]


def atomic_torch_save(content: Any, path: Path) -> None:
    """``torch.save`` to a temporary sibling, fsync, then rename: a crash leaves the old file whole."""
    try:
        with atomic_write(path, "wb") as handle:
            torch.save(content, handle)
    except OSError as exc:
        raise MatchlensError(f"could not write checkpoint {path}: {exc.strerror or exc}") from None


def save_trainset(path: Path, trainset: TrainingSet) -> None:
    data = {"images": trainset.images, "groups": trainset.groups.tolist(),
            "positives": {str(k): v for k, v in trainset.positives.items()},
            "excluded": {str(k): sorted(v) for k, v in trainset.excluded.items()},
            "pool": trainset.pool, "source": trainset.source, "notes": trainset.notes}
    write_json_atomic(path, data)


def load_trainset(path: Path) -> TrainingSet:
    try:
        data = json.loads(path.read_text())
        return TrainingSet(data["images"], np.asarray(data["groups"], np.int64),
                           {int(k): v for k, v in data["positives"].items()},
                           {int(k): set(v) for k, v in data["excluded"].items()},
                           data["pool"], data["source"], data.get("notes", []))
    except (OSError, ValueError, KeyError) as exc:
        raise MatchlensError(f"cannot read {path} ({exc}); delete the --out folder to start over") from None


def plot_curve(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss and validation mAP per epoch as a PNG (None when there is nothing to plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    if not epochs:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    loss = [(h["epoch"], h["loss"]) for h in history if h.get("loss") is not None]
    if loss:
        ax.plot(*zip(*loss), "o-", color="tab:red", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    val = [(h["epoch"], 100 * h["val_map"]) for h in history if h.get("val_map") is not None]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "s-", color="tab:blue", label="validation mAP")
        ax2.set_ylabel("validation mAP (%)")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title("matchlens train")
    fig.tight_layout()
    try:
        with atomic_write(path, "wb") as handle:
            fig.savefig(handle, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
