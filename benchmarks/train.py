"""Training speed: seconds per epoch of `matchlens train` (tuples, mining, optimizer steps).

Trains the embedded backbone on ../shared/data/oxford5k_subset ground truth for one epoch per
configuration (no validation, no Lw, so the time is the epoch itself: negative mining from the
random pool plus forward/backward of every tuple image) and prints a table with the device
(CUDA when PyTorch sees a GPU, else CPU), the machine load, and the seconds per epoch / tuple.

    python benchmarks/train.py [--data ../shared/data] [--tuples 10] [--sides 160,224] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def time_epoch(data: Path, side: int, tuples: int, pool: int, threads: int | None, loss: str) -> dict:
    """One training epoch of ``tuples`` tuples at ``side`` px; returns its timings."""
    from matchlens.train import TrainConfig, train

    with tempfile.TemporaryDirectory(prefix="matchlens-bench-train-") as tmp:
        config = TrainConfig(data=str(data), out=tmp, max_side=side, tuples=tuples, batch=5, epochs=1, remine=1,
                             pool_size=pool, lw=False, threads=threads, loss=loss)
        result = train(config)
    seconds = result.history[1]["seconds"]
    return {"side": side, "tuples": tuples, "pool": pool, "loss": loss, "seconds": seconds,
            "per_tuple": seconds / tuples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--tuples", type=int, default=10)
    parser.add_argument("--pool", type=int, default=100, help="negative pool mined per epoch")
    parser.add_argument("--sides", default="160,224")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--loss", default="contrastive")
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    rows = [time_epoch(args.data / "oxford5k_subset", int(s), args.tuples, args.pool, args.threads, args.loss)
            for s in args.sides.split(",")]
    load = os.getloadavg()
    table = Table(title=f"matchlens train: one epoch, tuples of 1+1+5 images, device {device}, "
                        f"torch threads {torch.get_num_threads()}, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    for column in ("max side", "tuples", "negative pool", "loss", "s / epoch", "s / tuple"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(str(r["side"]), str(r["tuples"]), str(r["pool"]), r["loss"], f"{r['seconds']:.1f}",
                      f"{r['per_tuple']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
