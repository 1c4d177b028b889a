"""``matchlens train-text`` and the ``--text`` query of ``matchlens search``: sentence → image search
by a joint embedding over the index's own descriptors, re-ranked by CAMP or CAAN (matchlens.queries)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from matchlens.cli.common import app, out, print_answer, progress_factory


@app.command("train-text")
def train_text(
    captions: Path = typer.Argument(..., help="CSV with columns image,caption (image paths relative to the CSV's folder, or file names of indexed images); a split column keeps --split rows."),
    index_dir: Path = typer.Option(..., "--index", help="The index whose descriptor space the joint embedding maps into (the captioned images must be in it)."),
    out_path: Path = typer.Option(..., "--out", help="Text model file (e.g. text.pt); --model camp/caan adds its re-ranker to it."),
    model: str = typer.Option("joint", "--model", help="joint (the searchable embedding; first) | camp | caan (re-rankers of its shortlist)."),
    encoder: str = typer.Option("bigru", "--encoder", help="With --model joint: the text encoder, {text_encoders}."),
    regions: str = typer.Option("grid", "--regions", help="With camp/caan: image regions, grid (R-MAC grid on the backbone map) | boxes (--boxes)."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="With --regions boxes: COCO-format JSON of the images' boxes."),
    side: int = typer.Option(256, "--side", min=32, max=2048, help="With camp/caan: longest side (px) the backbone map for the regions is computed at."),
    split: Optional[str] = typer.Option("train", "--split", help="Rows of this split only when the CSV has a split column ('' for all)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Passes over the captions (default 20 joint, 10 camp/caan)."),
    no_gate: bool = typer.Option(False, "--no-gate", help="CAMP ablation: fusion without the adaptive gates."),
    all_negatives: bool = typer.Option(False, "--all-negatives", help="Ablation: loss over all in-batch negatives instead of the hardest."),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train the text → image models on captions of indexed images: first the joint embedding
    (VSE++ hinge, hardest negatives), then optionally CAMP / CAAN re-rankers into the same file;
    'matchlens search IDX --text "..." --text-model OUT [--rerank camp:k=100]' then searches."""
    import torch

    from matchlens.api import open_index
    from matchlens.queries.text_data import read_captions
    from matchlens.queries.text_train import train_text as run

    index = open_index(index_dir)
    found = read_captions(captions, index, split or None)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))  # small layers: more threads only contend
    with progress_factory(not quiet) as progress:
        trained = run(index, found, out_path, model, encoder, epochs, regions, boxes, not no_gate, not all_negatives,
                      seed, progress, side)
    facts = trained.facts.get(model, {})
    out.print(f"{model}: {facts.get('captions', len(found))} captions, {facts.get('epochs')} epochs in "
              f"{facts.get('train_seconds')} s -> {out_path} (re-rankers: {', '.join(trained.cross) or 'none'})",
              markup=False, highlight=False)


def text_search(index_dir: Path, query: Optional[str], queries: Optional[Path], text: str, text_model: Optional[Path],
                k: int, rerank: Optional[str], as_json: bool, jsonl: bool) -> None:
    """``matchlens search IDX --text "..." --text-model MODEL``: print the ranked images."""
    from matchlens.api import open_index
    from matchlens.errors import ConfigError
    from matchlens.queries.text_search import open_text_search

    if query is not None or queries is not None:
        raise ConfigError("--text is the query: give no query image or --queries with it")
    if text_model is None:
        raise ConfigError("--text needs --text-model MODEL (trained by 'matchlens train-text CAPTIONS --index IDX --out MODEL')")
    if not text.strip():
        raise ConfigError("the text query is empty: describe the image, e.g. --text \"a red cube at top-left\"")
    idx = open_index(index_dir)
    searcher = open_text_search(idx, text_model)  # registers camp/caan before the chain is parsed
    answer = searcher.run(text, k, rerank)
    _print(answer, text, idx, as_json, jsonl)


def _print(answer: Any, text: str, idx: Any, as_json: bool, jsonl: bool) -> None:
    print_answer(answer, f"{text!r} in {idx.root.name} ({idx.size} images)", as_json, jsonl)
