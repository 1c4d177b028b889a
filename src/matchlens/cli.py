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
from typing import Any, Iterator, List, Optional

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
    if weights:
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
    runtime: Optional[str] = RuntimeOpt,
    backend: Optional[str] = typer.Option(None, "--backend", help="Vector backend: {backends} (default: faiss)."),
    factory: Optional[str] = typer.Option(None, "--factory", help=(
        "faiss: a FAISS factory string, e.g. Flat (exact, default), IVF1024,PQ64 (compressed, re-ranked exactly), "
        "HNSW32; milvus: FLAT | IVF_FLAT:nlist=1024 | IVF_SQ8:nlist=1024 | HNSW:M=16,efConstruction=200.")),
    uri: Optional[str] = typer.Option(None, "--uri", help="Milvus: a local .db path (Milvus Lite) or http://host:19530."),
    train_size: Optional[int] = typer.Option(None, "--train-size", min=1, help="Vectors sampled to train IVF/PQ (default 100000)."),
    backend_params: Optional[str] = typer.Option(None, "--backend-params", help="Search parameters, e.g. nprobe=32,refine=8 (faiss: nprobe, efSearch, refine; milvus: nprobe, ef, refine, batch, collection)."),
    dask: Optional[str] = typer.Option(None, "--dask", help="Extract on the workers of this Dask scheduler, e.g. tcp://10.0.0.5:8786."),
) -> None:
    """Index SOURCE into --index DIR (resumes an interrupted run; unchanged images are reused)."""
    from matchlens.api import build_index_report

    spec = _spec_options(preset, backbone, weights, max_side, scales, pooling, pooling_params, whitening,
                         whitening_params, whitening_source)
    chosen = _backend_option(backend, factory, uri, train_size, backend_params)
    with _runtime(runtime), progress_factory(not quiet) as progress:
        idx, report = build_index_report(source, index_dir, spec, rebuild=rebuild, progress=progress,
                                          dba=_dba_option(dba), backend=chosen, dask=dask)
    _print_report(idx, report)


def _backend_option(name, factory, uri, train_size, params_text):
    """None (keep the index's backend) unless a backend option is given."""
    from matchlens.api import make_backend
    from matchlens.config import parse_params

    if not any(v is not None for v in (name, factory, uri, train_size, params_text)):
        return None
    params = parse_params(params_text) if params_text else {}
    if train_size is not None:
        params["train_size"] = train_size
    return make_backend(name, factory, uri, **params)


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
    runtime: Optional[str] = RuntimeOpt,
) -> None:
    """Add images to an index (changed files are re-described)."""
    from matchlens.api import open_index

    with _runtime(runtime), progress_factory(not quiet) as progress:
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
    runtime: Optional[str] = RuntimeOpt,
) -> None:
    """Show an index's pipeline, counts and state (runtime: the one a search here would use)."""
    from matchlens.errors import IndexError_
    from matchlens.extract.light import query_runtime_name
    from matchlens.index import VectorIndex

    idx = VectorIndex(index_dir)  # the store alone: info loads no network and no search pipeline
    bad = idx.verify() if check else []
    summary: dict[str, Any] = {
        "path": str(idx.root), "generation": idx.generation, "images": idx.size, "dba": idx.manifest.get("dba"),
        "skipped": len(idx.skipped()), "dim": idx.dim, "pipeline": idx.spec.describe(),
        "spec": idx.spec.to_dict(), "whitening": idx.manifest.get("whitening_state"),
        "created": idx.manifest.get("created"), "runtime": query_runtime_name(idx.spec, idx.model_dir(), runtime),
        "backend": _backend_summary(idx),
    }
    if skipped:
        summary["skipped_files"] = [{"path": e.path, "error": e.error} for e in idx.skipped()]
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        table = Table(show_header=False, box=None)
        for key in ("path", "generation", "images", "skipped", "dim", "pipeline", "whitening", "dba", "backend",
                    "runtime", "created"):
            table.add_row(key, str(summary[key]))
        out.print(table)
        for entry in summary.get("skipped_files", []):
            out.print(f"skipped: {entry['path']}: {entry['error']}", markup=False, highlight=False)
    if check:
        if bad:
            raise IndexError_(f"checksum mismatch in {', '.join(bad)}: the index is corrupt")
        out.print("checksums: ok")


