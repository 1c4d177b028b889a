"""The ``matchlens`` command: a thin layer over :mod:`matchlens.api` (parse, call, print).

Every user-caused failure prints one line (``matchlens: error: ...``) and exits non-zero; a
traceback is only shown with ``MATCHLENS_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Instance-level image retrieval with evidence: index a folder, search it by photo or box.")
out = Console(soft_wrap=True)  # never wrap paths or messages: scripts parse these lines
err = Console(stderr=True, soft_wrap=True)


class RateColumn(ProgressColumn):
    """Images per second of a task."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("  ?  img/s" if speed is None else f"{speed:5.1f} img/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_factory(enabled: bool = True) -> Iterator:
    """A ProgressFactory for the API that draws rich bars (count, rate, elapsed, time left)."""
    if not enabled:
        yield None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=False) as progress:
        def factory(total: int, description: str):
            task = progress.add_task(description, total=total)
            return lambda n=1: progress.advance(task, n)

        yield factory


def _spec_options(preset, backbone, weights, max_side, scales, pooling, pooling_params, whitening,
                  whitening_params, whitening_source):
    from matchlens.config import parse_params, parse_scales, resolve_whitening_source, spec_from_preset

    overrides = dict(
        backbone=backbone, weights=str(Path(weights).expanduser().resolve()) if weights else None,
        max_side=max_side, scales=parse_scales(scales), pooling=pooling,
        pooling_params=parse_params(pooling_params) if pooling_params is not None else None,
        whitening=whitening,
        whitening_params=parse_params(whitening_params) if whitening_params is not None else None,
        whitening_source=resolve_whitening_source(whitening_source) if whitening_source else None,
    )
    if pooling and pooling_params is None:
        overrides["pooling_params"] = {}  # a different pooling does not inherit the preset's params
    if weights and not pooling:
        from matchlens.models.cirtorch import checkpoint_pooling

        overrides.update(checkpoint_pooling(overrides["weights"]) or {})  # e.g. a fine-tuned GeM's own p
    return spec_from_preset(preset, **overrides)


RERANK_HELP = ("Re-ranking chain, e.g. sv:k=100,aqe:k=2,diffusion (aqe, alpha_qe, kr, diffusion, sv; "
               "name:param=value, more params as ,param=value).")
PresetOpt = typer.Option("default", "--preset", help="Named pipeline (see 'matchlens presets').")
BackboneOpt = typer.Option(None, help="Backbone architecture, e.g. tf_efficientnet_lite0, resnet50, vgg16, timm:NAME.")
WeightsOpt = typer.Option(None, help="Weights file (state dict, safetensors or cirtorch checkpoint).")
MaxSideOpt = typer.Option(None, "--max-side", help="Longest image side at scale 1 (pixels).")
ScalesOpt = typer.Option(None, help="Comma-separated scales, or 'ms' for 1,0.707,0.5.")
PoolingOpt = typer.Option(None, help="mac | spoc | gem | rmac | crow.")
PoolingParamsOpt = typer.Option(None, "--pooling-params", help="e.g. p=3 for gem, levels=3 for rmac.")
WhiteningOpt = typer.Option(None, help="none | pcaw.")
WhiteningParamsOpt = typer.Option(None, "--whitening-params", help="e.g. dim=256,power=0.5.")
WhiteningSourceOpt = typer.Option(None, "--whitening-source", help="'collection' or a folder of other images.")


