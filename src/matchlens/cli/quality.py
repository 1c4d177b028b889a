"""Query quality (QAIR): ``matchlens quality`` (predicted AP and what looks wrong) and
``matchlens train-quality`` (with ground truth, or self-supervised on the index itself)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from matchlens.cli.common import app, err, out, progress_factory


@app.command()
def quality(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    query: Path = typer.Argument(..., help="Query image file."),
    box: Optional[str] = typer.Option(None, help="Query box x0,y0,x1,y1 in pixels of the (upright) query image."),
    model: Optional[Path] = typer.Option(None, "--quality", help="Quality model (default: IDX/quality/model.pt from 'matchlens train-quality')."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: predicted_ap, low, threshold, issues, estimates."),
) -> None:
    """Predict the AP this query reaches with this index, and say what looks wrong with it
    (noise σ, blur or lost resolution, size, exposure). Without a quality model only the estimates are shown."""
    from matchlens.api import open_index
    from matchlens.io.images import parse_box
    from matchlens.quality.predict import assess
    from matchlens.quality.query import open_model

    idx = open_index(index_dir)
    found, _ = open_model(idx, model)
    image = idx.pipeline.encoder.load(query.expanduser(), parse_box(box) if box else None)
    result = assess(image, found)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=1) + "\n")
        return
    table = Table("estimate", "value", title=f"{query.name} for {idx.root.name}")
    shown = result.diagnosis.to_dict()
    for key in ("width", "height", "noise_sigma", "detail", "brightness", "dark", "bright"):
        table.add_row(key, str(shown[key]))
    out.print(table)
    if result.predicted_ap is None:
        out.print("predicted AP: no quality model for this index (train one: matchlens train-quality)", markup=False)
    else:
        verdict = "LOW" if result.low else "ok"
        out.print(f"predicted AP: {result.predicted_ap:.3f} ({verdict}; low below {result.threshold:.3f})", markup=False)
    out.print("looks wrong: " + ("; ".join(result.diagnosis.issues) or "nothing"), markup=False, highlight=False)


@app.command("train-quality")
def train_quality(
    source: Path = typer.Argument(..., help="An evaluation set with ground truth (gt.json, Oxford/Paris lists, ...) with --index, or with --self-supervised the index folder itself."),
    index_dir: Optional[Path] = typer.Option(None, "--index", "-i", help="With a dataset: the index of its images (must exist)."),
    self_supervised: bool = typer.Option(False, "--self-supervised", help="No ground truth: degrade indexed images, search with them; positives = the clean original and its spatially verified neighbours."),
    count: int = typer.Option(150, "--count", min=2, help="--self-supervised: indexed images to label."),
    epochs: int = typer.Option(60, "--epochs", min=1, help="Epochs of the quality head."),
    degradations: Optional[str] = typer.Option(None, "--degradations", help="Comma-separated label variants (default: all of clean, noise:sigma=30|50|90, blur:sigma=3.0, downsample:factor=4|8, low_light, low_light:gain=0.12:gamma=2.4, night)."),
    enhancers: bool = typer.Option(False, "--enhancers", help="Also train the denoiser and ×4 SR (DnCNN, MSE then fine-tuned through the quality net) for --enhance."),
    enhancer_images: int = typer.Option(40, "--enhancer-images", min=1, help="Indexed photos the enhancers train on."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Model file (default: IDX/quality/model.pt, found by search and quality)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train the quality model of an index: the AP its queries reach, predicted from patches."""
    from matchlens.api import open_index
    from matchlens.errors import ConfigError
    from matchlens.quality.labels import dataset_labels, parse_variants, self_labels
    from matchlens.quality.net import QualityNet
    from matchlens.quality.store import default_model_path, enhancer_path, save_enhancer
    from matchlens.quality.train import fit_enhancer, fit_quality, training_images

    if self_supervised == (index_dir is not None):
        raise ConfigError("give DATASET --index IDX (ground truth), or IDX --self-supervised (no labels)")
    variants = parse_variants(degradations)  # a bad name fails before any work
    idx = open_index(source if self_supervised else index_dir)  # type: ignore[arg-type]  # one is set (checked)
    net = QualityNet().eval()
    with progress_factory(not quiet) as progress:
        if self_supervised:
            advance = progress(count * len(variants), "labelling (self-supervised)") if progress else None
            labels = self_labels(idx, net, count, variants, advance=advance)
            how = {"labels_from": "self-supervised", "count": count}
        else:
            from matchlens.io.formats.detect import load_dataset

            dataset = load_dataset(source)
            advance = progress(len(dataset.queries) * len(variants), "labelling (ground truth)") if progress else None
            labels = dataset_labels(idx, dataset, net, variants, advance=advance)
            how = {"labels_from": f"ground truth of {dataset.name}"}
        model = fit_quality(idx, labels, epochs, advance=progress(epochs, "quality head") if progress else None, info=how)
        target = Path(out_path) if out_path else default_model_path(idx)
        model.save(target)
        out.print(f"quality model: {target} ({model.info['labels']} labelled queries, training MAE "
                  f"{model.info['final_mae']:.3f}, low below AP {model.low:.3f})", markup=False, highlight=False)
        if enhancers:
            images = training_images(idx, enhancer_images)
            model.net = net
            for kind in ("denoise", "sr"):
                trained = fit_enhancer(kind, images, net, advance=progress(4, f"{kind} enhancer") if progress else None)
                path = target.parent / f"{kind}.pt" if out_path else enhancer_path(idx, kind)
                save_enhancer(path, trained, kind, model.target, {"images": len(images)})
                out.print(f"{kind} enhancer: {path}", markup=False, highlight=False)
    if not enhancers:
        err.print("no enhancers trained (add --enhancers for --enhance denoise|sr|auto)", markup=False)


def quality_query(index, path: Path, box, enhance: str, model: Optional[Path]):
    """The pipeline query for ``matchlens search`` after the quality check: the enhanced image
    when ``--enhance`` changed it, else the file; prints the low-quality warning and what
    ``--enhance`` did on stderr (stdout stays the results)."""
    from matchlens.pipeline import Query
    from matchlens.quality.location import quality_applies

    if not quality_applies(index, enhance, model):  # the common case: no torch to load
        return Query(path, box, name=str(path))
    from matchlens.quality.query import prepare_query

    checked = prepare_query(index, path, box, enhance, model)
    if checked.warning:
        err.print(f"matchlens: warning: {checked.warning}", markup=False, highlight=False)
    if checked.choice is not None:
        err.print(f"enhance {enhance}: {checked.choice.applied} ({checked.choice.reason})", markup=False, highlight=False)
    if checked.image is not None:  # already upright and cropped to the box
        return Query(checked.image, None, name=str(path))
    return Query(path, box, name=str(path))