def _backend_summary(idx) -> str:
    """e.g. ``faiss IVF1024,PQ64 (nprobe=32, refine=8): trained on 100000, 64 B/vector``."""
    state = (idx.manifest.get("backend") or {}).get("state", {"state": "exact"})
    text = f"{idx.backend.describe()}: {state.get('state')}"
    if state.get("trained_on"):
        text += f" on {state['trained_on']}"
    if state.get("code_bytes"):
        text += f", {state['code_bytes']} B/vector"
    if state.get("collection"):
        text += f", collection {state['collection']}"
    return text


@app.command()
def search(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    query: Optional[str] = typer.Argument(None, help="Query image file (or give --queries)."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="Many queries with one model load: a folder (recursive) or a list file of image paths; prints one JSON line per query."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="With --queries: JSON object mapping query files (path or file name) to [x0,y0,x1,y1]."),
    box: Optional[str] = typer.Option(None, help="Query box x0,y0,x1,y1 in pixels of the (upright) query image."),
    k: int = typer.Option(20, "-k", "--top", help="Number of results.", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {rank, score, id, path}."),
    jsonl: bool = typer.Option(False, "--jsonl", help="One JSON line per query: query, results (rank, score, id, path), timings_ms."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Assert the index uses this preset's pipeline."),
    rerank: Optional[str] = typer.Option(None, "--rerank", help=RERANK_HELP),
    kind: Optional[str] = typer.Option(None, "--kind", help="Rank by one descriptor kind: cnn or a kind added by 'matchlens encode' (bow, vlad, densevlad, asmk)."),
    fuse: Optional[str] = typer.Option(None, "--fuse", help="Late fusion of descriptor kinds, e.g. cnn+asmk:ghm (see 'matchlens encode --help')."),
    explain_dir: Optional[Path] = typer.Option(None, "--explain", help="Write an evidence PNG per result and index.html into this folder."),
    explain_model: Optional[Path] = typer.Option(None, "--explain-model", help="Verifier checkpoint for --explain (default: the indicative step's model; none: spatial-verification evidence)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (batch search)."),
    runtime: Optional[str] = RuntimeOpt,
) -> None:
    """Rank the indexed images against a query image, or against every image of --queries."""
    from matchlens.api import fused_searcher, open_index
    from matchlens.config import spec_from_preset
    from matchlens.errors import ConfigError
    from matchlens.io.images import parse_box
    from matchlens.pipeline.search import as_chain

    if (query is None) == (queries is None):
        raise ConfigError("give one query image or --queries FOLDER_OR_LIST, not both" if query else
                          "give a query image or --queries FOLDER_OR_LIST")
    if queries is not None and (box or explain_dir is not None or as_json):
        raise ConfigError("--box, --explain and --json are for one query; with --queries use --boxes (output is JSON lines)")
    if boxes is not None and queries is None:
        raise ConfigError("--boxes goes with --queries; for one query use --box")
    idx = open_index(index_dir)
    idx.check_spec(spec_from_preset(preset) if preset else None)
    chain = as_chain(rerank)  # a bad chain fails before any model is loaded
    fusion = _fusion_option(kind, fuse)
    searcher = fused_searcher(idx, fusion) if fusion else idx.pipeline
    with _runtime(runtime):
        if queries is not None:
            _batch_search(searcher, queries, boxes, k, chain, quiet)
            return
        assert query is not None  # exactly one of query and --queries was given (checked above)
        parsed = parse_box(box) if box else None
        answer = searcher.run(_query(Path(query).expanduser(), parsed), k, chain)
    results = answer.results
    page = None
    if explain_dir is not None:  # evidence overlays and their page (matchlens.explain)
        page = _write_explanations(query, parsed, results, explain_dir, explain_model, rerank)
    if jsonl:
        sys.stdout.write(json.dumps(answer.to_dict()) + "\n")
    elif as_json:
        sys.stdout.write(json.dumps([r.to_dict() for r in results], indent=1) + "\n")
    else:
        table = Table("rank", "score", "path", title=f"{Path(query).name} in {idx.root.name} ({idx.size} images)")
        for r in results:
            table.add_row(str(r.rank), f"{r.score:.4f}", Text(r.path))
        out.print(table)
    if page is not None:  # on stderr under --json, so stdout stays machine-readable
        (err if as_json or jsonl else out).print(f"evidence page: {page}", markup=False, highlight=False)


def _query(path: Path, box):
    from matchlens.pipeline import Query

    return Query(path, box, name=str(path))


def _batch_search(searcher, source: Path, boxes: Optional[Path], k: int, chain, quiet: bool) -> None:
    """One JSON line per query on stdout; a query that fails gets an ``error`` line and the run
    goes on (exit status 2 at the end when any failed)."""
    from matchlens.errors import MatchlensError, SourceError
    from matchlens.pipeline import read_queries

    items = read_queries(source, boxes)
    failed = 0
    with progress_factory(not quiet) as progress:
        advance = progress(len(items), "queries") if progress else None
        for item in items:
            try:
                line = searcher.run(item, k, chain).to_dict()
            except MatchlensError as exc:
                failed += 1
                line = {"query": item.name, "error": str(exc)}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            if advance:
                advance(1)
    if failed:
        raise SourceError(f"{failed} of {len(items)} queries failed (see their 'error' lines)")


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


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


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
        knn=knn, min_inliers=min_inliers)
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


@app.command()
def serve(
    index_dir: Path = typer.Argument(..., help="Index folder to serve."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, help="TCP port (0: any free port).", min=0, max=65535),
    token: Optional[str] = typer.Option(None, envvar="MATCHLENS_TOKEN", show_envvar=True,
                                        help="API token that enables POST /images and DELETE /images/{id}."),
    max_upload_mb: float = typer.Option(20, "--max-upload-mb", help="Largest accepted upload (MB).", min=0.001),
    max_pixels: int = typer.Option(64_000_000, "--max-pixels", help="Largest declared image size (pixels).", min=1),
    verifier: Optional[Path] = typer.Option(None, "--verifier", help="Verifier checkpoint (matchlens train-verifier): the evidence view shows its heatmaps instead of spatial-verification inliers."),
) -> None:
    """Serve an index over HTTP: search API, web page at /, API docs at /docs (Ctrl+C stops)."""
    from matchlens.service.server import is_loopback, serve as run_server

    if not is_loopback(host):
        err.print(f"warning: listening on {host}: anyone who can reach it can search"
                  + ("" if token else " (writes stay disabled without --token)"), markup=False, highlight=False)
    run_server(index_dir, host=host, port=port, token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
               max_pixels=max_pixels, verifier=verifier,
               on_ready=lambda url: _announce(f"matchlens: serving {index_dir} at {url} (writes "
                                              f"{'enabled' if token else 'disabled'}; evidence: "
                                              f"{'verifier' if verifier else 'spatial'}; Ctrl+C stops)"))


def _announce(line: str) -> None:
    out.print(line, markup=False, highlight=False)
    sys.stdout.flush()  # scripts wait for this line (the URL) through a pipe


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


# --- indicative retrieval (matchlens.evidence) ------------------------------------------------

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
    metrics: str = typer.Option("cosine,euclidean,manhattan,mahalanobis", "--metrics", help="Tensor channels."),
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
                            metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()), arch=arch, har=har)
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