@app.command()
def index(
    source: List[str] = typer.Argument(..., help="Folder (recursive), list file of paths, or image file(s)."),
    index_dir: Path = typer.Option(..., "--index", "-i", help="Index folder to create or update."),
    preset: str = PresetOpt, backbone: Optional[str] = BackboneOpt, weights: Optional[str] = WeightsOpt,
    max_side: Optional[int] = MaxSideOpt, scales: Optional[str] = ScalesOpt, pooling: Optional[str] = PoolingOpt,
    pooling_params: Optional[str] = PoolingParamsOpt, whitening: Optional[str] = WhiteningOpt,
    whitening_params: Optional[str] = WhiteningParamsOpt, whitening_source: Optional[str] = WhiteningSourceOpt,
    rebuild: bool = typer.Option(False, help="Replace an index built with a different pipeline."),
    dba: Optional[str] = typer.Option(None, "--dba", help="Database-side augmentation, e.g. k=3 or k=3,alpha=3; 'off' to remove."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Index SOURCE into --index DIR (resumes an interrupted run; unchanged images are reused)."""
    from matchlens.api import build_index_report

    spec = _spec_options(preset, backbone, weights, max_side, scales, pooling, pooling_params, whitening,
                         whitening_params, whitening_source)
    with progress_factory(not quiet) as progress:
        idx, report = build_index_report(source, index_dir, spec, rebuild=rebuild, progress=progress,
                                          dba=_dba_option(dba))
    _print_report(idx, report)


def _dba_option(text: str | None):
    """``None`` → keep; ``off`` → None; ``k=3,alpha=3`` → params."""
    from matchlens.config import parse_params

    if text is None:
        return "keep"
    return None if text.strip().lower() in ("off", "none", "0") else parse_params(text)


@app.command("dba")
def dba_command(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    params: str = typer.Argument(..., help="k=3 (weights (k-i)/k) or k=3,alpha=3 (weights sim^alpha); 'off' to remove."),
) -> None:
    """Database-side augmentation: replace each indexed vector by a weighted sum of its neighbours
    (reversible: the raw descriptors are kept; 'off' restores the plain vectors)."""
    from matchlens.api import open_index

    setting = _dba_option(params)
    idx, _ = open_index(index_dir).set_dba(setting)
    out.print(f"dba: {idx.manifest.get('dba') or 'off'}; {idx.size} images in {idx.root}", markup=False, highlight=False)


@app.command()
def add(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    paths: List[str] = typer.Argument(..., help="Files, folders or list files to add."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Add images to an index (changed files are re-described)."""
    from matchlens.api import open_index

    with progress_factory(not quiet) as progress:
        idx, report = open_index(index_dir).add(paths, progress=progress)
    _print_report(idx, report)


@app.command()
def remove(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    paths: List[str] = typer.Argument(..., help="Paths (or folders) of indexed images to remove."),
) -> None:
    """Remove images from an index."""
    from matchlens.api import open_index

    idx, report = open_index(index_dir).remove(paths)
    out.print(f"removed {report.removed}; {idx.size} images indexed in {idx.root}")


@app.command()
def info(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    skipped: bool = typer.Option(False, "--skipped", help="List the skipped files with their reasons."),
    check: bool = typer.Option(False, "--check", help="Verify the checksums of every index file."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show an index's pipeline, counts and state."""
    from matchlens.api import open_index
    from matchlens.errors import IndexError_
    from matchlens.extract.extractor import runtime_name
    from matchlens.index import store

    idx = open_index(index_dir)
    bad = store.verify_checksums(idx._gen) if check else []
    summary = {
        "path": str(idx.root), "generation": idx.generation, "images": idx.size, "dba": idx.manifest.get("dba"),
        "skipped": len(idx.skipped()), "dim": idx.dim, "pipeline": idx.spec.describe(),
        "spec": idx.spec.to_dict(), "whitening": idx.manifest.get("whitening_state"),
        "created": idx.manifest.get("created"), "runtime": runtime_name(),
    }
    if skipped:
        summary["skipped_files"] = [{"path": e.path, "error": e.error} for e in idx.skipped()]
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        table = Table(show_header=False, box=None)
        for key in ("path", "generation", "images", "skipped", "dim", "pipeline", "whitening", "dba", "runtime", "created"):
            table.add_row(key, str(summary[key]))
        out.print(table)
        for entry in summary.get("skipped_files", []):
            out.print(f"skipped: {entry['path']}: {entry['error']}", markup=False, highlight=False)
    if check:
        if bad:
            raise IndexError_(f"checksum mismatch in {', '.join(bad)}: the index is corrupt")
        out.print("checksums: ok")


@app.command()
def search(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    query: str = typer.Argument(..., help="Query image file."),
    box: Optional[str] = typer.Option(None, help="Query box x0,y0,x1,y1 in pixels of the (upright) query image."),
    k: int = typer.Option(20, "-k", "--top", help="Number of results.", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {rank, score, id, path}."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Assert the index uses this preset's pipeline."),
    rerank: Optional[str] = typer.Option(None, "--rerank", help=RERANK_HELP),
) -> None:
    """Rank the indexed images against a query image."""
    from matchlens.api import open_index
    from matchlens.config import spec_from_preset
    from matchlens.io.images import parse_box

    idx = open_index(index_dir)
    results = idx.search(Path(query).expanduser(), box=parse_box(box) if box else None, k=k,
                         spec=spec_from_preset(preset) if preset else None, rerank=rerank)
    if as_json:
        sys.stdout.write(json.dumps([r.to_dict() for r in results], indent=1) + "\n")
        return
    table = Table("rank", "score", "path", title=f"{Path(query).name} in {idx.root.name} ({idx.size} images)")
    for r in results:
        table.add_row(str(r.rank), f"{r.score:.4f}", Text(r.path))
    out.print(table)


@app.command("eval")
def eval_(
    dataset: Path = typer.Argument(..., help="Dataset root: gt.json set, Oxford/Paris folder, revisitop, Holidays, UKBench, INSTRE."),
    dataset_format: Optional[str] = typer.Option(None, "--format", help="Dataset layout (auto-detected when omitted)."),
    index_dir: Optional[Path] = typer.Option(None, "--index", "-i", help="Evaluate this index (built here if missing)."),
    protocol: List[str] = typer.Option([], "--protocol", help="cropped (standard where queries have boxes) and/or full; repeat for both."),
    difficulty: Optional[str] = typer.Option(None, help="Revisited Oxford/Paris: easy | medium | hard."),
    distractors: Optional[Path] = typer.Option(None, help="Revisited Oxford/Paris: the R1M distractor folder."),
    upright: bool = typer.Option(False, help="Holidays: use the rotated-upright images."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Pipeline to build with (default preset when building)."),
    backbone: Optional[str] = BackboneOpt, weights: Optional[str] = WeightsOpt, max_side: Optional[int] = MaxSideOpt,
    scales: Optional[str] = ScalesOpt, pooling: Optional[str] = PoolingOpt, pooling_params: Optional[str] = PoolingParamsOpt,
    whitening: Optional[str] = WhiteningOpt, whitening_params: Optional[str] = WhiteningParamsOpt,
    whitening_source: Optional[str] = WhiteningSourceOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the evaluation (summary and per-query metrics) as JSON."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a report (PR curves, worst queries HTML) here."),
    rerank: Optional[str] = typer.Option(None, "--rerank", help=RERANK_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Evaluate an index (or a pipeline) on a dataset under its standard protocol; print the metrics."""
    from matchlens.api import evaluate_dataset
    from matchlens.evaluate.protocol import NOTES, format_table, legend

    pipeline_given = any(v is not None for v in (preset, backbone, weights, max_side, scales, pooling, pooling_params,
                                                 whitening, whitening_params, whitening_source))
    spec = _spec_options(preset or "default", backbone, weights, max_side, scales, pooling, pooling_params, whitening,
                         whitening_params, whitening_source) if pipeline_given or index_dir is None else None
    options = {k: v for k, v in (("protocol", difficulty), ("distractors", distractors), ("upright", upright or None))
               if v is not None}
    with progress_factory(not quiet and not as_json) as progress:
        evaluations = evaluate_dataset(dataset, index_dir, spec=spec, protocols=protocol or None, dataset_format=dataset_format,
                               dataset_options=options, report_dir=report, progress=progress,
                                       rerank=rerank)
    if as_json:
        payload = [e.to_dict() for e in evaluations]
        sys.stdout.write(json.dumps(payload if len(payload) > 1 else payload[0], indent=1) + "\n")
        return
    rows = format_table(evaluations)
    table = Table(*rows[0], title=f"pipeline: {evaluations[0].pipeline}")
    for row in rows[1:]:
        table.add_row(*row)
    out.print(table)
    for line in legend(evaluations):
        out.print(line, markup=False, highlight=False)
    for note in NOTES:
        out.print(f"  {note}", markup=False, highlight=False)
    if report:
        out.print(f"report: {report}", markup=False, highlight=False)


@app.command()
def presets() -> None:
    """List the named pipelines."""
    from matchlens.config import DEFAULT_PRESET, PRESETS, spec_from_preset

    table = Table("preset", "pipeline")
    table.add_row(f"default (= {DEFAULT_PRESET})", spec_from_preset("default").describe())
    for name in sorted(PRESETS):
        table.add_row(name, spec_from_preset(name).describe())
    out.print(table)


@app.command()
def demo(
    out_dir: Path = typer.Argument(Path("demo-out"), help="Where the demo collection, index and results go."),
    preset: str = PresetOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """The main job on the embedded default: build a demo collection, index it, search, write HTML."""
    from matchlens.demo import run_demo

    with progress_factory(not quiet) as progress:
        result = run_demo(out_dir, preset=preset, progress=progress)
    out.print(f"demo collection: {result.collection_dir} ({result.n_images} images, {result.n_queries} queries)")
    out.print(f"index: {result.index_dir}")
    out.print(f"results page: {result.html_path}")
    out.print(f"demo mAP: {100 * result.map:.1f}  (top-1 correct: {result.top1_correct}/{result.n_queries})")


def _print_report(idx, report) -> None:
    err.print(
        f"indexed {idx.size} images ({report.computed} computed, {report.reused} reused) "
        f"in {report.seconds:.1f} s; skipped {report.skipped}; whitening: {report.whitening}",
        markup=False, highlight=False,
    )
    for path, error in report.skipped_files[:20]:
        err.print(f"  skipped {error}" if path in error else f"  skipped {path}: {error}", markup=False, highlight=False)
    if len(report.skipped_files) > 20:
        err.print(f"  ... and {len(report.skipped_files) - 20} more ('matchlens info {idx.root} --skipped')")
    out.print(f"index: {idx.root} ({idx.size} images, pipeline: {idx.spec.describe()})", markup=False, highlight=False)


def _click_error() -> type[Exception]:
    """ClickException of the click that typer runs on (recent typer vendors its own)."""
    try:
        from typer._click.exceptions import ClickException  # type: ignore[import-not-found]
    except ImportError:  # older typer: plain click
        from click.exceptions import ClickException
    return ClickException


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the typer app, turning every error into one line and an exit code."""
    from matchlens.errors import MatchlensError

    click_error = _click_error()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="matchlens", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:  # --help and friends
        sys.exit(exc.exit_code)
    except MatchlensError as exc:
        err.print(f"matchlens: error: {exc}", markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("matchlens: interrupted", markup=False)
        sys.exit(130)
    except click_error as exc:  # usage errors: click's own message (usage line + one error line)
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: still one line unless debugging
        if os.environ.get("MATCHLENS_DEBUG"):
            raise
        err.print(f"matchlens: internal error: {type(exc).__name__}: {exc} (MATCHLENS_DEBUG=1 shows the traceback)",
                  markup=False, highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
