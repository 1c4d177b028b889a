"""``matchlens eval``: a dataset's queries through the search pipeline, scored under its protocol."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from matchlens.cli.common import (BackboneOpt, MaxSideOpt, PoolingOpt, PoolingParamsOpt, RERANK_HELP,
                                  RuntimeOpt, ScalesOpt, WeightsOpt, WhiteningOpt, WhiteningParamsOpt,
                                  WhiteningSourceOpt, _fusion_option, _runtime, _spec_options,
                                  app, out, progress_factory)


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
    kind: Optional[str] = typer.Option(None, "--kind", help="Rank by one descriptor kind: cnn or a kind added by 'matchlens encode' (bow, vlad, densevlad, asmk)."),
    fuse: Optional[str] = typer.Option(None, "--fuse", help="Late fusion of descriptor kinds, e.g. cnn+asmk:ghm (see 'matchlens encode --help')."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    runtime: Optional[str] = RuntimeOpt,
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
    with _runtime(runtime), progress_factory(not quiet and not as_json) as progress:
        evaluations = evaluate_dataset(dataset, index_dir, spec=spec, protocols=protocol or None, dataset_format=dataset_format,
                               dataset_options=options, report_dir=report, progress=progress,
                                       rerank=rerank, fuse=_fusion_option(kind, fuse))
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