def _write_explanations(query: str, box, results, folder: Path, model: Optional[Path], rerank: Optional[str]) -> Path:
    """Evidence PNGs and index.html for ``results``; returns the page."""
    from matchlens.explain.workflows import explain_search, model_from_chain

    with progress_factory(True) as progress:
        written = explain_search(query, [(r.path, r.score) for r in results], folder,
                                 model or model_from_chain(rerank), box, progress)
    err.print(f"evidence ({written.kind}): {len(written.rows)} PNG in {folder}", markup=False, highlight=False)
    return written.page


# --- classic descriptor kinds and late fusion (matchlens.classic, matchlens.fusion) --------------

@app.command()
def encode(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    kind: Optional[str] = typer.Option(None, "--kind", help="{encodings}; omit to update every stored kind."),
    name: Optional[str] = typer.Option(None, "--name", help="Store the kind under this name (default: the kind), e.g. bow16k."),
    params: Optional[str] = typer.Option(None, "--params", help="Encoding parameters, e.g. k=16384,soft=3 (bow), k=64,dim=256 (vlad), bits=128,alpha=3 (asmk)."),
    retrain: bool = typer.Option(False, "--retrain", help="Learn the codebook again: needed to change a stored kind's codebook or feature parameters (not dim/power/shrinkage, burstiness, alpha/tau/query_ma)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Add a classic descriptor kind (RootSIFT BoW, VLAD, DenseVLAD, ASMK*) to an index, or bring the
    stored kinds up to date. Search by it with --kind NAME, or fuse it with others with --fuse.

    A fusion is KIND+KIND+... optionally weighted (KIND@0.7) and followed by :OPERATOR and :param=value,...
    where cnn is the index's own descriptor, e.g. cnn+asmk:ghm or cnn@0.7+bow@0.3:mean_power:gamma=0.5,depth=100.

    Operators: {fusions}. Each
    kind's scores over the union of the kinds' top-depth shortlists (depth=100) are normalised first
    (norm: {normalisers}; default minmax).
    """
    from matchlens.api import encode as encode_api
    from matchlens.config import parse_params

    with progress_factory(not quiet) as progress:
        infos = encode_api(index_dir, kind, name, parse_params(params) if params else None, retrain, progress)
    if not infos:
        out.print(f"no descriptor kind stored in {index_dir}; add one with --kind", markup=False, highlight=False)
    _print_kinds(infos)


@app.command()
def kinds(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the descriptor kinds stored with an index (cnn, the index's own descriptor, is always there)."""
    from matchlens.api import list_kinds

    infos = list_kinds(index_dir)
    if as_json:
        sys.stdout.write(json.dumps([i.to_dict() for i in infos], indent=1) + "\n")
        return
    _print_kinds(infos)


def _print_kinds(infos) -> None:
    table = Table("kind", "type", "images", "bytes/image", "model", "up to date")
    for i in infos:
        table.add_row(i.name, i.type, str(i.images), f"{i.bytes_per_image:,.0f}", f"{i.model_bytes / 2**20:.1f} MiB",
                      "yes" if i.up_to_date else f"no ({i.generation})")
    out.print(table)
    for i in infos:  # parameters on their own lines: a table column would fold them unreadably
        params = ",".join(f"{k}={v}" for k, v in sorted(i.params.items()))
        out.print(f"{i.name}: {params}", markup=False, highlight=False)


def _fusion_option(kind: Optional[str], fuse: Optional[str]) -> Optional[str]:
    """The ranking expression of --kind / --fuse (None: the index's own descriptor)."""
    from matchlens.errors import ConfigError

    if kind and fuse:
        raise ConfigError("give --kind or --fuse, not both (a fusion names its kinds)")
    if kind and ("+" in kind or ":" in kind):
        raise ConfigError(f"--kind takes one kind name, got {kind!r}; use --fuse for a fusion")
    return kind or fuse


def _fill_help(command, args: list[str]) -> None:
    """Put the registries' names into the help texts of the subcommand whose --help is asked
    for (only then: the families' modules need not be imported for anything else)."""
    sub = next((command.commands[a] for a in args if a in getattr(command, "commands", {})), None)
    if sub is None:
        return
    texts = [sub.help or ""] + [getattr(p, "help", None) or "" for p in sub.params]
    wanted = {key for key in _FAMILIES if any("{" + key + "}" in t for t in texts)}
    names = {key: _family(key).help_text() for key in wanted}

    def fill(text: str) -> str:
        for key, value in names.items():
            text = text.replace("{" + key + "}", value)
        return text

    sub.help = fill(sub.help) if sub.help else sub.help
    for param in sub.params:
        if getattr(param, "help", None):
            param.help = fill(param.help)


_FAMILIES = {  # help placeholder → (module, registry): each registry is the only list of its names
    "rerankers": ("matchlens.rerank", "RERANKERS"), "poolings": ("matchlens.pooling.specs", "POOLINGS"),
    "whitenings": ("matchlens.whitening", "WHITENINGS"), "runtimes": ("matchlens.extract.runtime", "RUNTIMES"),
    "backends": ("matchlens.index.backends", "BACKENDS"), "losses": ("matchlens.train.losses", "LOSSES"),
    "encodings": ("matchlens.classic", "ENCODINGS"), "fusions": ("matchlens.fusion", "FUSIONS"),
    "normalisers": ("matchlens.fusion", "NORMALISERS"),
}


def _family(key: str):
    """The registry behind a help placeholder."""
    import importlib

    module, attribute = _FAMILIES[key]
    return getattr(importlib.import_module(module), attribute)


def _click_error() -> type[Any]:
    """ClickException of the click that typer runs on (recent typer vendors its own)."""
    try:
        from typer._click.exceptions import ClickException as VendoredClickException
    except ImportError:  # older typer: plain click
        from click.exceptions import ClickException
        return ClickException
    return VendoredClickException


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the typer app, turning every error into one line and an exit code."""
    from matchlens.errors import MatchlensError

    click_error = _click_error()
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else list(argv)
    if "--help" in args:
        _fill_help(command, args)
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
