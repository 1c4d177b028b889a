"""``matchlens train-regions``: learn R-MAC's regions on an index, without labels (Gordo et al.).

The head it writes is a pooling's weights: ``matchlens index DIR -i IDX --pooling learned-rmac
--pooling-params head=FILE`` pools every image and query over its regions (see
:mod:`matchlens.train.learned_regions` and docs/contrastive.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from matchlens.cli.common import app, err, out, progress_factory


@app.command("train-regions")
def train_regions_command(
    index_dir: str = typer.Argument(..., help="Index whose images (and descriptors, for the candidate pairs) train the head."),
    out_file: Path = typer.Option(..., "--out", "-o", help="Regions head file to write (head.pt)."),
    epochs: int = typer.Option(3, "--epochs", min=1),
    budget: Optional[float] = typer.Option(None, "--budget", help="Stop after this many process CPU seconds of training (and keep what was learned)."),
    k: int = typer.Option(16, "--k", min=1, help="Learned regions per image (the whole map is always pooled too)."),
    knn: int = typer.Option(10, "--knn", min=1, help="Candidate pairs: each image's nearest neighbours by the index's descriptors."),
    negatives: int = typer.Option(5, "--negatives", min=0, help="Negatives per tuple (nearest neighbours outside the verified group)."),
    min_inliers: int = typer.Option(15, "--min-inliers", min=4, help="Inliers a pair needs to count as verified."),
    max_side: Optional[int] = typer.Option(None, "--max-side", min=32, help="Image side of the training feature maps (default: the index's)."),
    loss: str = typer.Option("box+triplet", "--loss", help="box+triplet (Gordo), box (the head alone), or triplet (no box targets)."),
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="A text file of image paths or names (one per line) to leave out, e.g. a test set's."),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch CPU threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a region proposal head on an index's images (boxes from spatially verified matches)."""
    from matchlens.api import open_index
    from matchlens.train.learned_regions import RegionsHeadConfig, train_regions_head

    losses = {"box+triplet": (1.0, True), "box": (1.0, False), "triplet": (0.0, True)}
    if loss not in losses:
        raise typer.BadParameter(f"choose one of: {', '.join(losses)}", param_hint="--loss")
    if threads:
        import torch  # deferred: the command imports it anyway, --help does not

        torch.set_num_threads(threads)
    idx = open_index(index_dir)
    rows = _kept_rows(idx, exclude) if exclude else None
    config = RegionsHeadConfig(k=k, knn=knn, negatives=negatives, epochs=epochs, budget=budget, lr=lr,
                               rpn_weight=losses[loss][0], triplet=losses[loss][1], seed=seed, max_side=max_side,
                               min_inliers=min_inliers)

    def log(text: str) -> None:
        err.print(f"note: {text}", markup=False, highlight=False)

    with progress_factory(not quiet) as progress:
        report = train_regions_head(idx, out_file, config, rows, progress, log)
    say = lambda text: out.print(text, markup=False, highlight=False)  # noqa: E731
    say(f"{report.images} images: {report.pairs} of {report.candidates} nearest-neighbour pairs verified, "
        f"{report.boxed_images} images with inlier boxes, {report.tuples} tuples")
    say(f"loss per epoch: {', '.join(f'{v:.4f}' for v in report.losses)} ({report.cpu_seconds:.0f} CPU s"
        f"{f', resumed after epoch {report.resumed_from}' if report.resumed_from else ''})")
    say(f"regions head: {report.path}")
    say(f"use it: matchlens index DIR -i NEW_INDEX --preset ... --pooling learned-rmac --pooling-params head={report.path}")


def _kept_rows(idx, exclude: Path) -> list[int]:
    """The index rows whose path (or file name) is not listed in ``exclude``."""
    from matchlens.errors import SourceError

    try:
        listed = {line.strip() for line in exclude.read_text(encoding="utf-8").splitlines() if line.strip()}
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read --exclude {exclude}: {exc}") from None
    rows = [r for r in range(idx.size) if not ({idx.entry_for_row(r).path, Path(idx.entry_for_row(r).path).name,
                                                 Path(idx.entry_for_row(r).path).stem} & listed)]
    err.print(f"note: --exclude leaves out {idx.size - len(rows)} of {idx.size} images", markup=False, highlight=False)
    return rows
