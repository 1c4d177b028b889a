"""The demo: real photos from PyPI packages + altered views as queries → index → search → HTML."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matchlens.demo.collection import build_demo_collection
from matchlens.demo.report import ResultRow, write_results_page
from matchlens.errors import SourceError
from matchlens.evaluate.metrics import average_precision, mean_average_precision
from matchlens.api import build_index_report


@dataclass
class DemoResult:
    """Where the demo wrote its outputs and how well it did."""

    collection_dir: Path
    index_dir: Path
    html_path: Path
    map: float
    top1_correct: int
    n_images: int
    n_queries: int


def run_demo(out_dir: str | Path = "demo-out", preset: str = "default", top: int = 5, progress=None,
             rerank: str | None = None) -> DemoResult:
    """Build the demo collection, index it with ``preset``, run every query (re-ranked by the chain
    ``rerank``, e.g. ``"auto"``), write ``results.html``."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise SourceError(f"'{out_dir}' is a file; give the demo a folder to write into (new or its own)")
    try:
        collection, queries_dir, queries = build_demo_collection(out_dir)
    except OSError as exc:
        raise SourceError(f"cannot write the demo into '{out_dir}': {exc.strerror or exc}") from None
    index, _ = build_index_report(collection, out_dir / "index", preset=preset, rebuild=True, progress=progress,
                                  replace=True)  # the demo owns its folder
    advance = progress(len(queries), "searching") if progress else None
    rows, aps, top1 = [], [], 0
    for query in queries:
        results = index.search(queries_dir / query.image, k=index.size, rerank=rerank)
        names = [Path(r.path).name for r in results]
        ap = average_precision(names, {query.source})
        aps.append(ap)
        top1 += bool(names) and names[0] == query.source
        shown = [(r.path, r.score, "positive" if Path(r.path).name == query.source else "negative") for r in results[:top]]
        rows.append(ResultRow(str(queries_dir / query.image), query.alteration, ap, shown))
        if advance:
            advance(1)
    m = mean_average_precision(aps)
    summary = (f"{len(queries)} queries against {index.size} images, pipeline {index.spec.describe()}"
               + (f", re-ranked by {rerank}" if rerank else "") + ": "
               f"mAP {100 * m:.1f}, top-1 correct {top1}/{len(queries)}")
    html_path = write_results_page(out_dir / "results.html", "matchlens demo results", summary, rows)
    return DemoResult(collection, index.root, html_path, m, top1, index.size, len(queries))
