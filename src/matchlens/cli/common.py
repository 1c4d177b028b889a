"""What every command of the CLI shares: the typer app, the two consoles, progress bars, the
pipeline options and the small parsers of option values."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

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
    # An .onnx file is a model graph (e.g. --preset sscd), not a torch checkpoint carrying a spec.
    checkpoint = bool(weights) and not str(overrides["weights"]).lower().endswith(".onnx")
    if checkpoint and not pooling:
        from matchlens.models.cirtorch import checkpoint_pooling

        overrides.update(checkpoint_pooling(overrides["weights"]) or {})  # e.g. a fine-tuned GeM's own p
    if checkpoint:
        from matchlens.models.weights import checkpoint_spec_fields

        # A `matchlens train` checkpoint carries its spec: it fills every option the user left out.
        for key, value in checkpoint_spec_fields(overrides["weights"]).items():
            if overrides.get(key) is None and not (key == "pooling_params" and pooling):
                overrides[key] = value
    return spec_from_preset(preset, **overrides)


RERANK_HELP = ("Re-ranking chain, e.g. sv:k=100,aqe:k=2,diffusion ({rerankers}; "
               "name:param=value, more params as ,param=value).")
PresetOpt = typer.Option("default", "--preset", help="Named pipeline (see 'matchlens presets').")
BackboneOpt = typer.Option(None, help="Backbone architecture, e.g. tf_efficientnet_lite0, resnet50, vgg16, timm:NAME.")
WeightsOpt = typer.Option(None, help="Weights file (state dict, safetensors or cirtorch checkpoint).")
MaxSideOpt = typer.Option(None, "--max-side", help="Longest image side at scale 1 (pixels).")
ScalesOpt = typer.Option(None, help="Comma-separated scales, or 'ms' for 1,0.707,0.5.")
PoolingOpt = typer.Option(None, help="{poolings}.")
PoolingParamsOpt = typer.Option(None, "--pooling-params", help="e.g. p=3 for gem, levels=3 for rmac.")
WhiteningOpt = typer.Option(None, help="{whitenings} (lw: learned by matchlens train; needs --weights CHECKPOINT).")
WhiteningParamsOpt = typer.Option(None, "--whitening-params", help="e.g. dim=256,power=0.5.")
WhiteningSourceOpt = typer.Option(None, "--whitening-source", help="'collection' or a folder of other images.")
RuntimeOpt = typer.Option(None, "--runtime", help="Inference runtime: auto | {runtimes} "
                          "(default: $MATCHLENS_RUNTIME, else auto). Descriptors are the same with every runtime.")


def _runtime(name: str | None):
    """Extractors built inside use runtime ``name`` (None: $MATCHLENS_RUNTIME or auto)."""
    from matchlens.extract.runtime import use_runtime

    return use_runtime(name)


def _print_report(idx, report) -> None:
    err.print(
        f"indexed {idx.size} images ({report.computed} computed, {report.reused} reused) "
        f"in {report.seconds:.1f} s; skipped {report.skipped}; whitening: {report.whitening}"
        + (f"; dropped {report.removed} (files gone, or --replace)" if report.removed else ""),
        markup=False, highlight=False,
    )
    for path, error in report.skipped_files[:20]:
        err.print(f"  skipped {error}" if path in error else f"  skipped {path}: {error}", markup=False, highlight=False)
    if len(report.skipped_files) > 20:
        err.print(f"  ... and {len(report.skipped_files) - 20} more ('matchlens info {idx.root} --skipped')")
    out.print(f"index: {idx.root} ({idx.size} images, pipeline: {idx.spec.describe()})", markup=False, highlight=False)




def _fusion_option(kind: Optional[str], fuse: Optional[str]) -> Optional[str]:
    """The ranking expression of --kind / --fuse (None: the index's own descriptor)."""
    from matchlens.errors import ConfigError

    if kind and fuse:
        raise ConfigError("give --kind or --fuse, not both (a fusion names its kinds)")
    if kind and ("+" in kind or ":" in kind):
        raise ConfigError(f"--kind takes one kind name, got {kind!r}; use --fuse for a fusion")
    return kind or fuse


def print_answer(answer, title: str, as_json: bool, jsonl: bool) -> None:
    """A ranked answer as a JSON line (``--jsonl``), a JSON list (``--json``) or a rank/score/path table."""
    if jsonl:
        sys.stdout.write(json.dumps(answer.to_dict()) + "\n")
    elif as_json:
        sys.stdout.write(json.dumps([r.to_dict() for r in answer.results], indent=1) + "\n")
    else:
        table = Table("rank", "score", "path", title=title)
        for r in answer.results:
            table.add_row(str(r.rank), f"{r.score:.4f}", Text(r.path))
        out.print(table)


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None
