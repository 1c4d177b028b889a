"""``matchlens train-recognizer``: retrieve, then identify (BBN, SICoT; see docs/recognition.md).

``matchlens search IDX QUERY --identify rec.pt|knn:LABELS`` (in :mod:`matchlens.cli.searching`)
prints the prediction above the ranked results; :func:`print_prediction` is shared with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from matchlens.cli.common import app, err, out, progress_factory


@app.command("train-recognizer")
def train_recognizer_command(
    data: Path = typer.Argument(..., help="Labelled images: a folder with one sub-folder per class, or a labels CSV (path,label rows)."),
    out_file: Path = typer.Option(..., "--out", "-o", help="Recognizer file to write (rec.pt)."),
    method: str = typer.Option("ce", "--method", help="{recognizers} (ce: plain; rs: class-balanced re-sampling; rw: inverse-frequency re-weighting; bbn: bilateral branches)."),
    titles: Optional[Path] = typer.Option(None, "--titles", help="SICoT: a CSV of path,title rows; the titles co-train the visual features (used in training only)."),
    words: str = typer.Option("minilm", "--words", help="Title word vectors: minilm (fixed MiniLM word-piece table) or learned."),
    lam: float = typer.Option(1.0, "--lambda", help="SICoT: weight λ of the mixed stream's loss."),
    backbone: str = typer.Option("tf_efficientnet_lite0", "--backbone", help="Backbone (an EfficientNet-Lite: its last stage is trained)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Backbone weights file (default: the embedded ones)."),
    size: int = typer.Option(224, "--size", help="Square input side in pixels."),
    epochs: int = typer.Option(30, "--epochs"),
    batch: int = typer.Option(32, "--batch"),
    lr: float = typer.Option(0.01, "--lr", help="SGD learning rate (cosine schedule)."),
    full: Optional[bool] = typer.Option(None, "--full/--frozen-trunk", help="Train the whole network (default when a GPU is present) or only the last stage and heads on frozen-trunk features (default on CPU)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Predictions below this confidence are marked uncertain."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch CPU threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a long-tailed recognizer on labelled images, for 'matchlens search --identify'."""
    from matchlens.recognize import RecognizerConfig, train_recognizer

    config = RecognizerConfig(data=str(data), out=str(out_file), method=method, titles=str(titles) if titles else None,
                              words=words, lam=lam, backbone=backbone, weights=str(weights) if weights else None,
                              size=size, epochs=epochs, batch=batch, lr=lr, seed=seed, full=full, threshold=threshold,
                              threads=threads)

    def log(text: str) -> None:
        err.print(f"note: {text}", markup=False, highlight=False)

    with progress_factory(not quiet) as progress:
        result = train_recognizer(config, progress, log)
    counts = sorted(result.counts, reverse=True)
    out.print(f"{len(result.classes)} classes, {sum(counts)} images (largest {counts[0]}, smallest {counts[-1]}, "
              f"imbalance {counts[0] / max(counts[-1], 1):.0f}); method {method}"
              f"{' + SICoT titles' if titles else ''}; trained: {'whole network' if result.trunk_trained else 'last stage and heads (frozen trunk)'}",
              markup=False, highlight=False)
    out.print(f"loss per epoch: first {result.losses[0]:.4f}, last {result.losses[-1]:.4f} ({result.seconds:.0f} s)",
              markup=False, highlight=False)
    out.print(f"recognizer: {result.path}", markup=False, highlight=False)


def print_prediction(prediction, console=None) -> None:
    """One line (and the runners-up) above the ranked results."""
    console = console or out
    if not prediction.label:
        console.print("identified: nothing (no labelled image among the results)", markup=False, highlight=False)
        return
    flag = "  (uncertain: below the threshold; may be a class it does not know)" if prediction.uncertain else ""
    others = ", ".join(f"{c} {p:.2f}" for c, p in prediction.top[1:])
    console.print(f"identified: {prediction.label} (confidence {prediction.confidence:.2f}, {prediction.source})"
                  f"{flag}{'; then ' + others if others else ''}", markup=False, highlight=False)
