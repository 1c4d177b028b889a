"""``matchlens train``: fine-tune a backbone + GeM for retrieval."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from matchlens.cli.common import (WeightsOpt, _names, app, err, out, progress_factory)


@app.command("train")
def train_command(
    data: Path = typer.Argument(..., help="Dataset with ground truth (gt.json / official layout), a folder per group, or a folder of images."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, history, curve (an existing run resumes)."),
    positives: str = typer.Option("gt", help="gt | folders | sv (spatially verified kNN pairs) | manifold (kNN + diffusion) | selfsup (two views)."),
    dataset_format: Optional[str] = typer.Option(None, "--format", help="Dataset layout (auto-detected)."),
    train_groups: Optional[str] = typer.Option(None, "--train-groups", help="gt: comma-separated groups to train on (default all)."),
    val_groups: Optional[str] = typer.Option(None, "--val-groups", help="Groups of DATA whose queries validate each epoch."),
    holdout_groups: Optional[str] = typer.Option(None, "--holdout-groups", help="Groups whose images are never used for training (test landmarks)."),
    val_data: Optional[str] = typer.Option(None, "--val-data", help="Another dataset to validate on each epoch."),
    backbone: str = typer.Option("tf_efficientnet_lite0", help="Backbone to fine-tune."),
    weights: Optional[str] = WeightsOpt,
    max_side: int = typer.Option(320, "--max-side", help="Training (and indexing) resolution, longest side."),
    loss: str = typer.Option("contrastive", help="{losses} (margins: contrastive 0.7, triplet 0.1)."),
    margin: Optional[float] = typer.Option(None, help="Loss margin (default per loss)."),
    negatives: int = typer.Option(5, help="Hard negatives per tuple."),
    tuples: int = typer.Option(50, help="Tuples per epoch (images per epoch with selfsup)."),
    batch: int = typer.Option(5, help="Tuples per optimizer step (images per batch with selfsup)."),
    epochs: int = typer.Option(3, help="Epochs (raise it to continue a finished run)."),
    remine: int = typer.Option(3, help="Re-mine hard negatives this many times per epoch."),
    pool_size: int = typer.Option(2000, "--pool-size", help="Random negative pool drawn at each mining."),
    optimizer: str = typer.Option("sgd", help="sgd (lr 1e-3, momentum 0.9) | adam (lr 1e-6)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default per optimizer)."),
    bn: str = typer.Option("frozen", help="BatchNorm: frozen | train | reestimate (statistics recomputed each epoch)."),
    lw: bool = typer.Option(True, "--lw/--no-lw", help="Learn whitening Lw from the training pairs into the best checkpoint."),
    save_every: int = typer.Option(0, "--save-every", help="Also checkpoint every N optimizer steps (0: each epoch)."),
    knn: int = typer.Option(5, help="sv/manifold: nearest neighbours checked per image."),
    min_inliers: int = typer.Option(20, "--min-inliers", help="sv: inliers that confirm a pair."),
    regions: Optional[str] = typer.Option(None, "--regions", help="Per-region fine-tuning (PS-Net eq. 2): the tuple loss summed over this fixed layout's regions (garment5, grid2x2, grid3x3: the cells the regional kind pools)."),
    sampler: str = typer.Option("uniform", "--sampler", help="How tuples' queries are drawn: {samplers} (reversed: BBN's P ∝ N_max/N_group, landmarks with few images drawn more often)."),
    selfsup: str = typer.Option("simclr", "--selfsup", help="selfsup: {selfsups} (simclr: NT-Xent in the batch; moco: MoCo v2, momentum encoder, queue, MLP head)."),
    queue: int = typer.Option(4096, "--queue", help="selfsup moco: keys kept as negatives."),
    moco_momentum: float = typer.Option(0.999, "--moco-momentum", help="selfsup moco: key encoder momentum m."),
    seed: int = typer.Option(0, help="Random seed."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (default: torch's choice)."),
    restart: bool = typer.Option(False, "--restart", help="Discard an existing run in --out instead of resuming it."),
    eval_data: List[str] = typer.Option([], "--eval", help="After training, evaluate before/after on this dataset (repeatable)."),
    eval_groups: Optional[str] = typer.Option(None, "--eval-groups", help="Also report mAP over the queries of these groups only."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Fine-tune a backbone + GeM for retrieval (contrastive/triplet, hard negatives); resumes; evaluates."""
    from matchlens.api import train
    from matchlens.train import TrainConfig

    config = TrainConfig(
        data=str(data.expanduser().resolve()), out=str(out_dir), positives=positives, dataset_format=dataset_format,
        train_groups=_names(train_groups), val_groups=_names(val_groups), holdout_groups=_names(holdout_groups) or [],
        val_data=str(Path(val_data).expanduser().resolve()) if val_data else None, backbone=backbone,
        weights=str(Path(weights).expanduser().resolve()) if weights else None, max_side=max_side, loss=loss,
        margin=margin, negatives=negatives, tuples=tuples, batch=batch, epochs=epochs, remine=remine,
        pool_size=pool_size, optimizer=optimizer, lr=lr, bn=bn, lw=lw, save_every=save_every, seed=seed, threads=threads,
        knn=knn, min_inliers=min_inliers, sampler=sampler, regions=regions,
        selfsup=selfsup, queue=queue, moco_momentum=moco_momentum)
    if restart:  # after the options were validated: a typo must not delete a run
        for name in ("last.pt", "best.pt", "trainset.json", "history.json", "curve.png"):
            (out_dir / name).unlink(missing_ok=True)
    say = lambda text: err.print(text, markup=False, highlight=False)  # noqa: E731
    with progress_factory(not quiet) as progress:
        result = train(config, progress=progress, log=say)
    best = "n/a" if result.best_map is None else f"{100 * result.best_map:.2f}"
    out.print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}, val mAP {best})", markup=False, highlight=False)
    if result.lw_map is not None:
        out.print(f"val mAP with learned whitening: {100 * result.lw_map:.2f}", markup=False, highlight=False)
    if result.curve:
        out.print(f"training curve: {result.curve}", markup=False, highlight=False)
    out.print(f"use it: matchlens index DIR -i INDEX --weights {result.best_checkpoint} [--whitening lw]", markup=False, highlight=False)
    if eval_data:
        from matchlens.train.evaluation import evaluate_before_after

        with progress_factory(not quiet) as progress:
            rows = evaluate_before_after(result.best_checkpoint, eval_data, _names(eval_groups) or (), progress=progress)
        table = Table("dataset", "pipeline", "mAP", "queries", "groups mAP", "N-S")
        fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
        for row in rows:
            table.add_row(row["dataset"], row["pipeline"], fmt(row["mAP"]), str(row["queries"]),
                          fmt(row["groups_mAP"]), fmt(row["N-S"]))
        out.print(table)
