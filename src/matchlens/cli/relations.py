"""``matchlens import-boxes`` and ``matchlens train-relations``, and the ``--relation`` query of
``matchlens search``: scene-graph retrieval over an index's box annotations (matchlens.queries)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from matchlens.cli.common import app, err, out, print_answer, progress_factory


@app.command("import-boxes")
def import_boxes(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    coco_json: Path = typer.Argument(..., help="COCO-format JSON: images (file_name), categories, annotations (bbox)."),
) -> None:
    """Store box annotations for the index's images (each file_name names one indexed image by its
    path or the end of it); a file naming images the index lacks is refused."""
    from matchlens.api import open_index
    from matchlens.queries.coco import import_boxes as run_import

    report = run_import(open_index(index_dir).store, coco_json)
    out.print(f"imported {report.boxes} boxes of {len(report.categories)} categories for {report.images} images "
              f"into {report.path}", markup=False, highlight=False)


@app.command("train-relations")
def train_relations(
    index_dir: Path = typer.Argument(..., help="Index folder with imported boxes (matchlens import-boxes)."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="Model file to write (default: stored with the index, IDX/relations/model.pt, which 'search --relation' uses)."),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Passes over the annotated images."),
    no_triplet: bool = typer.Option(False, "--no-triplet", help="Train on the layout (box) loss only: the paper's 'NoTriplet' model."),
    max_objects: int = typer.Option(8, "--max-objects", min=2, help="Largest boxes kept per image (an image gives n(n-1) triplets)."),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train the scene-graph embedding network (graph convolutions over ⟨subject, predicate, object⟩
    with box, triplet-mask and superbox heads) on the index's box annotations."""
    import torch

    from matchlens.api import open_index
    from matchlens.queries.rel_train import TrainSettings, index_model_path, train_on_index

    index = open_index(index_dir)
    target = out_path or index_model_path(index)
    settings = TrainSettings(epochs=epochs, triplet=not no_triplet, max_objects=max_objects, seed=seed)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))  # small graphs: more threads only contend
    with progress_factory(not quiet) as progress:
        model = train_on_index(index.store, settings, progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    model.save(target)
    losses = ", ".join(f"{k} {v:.4f}" for k, v in model.facts["final_losses"].items())
    out.print(f"{model.describe()}: {model.facts['scenes']} images, {model.facts['epochs']} epochs in "
              f"{model.facts['seconds']:.0f} s (final losses: {losses}) -> {target}", markup=False, highlight=False)


def relation_search(index_dir: Path, query: Optional[str], queries: Optional[Path], relation: str,
                    model_path: Optional[Path], structure: str, k: int, rerank: Optional[str], as_json: bool,
                    jsonl: bool) -> None:
    """``matchlens search IDX --relation "cube left of sphere"``: rank by the relation through the
    search pipeline and print the results as a photo search does."""
    from matchlens.api import open_index
    from matchlens.errors import ConfigError
    from matchlens.queries.rel_search import relation_searcher

    if query is not None or queries is not None:
        raise ConfigError("--relation is the query: give no query image and no --queries with it")
    if rerank:
        raise ConfigError("--rerank needs a query image; a relation query is ranked by its scene graphs only")
    index = open_index(index_dir)
    searcher = relation_searcher(index, model_path, structure)
    answer = searcher.relation(relation, k)
    print_answer(answer, f"'{relation}' in {index.root.name} ({searcher.describe()})", as_json, jsonl)
    for note in searcher.notes():
        err.print(f"note: {note}", markup=False, highlight=False)
