"""``matchlens train-composer`` and the ``--modify`` query of ``matchlens search``: a reference image
plus a modification text, composed (TIRG) into the index's own descriptor space (matchlens.queries)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from matchlens.cli.common import app, out, progress_factory


@app.command("train-composer")
def train_composer(
    triplets: Path = typer.Argument(..., help="CSV with columns reference,text,target (image paths relative to the CSV's folder)."),
    index_dir: Path = typer.Option(..., "--index", help="The index whose descriptor space the composer maps into (all triplet images must be in it)."),
    out_path: Path = typer.Option(..., "--out", help="Model file to write (e.g. tirg.pt)."),
    composer: str = typer.Option("tirg", "--composer", help="Composer: {composers}."),
    text: str = typer.Option("lstm", "--text", help="Text encoder: {text_encoders}."),
    text_params: Optional[str] = typer.Option(None, "--text-params", help="Text encoder parameters, e.g. tokens=words,embed=128."),
    loss: str = typer.Option("triplet", "--loss", help="TIRG's losses: {composer_losses} (triplet: K=2 soft triplet; softmax: K=B batch classification)."),
    epochs: int = typer.Option(30, "--epochs", min=1, help="Passes over the triplets."),
    batch: int = typer.Option(32, "--batch", min=2, help="Triplets per step (the other targets of a batch are the negatives)."),
    lr: float = typer.Option(1e-3, "--lr", min=0.0, help="Adam learning rate."),
    text_dim: int = typer.Option(512, "--text-dim", min=1, help="Width of the text vector."),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a composer (TIRG by default) on (reference, text, target) triplets of an index: the
    query 'reference image + text' is mapped onto the target's stored descriptor, so
    'matchlens search IDX REF --modify TEXT --composer OUT' searches the index as it is."""
    import torch

    from matchlens.api import open_index
    from matchlens.config import parse_params
    from matchlens.queries.modify_train import ComposerSettings, train_from_index

    settings = ComposerSettings(composer=composer, text=text, loss=loss, text_dim=text_dim, epochs=epochs, batch=batch,
                                lr=lr, seed=seed, text_params=parse_params(text_params))
    index = open_index(index_dir)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))  # small layers: more threads only contend
    with progress_factory(not quiet) as progress:
        model, found = train_from_index(index, triplets, settings, progress)
    model.save(out_path)
    info = model.info
    out.print(f"{info['composer']} ({info['text']} text, {info['loss']} loss): {len(found)} triplets, {info['epochs']} "
              f"epochs in {60 * info['minutes']:.0f} s, final loss {info['final_loss']} -> {out_path}",
              markup=False, highlight=False)


def modified_searcher(idx: Any, modify: Optional[str], composer_path: Optional[Path]) -> Any:
    """The search pipeline of ``idx`` whose query is the reference composed with ``modify``
    (``matchlens search IDX REF --modify TEXT --composer MODEL``)."""
    from matchlens.errors import ConfigError
    from matchlens.queries.modify import load_composer, modified_pipeline

    if modify is None:
        raise ConfigError("--composer goes with --modify TEXT (the modification of the query image)")
    if composer_path is None:
        raise ConfigError("--modify needs --composer MODEL (trained by matchlens train-composer)")
    return modified_pipeline(idx, load_composer(composer_path), modify, composer_path)
