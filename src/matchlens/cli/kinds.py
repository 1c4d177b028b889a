"""Classic descriptor kinds and late fusion: encode, kinds."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from matchlens.cli.common import (app, out, progress_factory)


@app.command()
def encode(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    kind: Optional[str] = typer.Option(None, "--kind", help="{encodings}; omit to update every stored kind."),
    name: Optional[str] = typer.Option(None, "--name", help="Store the kind under this name (default: the kind), e.g. bow16k."),
    params: Optional[str] = typer.Option(None, "--params", help="Encoding parameters, e.g. k=16384,soft=3 (bow), k=64,dim=256 (vlad), bits=128,alpha=3 (asmk)."),
    retrain: bool = typer.Option(False, "--retrain", help="Learn the codebook again: needed to change a stored kind's codebook or feature parameters (not dim/power/shrinkage, burstiness, alpha/tau/query_ma)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Add a descriptor kind (RootSIFT BoW, VLAD, DenseVLAD, ASMK*; regional; an ensemble with a second CNN) to an index, or bring the
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
