"""Commands that write and describe an index: index, dba, add, remove, info."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table

from matchlens.cli.common import (BackboneOpt, MaxSideOpt, PoolingOpt, PoolingParamsOpt, PresetOpt, RuntimeOpt, ScalesOpt, WeightsOpt, WhiteningOpt, WhiteningParamsOpt,
                                  WhiteningSourceOpt, _print_report, _runtime, _spec_options,
                                  app, out, progress_factory)


@app.command()
def index(
    source: List[str] = typer.Argument(..., help="Folder (recursive), list file of paths, or image file(s)."),
    index_dir: str = typer.Option(..., "--index", "-i", help="Index folder to create or update."),
    preset: str = PresetOpt, backbone: Optional[str] = BackboneOpt, weights: Optional[str] = WeightsOpt,
    max_side: Optional[int] = MaxSideOpt, scales: Optional[str] = ScalesOpt, pooling: Optional[str] = PoolingOpt,
    pooling_params: Optional[str] = PoolingParamsOpt, whitening: Optional[str] = WhiteningOpt,
    whitening_params: Optional[str] = WhiteningParamsOpt, whitening_source: Optional[str] = WhiteningSourceOpt,
    rebuild: bool = typer.Option(False, help="Replace an index built with a different pipeline."),
    replace: bool = typer.Option(False, "--replace", help=(
        "Make an existing index exactly SOURCE, dropping its images that SOURCE does not hold "
        "(without it such a build is refused; 'matchlens add' adds to an index).")),
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
    bn_recalibrate: Optional[int] = typer.Option(None, "--bn-recalibrate", min=1, help=(
        "Re-estimate the backbone's BatchNorm statistics on N images of SOURCE first (P4); the network is "
        "stored in the index, so searches and exports use it.")),
) -> None:
    """Index SOURCE into --index DIR (resumes an interrupted run; unchanged images are reused)."""
    from matchlens.api import build_index_report
    from matchlens.errors import SourceError

    if not index_dir.strip():
        raise SourceError("empty --index path; name the index folder to create or update")
    spec = _spec_options(preset, backbone, weights, max_side, scales, pooling, pooling_params, whitening,
                         whitening_params, whitening_source)
    chosen = _backend_option(backend, factory, uri, train_size, backend_params)
    if bn_recalibrate:
        spec = _bn_recalibrated(spec, source, index_dir, bn_recalibrate, quiet)
    with _runtime(runtime), progress_factory(not quiet) as progress:
        idx, report = build_index_report(source, index_dir, spec, rebuild=rebuild, progress=progress,
                                          dba=_dba_option(dba), backend=chosen, dask=dask, replace=replace)
    _print_report(idx, report)


def _bn_recalibrated(spec, source, index_dir: str, images: int, quiet: bool):
    """The spec whose weights are its backbone with BatchNorm re-estimated on ``images`` of SOURCE."""
    from matchlens.errors import ConfigError
    from matchlens.io.collection import scan_many
    from matchlens.pipeline.index import as_paths
    from matchlens.train.bn_recalibrate import recalibrated_spec

    if spec.whitening == "lw":
        raise ConfigError("--bn-recalibrate cannot be combined with whitening lw: Lw was learned with the checkpoint's statistics")
    with progress_factory(not quiet) as progress:
        return recalibrated_spec(spec, scan_many(as_paths(source)), images, index_dir, progress)


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
    yes: bool = typer.Option(False, "--yes", "-y", help="Confirm removing every image under a folder."),
) -> None:
    """Remove images from an index (a folder removes every image under it: confirm with --yes)."""
    from matchlens.api import open_index
    from matchlens.errors import SourceError
    from matchlens.pipeline.index import removal_targets

    current = open_index(index_dir)
    matched = current.matching(paths)
    exact = set(removal_targets(paths))
    by_folder = [e for e in matched if e.path not in exact]
    if by_folder and not yes:
        raise SourceError(f"this would remove {len(matched)} of the {len(current.entries)} entries of '{current.root}' "
                          f"(every image under the folders given, e.g. '{by_folder[0].path}'); add --yes to confirm")
    idx, report = current.remove(paths)
    out.print(f"removed {report.removed}; {idx.size} images indexed in {idx.root}", markup=False, highlight=False)


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
