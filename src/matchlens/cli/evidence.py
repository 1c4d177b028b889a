"""Indicative retrieval in the CLI: train-verifier, explain."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from matchlens.cli.common import (app, out, progress_factory)


@app.command("train-verifier")
def train_verifier_command(
    source: Path = typer.Argument(..., help="A dataset (gt.json or an official layout: ground-truth pairs) or any image folder (label-free pairs)."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Checkpoint file to write."),
    label_free: bool = typer.Option(False, "--label-free", help="Ignore any ground truth: two altered views of one image = relevant."),
    dataset_format: Optional[str] = typer.Option(None, "--format", help="Dataset layout (auto-detected when omitted)."),
    pairs: int = typer.Option(400, "--pairs", min=4, help="Training pairs (half relevant)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=3, help="Label-free: use at most this many images."),
    grid: str = typer.Option("8x8", "--grid", help="Patch grid ROWSxCOLS."),
    patch_px: int = typer.Option(12, "--patch-px", min=1, help="Pixels per patch side (raw-pixel descriptors)."),
    features: str = typer.Option("pixels", "--features", help="Patch descriptors: pixels (P0) or backbone (feature-map cells)."),
    backbone: str = typer.Option("tf_efficientnet_lite0", "--backbone", help="Backbone for --features backbone."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Tensor channels, comma-separated, from {metrics} (default: all)."),
    arch: str = typer.Option("resnet18", "--arch", help="resnet18 (reshaped (mn)x(mn) tensor) or conv4d."),
    har: bool = typer.Option(True, "--har/--no-har", help="Hypersphere attention regulation on every layer."),
    epochs: int = typer.Option(4, "--epochs", min=1),
    batch: int = typer.Option(16, "--batch", min=2),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train the indicative verifier (P0) from scratch and save a checkpoint carrying its configuration."""
    from matchlens.api import train_verifier
    from matchlens.evidence.config import VerifierConfig, parse_grid
    from matchlens.evidence.train import TrainSettings

    rows, cols = parse_grid(grid)
    config = VerifierConfig(rows=rows, cols=cols, patch_px=patch_px, source=features, backbone=backbone,
                            metrics=_metrics(metrics), arch=arch, har=har)
    with progress_factory(not quiet) as progress:
        result, origin = train_verifier(source, out_path, config, TrainSettings(epochs=epochs, batch=batch, lr=lr, seed=seed),
                                        pairs=pairs, label_free=label_free or None, dataset_format=dataset_format,
                                        limit=limit, device=device, progress=progress)
    last = result.history[-1]
    figures = ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k != "epoch")
    out.print(f"verifier: {out_path} ({origin}; {result.seconds:.0f} s; last epoch: {figures})",
              markup=False, highlight=False)


@app.command()
def explain(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    query: Path = typer.Argument(..., help="Query image file."),
    result: str = typer.Argument(..., help="The result: an image file, an index row id or an indexed file name."),
    model: Path = typer.Option(..., "--model", "-m", help="Verifier checkpoint (matchlens train-verifier)."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: explain_<query>_<result>.png)."),
    box: Optional[str] = typer.Option(None, help="Query box x0,y0,x1,y1."),
) -> None:
    """Write a side-by-side PNG: where the result matches the query (heatmap on each)."""
    from matchlens.api import explain as explain_api
    from matchlens.io.images import parse_box

    target = out_path or Path(f"explain_{query.stem}_{Path(result).stem}.png")
    explanation = explain_api(index_dir, query, result, model, box=parse_box(box) if box else None, out=target)
    out.print(f"score {explanation.score:.4f}; evidence: {target}", markup=False, highlight=False)


def _metrics(text: Optional[str]) -> tuple[str, ...]:
    """The verifier's tensor channels: the given ones, or every registered patch metric."""
    from matchlens.evidence.config import METRIC_NAMES

    return tuple(m.strip() for m in text.split(",") if m.strip()) if text else METRIC_NAMES
