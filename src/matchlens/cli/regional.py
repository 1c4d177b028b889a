"""Regional matching (PS-Net): ``fit-regions``, and what ``search --regional`` prints and draws."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from matchlens.cli.common import app, err, out, progress_factory


@app.command("fit-regions")
def fit_regions(
    index_dir: Path = typer.Argument(..., help="Index folder with a regional kind (matchlens encode IDX --kind regional)."),
    pairs: Path = typer.Argument(..., help="CSV with columns query,positive,negative (indexed images or any files; paths relative to the CSV)."),
    out_file: Path = typer.Option(..., "--out", help="Where to write the weights (lambdas.json) for search --regional --weights."),
    category_column: Optional[str] = typer.Option(None, "--category-column", help="CSV column naming each triplet's category: one λ per category (and 'default' over all)."),
    name: str = typer.Option("regional", "--name", help="The regional kind to fit (as stored by matchlens encode --name)."),
    margin: float = typer.Option(0.1, "--margin", min=0.0, max=2.0, help="Triplet margin m of the plagiarism loss."),
    epochs: int = typer.Option(80, "--epochs", min=1, help="Coordinate-ascent epochs (step 0.1, 0.05 from epoch 41, 0.01 from 61)."),
    objective: str = typer.Option("paper", "--objective", help="Loss minimised: {objectives} (paper: eq. 4, one hinge per region, linear in λ so λ ends one-hot; pooled: one hinge on the λ-weighted distance)."),
    as_json: bool = typer.Option(False, "--json", help="Print the written weights file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Learn region weights λ per category by PS-Net's coordinate ascent on the α_tri-weighted
    plagiarism loss (λ ≥ 0, summing to 1). Regions that copies keep gain weight."""
    from matchlens.api import open_index
    from matchlens.fileio import write_json_atomic
    from matchlens.regional import open_regional
    from matchlens.errors import ConfigError
    from matchlens.regional.fit import OBJECTIVES, fit_regions as fit, read_pairs

    if objective not in OBJECTIVES.names():
        raise ConfigError(f"unknown --objective '{objective}' (known: {', '.join(OBJECTIVES.names())})")
    kind = open_regional(open_index(index_dir), name)
    with progress_factory(not quiet) as progress:
        triplets = read_pairs(kind, pairs, category_column, progress)
    result = fit(kind, triplets, margin, epochs, objective)
    payload = result.to_json()
    write_json_atomic(out_file, payload, indent=1)
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=1) + "\n")
        return
    table = Table("category", "triplets", *kind.labels, "loss uniform → fitted", title=f"λ of {kind.name} ({kind.layout})")
    for key, lam in result.weights.items():
        table.add_row(key, str(result.triplets[key]), *(f"{v:.3f}" for v in lam),
                      f"{result.loss_uniform[key]:.4f} → {result.loss_fitted[key]:.4f}")
    out.print(table)
    out.print(f"weights: {out_file}", markup=False, highlight=False)


def regional_search(index, query: str, box, k: int, chain, rerank: Optional[str], kind: Optional[str],
                    fuse: Optional[str], weights: Optional[Path], category: Optional[str], as_json: bool, jsonl: bool,
                    explain_dir: Optional[Path]) -> None:
    """``search --regional``: rank by Σ λ_r cos and show each result's region similarities."""
    from matchlens.api import regional_search as search

    answer, plan, matches = search(index, str(Path(query).expanduser()), box, k, weights, category, chain,
                                   kind or "regional", fuse)
    page = _write_page(query, box, answer.results, plan, matches, explain_dir, rerank) if explain_dir else None
    if jsonl:
        line = answer.to_dict()
        line["regional"] = _summary(plan)
        for item, match in zip(line["results"], matches):
            item.update(match.to_dict())
        sys.stdout.write(json.dumps(line) + "\n")
    elif as_json:
        sys.stdout.write(json.dumps([{**r.to_dict(), **m.to_dict()} for r, m in zip(answer.results, matches)],
                                    indent=1) + "\n")
    else:
        _print_table(index, query, answer.results, plan, matches)
    if page is not None:
        (err if as_json or jsonl else out).print(f"regions page: {page}", markup=False, highlight=False)


def _summary(plan) -> dict:
    return {"kind": plan.kind.name, "layout": plan.kind.layout, "category": plan.category,
            "weights": dict(zip(plan.kind.names, (round(w, 6) for w in plan.weights.tolist()))),
            "differs_below": plan.differs_below}


def _print_table(index, query: str, results, plan, matches) -> None:
    table = Table("rank", "score", "path", *plan.kind.labels, "verdict",
                  title=f"{Path(query).name} in {index.root.name} ({index.size} images), regional: {plan.describe()}")
    for r, m in zip(results, matches):
        cells = [Text(f"{v:.2f}", style="red" if v < plan.differs_below else "") for v in m.similarities.values()]
        table.add_row(str(r.rank), f"{r.score:.4f}", Text(r.path), *cells, m.verdict)
    out.print(table)


def _write_page(query: str, box, results, plan, matches, folder: Path, rerank: Optional[str]) -> Path:
    """A PNG per result (regions drawn on query and result) and index.html (the evidence page's layout)."""
    from matchlens.explain.page import EvidenceRow, write_evidence_page
    from matchlens.io.images import load_image
    from matchlens.regional.render import render_pair

    folder.mkdir(parents=True, exist_ok=True)
    kind = plan.kind
    shown = kind.source.load(query, box)  # the query as searched: its regions are relative to the box
    query_boxes = kind.query_boxes(query, box)
    rows = []
    for r, m in zip(results, matches):
        png = f"regions_{r.rank:03d}.png"
        result = load_image(r.path, max_side=720)
        title = f"#{r.rank} {Path(r.path).name}: {m.verdict}"
        (folder / png).write_bytes(render_pair(shown, query_boxes, result, m.boxes, kind.names,
                                               list(m.similarities.values()), title, plan.differs_below))
        caption = m.verdict + " · " + ", ".join(f"{lab} {v:.2f}" for lab, v in zip(kind.labels, m.similarities.values()))
        rows.append(EvidenceRow(r.rank, r.score, r.path, png, caption))
    method = "regional similarity " + plan.describe() + (f"; re-ranked by {rerank}" if rerank else "")
    return write_evidence_page(folder / "index.html", query, box, method, rows)
