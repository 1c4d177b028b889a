"""presets, demo, serve."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from matchlens.cli.common import (RERANK_HELP, PresetOpt, app, err, out, progress_factory)


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
    rerank: Optional[str] = typer.Option(None, "--rerank", help=RERANK_HELP),
) -> None:
    """The main job on the embedded default: build a demo collection, index it, search, write HTML."""
    from matchlens.demo import run_demo

    with progress_factory(not quiet) as progress:
        result = run_demo(out_dir, preset=preset, progress=progress, rerank=rerank)
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
    allow_host: Optional[List[str]] = typer.Option(None, "--allow-host", metavar="NAME", help="Also answer requests for this Host (NAME, NAME:PORT, *.DOMAIN; repeatable; '*' turns the check off). By default only the --host address (and localhost names on loopback) is answered: other Hosts get 400 (DNS rebinding)."),
    request_timeout: float = typer.Option(30.0, "--request-timeout", help="Seconds a client has to send a request's head, then its whole body (slower: 408 and disconnected).", min=0.1),
    keep_alive_timeout: int = typer.Option(5, "--keep-alive-timeout", help="Seconds an idle connection is kept open.", min=1),
    map_dir: Optional[Path] = typer.Option(None, "--map", metavar="MAP", help="Localisation map (matchlens map) built with this index: enables POST /localize and the page's Localise button."),
    composer: Optional[Path] = typer.Option(None, "--composer", help="Composer model (matchlens train-composer) for this index: enables POST /search modify=TEXT and the page's modify field."),
    relation_model: Optional[Path] = typer.Option(None, "--relation-model", help="Relation model (matchlens train-relations --out) for this index's boxes: enables POST /search/relation and the page's relation form (default: the model stored with the index, if any)."),
    text_model: Optional[Path] = typer.Option(None, "--text-model", help="Text model (matchlens train-text) for this index's pipeline: enables POST /search/text and the page's text box."),
    identify: Optional[str] = typer.Option(None, "--identify", help="Name each query's class above its results: a recognizer (matchlens train-recognizer) or knn:LABELS (the kNN vote over labelled index images)."),
) -> None:
    """Serve an index over HTTP: search API (with --map, localisation), web page at /, API docs at /docs
    (Ctrl+C stops)."""
    from matchlens.service.hosts import is_wildcard
    from matchlens.service.server import is_loopback, serve as run_server

    allowed = list(allow_host or [])
    if not is_loopback(host):
        err.print(f"warning: listening on {host}: anyone who can reach it can search"
                  + ("" if token else " (writes stay disabled without --token)"), markup=False, highlight=False)
    if is_wildcard(host) and not allowed:
        err.print(f"warning: with --host {host} only requests for the names given with --allow-host NAME are "
                  "answered (others get 400)", markup=False, highlight=False)
    with_map = f"; map: {map_dir}" if map_dir else ""
    run_server(index_dir, host=host, port=port, token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
               max_pixels=max_pixels, verifier=verifier, allowed_hosts=allowed, request_timeout=request_timeout,
               keep_alive_timeout=keep_alive_timeout, map_dir=map_dir, composer=composer, text_model=text_model,
               identify=identify, relation_model=relation_model,
               on_ready=lambda url: _announce(f"matchlens: serving {index_dir} at {url} (writes "
                                              f"{'enabled' if token else 'disabled'}; evidence: "
                                              f"{'verifier' if verifier else 'spatial'}{with_map}; Ctrl+C stops)"))


def _announce(line: str) -> None:
    out.print(line, markup=False, highlight=False)
    sys.stdout.flush()  # scripts wait for this line (the URL) through a pipe
