"""Evaluation report: per-query CSV, precision-recall curves, a page of the worst queries, an index.

Everything is written into one folder and works offline: the PR plot is a PNG next to the HTML,
and every thumbnail is embedded in the page as a data URI.

The precision-recall curves and the verdicts follow the metric exactly (revisitop's protocol, as
in :mod:`matchlens.evaluate.metrics`): junk images and the query itself (unless the ground truth
lists it among its own positives) are removed from the ranking before anything is counted, so
what the report shows is what the AP measured.
"""

from __future__ import annotations

import csv
import html
import json
import math
import numbers
import textwrap
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from matchlens.evaluate.html import STYLE, thumbnail_html
from matchlens.evaluate.metrics import _hit_ranks
from matchlens.evaluate.results import Evaluation, QueryOutcome

__all__ = [
    "VERDICT_COLOURS",
    "VERDICT_TEXT",
    "plot_pr_curves",
    "precision_recall_points",
    "write_per_query_csv",
    "write_report",
    "write_worst_queries_html",
]

#: What each verdict means for the metric, as printed under each result thumbnail.
VERDICT_TEXT = {
    "positive": "positive",
    "junk": "junk — ignored by the metric",
    "negative": "negative — not in the ground truth",
    "query": "the query itself — ignored by the metric",
}

#: Colour of each verdict (the same as the demo's results page).
VERDICT_COLOURS = {"positive": "#2a2", "junk": "#888", "negative": "#d33", "query": "#36c"}

#: How many positive ranks are listed per query on the worst-queries page.
FIRST_POSITIVES = 5

_RECALL_GRID = np.linspace(0.0, 1.0, 101)

_REPORT_STYLE = STYLE + "".join(
    f".{v} img{{outline:4px solid {c}}} .{v} .tag{{color:{c}}}\n" for v, c in VERDICT_COLOURS.items()
) + """
section.qblock{border-bottom:1px solid #ccc;padding:1em 0}
.head{display:flex;gap:1.5em;align-items:flex-start} .head .info{font-size:13px;line-height:1.5}
.results{display:flex;flex-wrap:wrap;gap:10px;margin-top:.8em}
figure{margin:0;width:170px;text-align:center;font-size:12px} figure img{margin:4px auto 8px}
.name{word-break:break-all} .q img{margin:4px}
.missing{border:2px dashed #999;margin:auto;font-size:11px;color:#555;overflow:hidden;
  display:flex;flex-direction:column;justify-content:center;align-items:center}
.metrics td,.metrics th{padding:3px 10px;text-align:right;border-bottom:1px solid #ddd;font-size:14px;vertical-align:middle}
"""


# ----------------------------------------------------------------------------- shared helpers

def _excluded(outcome: QueryOutcome) -> frozenset[str]:
    """Ids the metric removes from the ranking: the junk, and the query image itself unless the
    ground truth lists it as one of its own positives (as :func:`~matchlens.evaluate.protocol.query_metrics` does)."""
    query = outcome.query
    self_ = frozenset() if query.image in query.positives else {query.image}
    return frozenset(query.junk) | self_


def _metric_verdict(outcome: QueryOutcome, name: str) -> str:
    """The verdict as the metric applies it: ``query``, ``junk``, ``positive`` or ``negative``.

    Unlike :meth:`QueryOutcome.verdict`, junk wins over positive (``average_precision`` removes
    an id listed as both) and a query image listed among its own positives counts as positive.
    """
    if name in outcome.query.junk:
        return "junk"
    if name in outcome.query.positives:
        return "positive"
    return "query" if name == outcome.query.image else "negative"


def _require_queries(evaluation: Evaluation) -> None:
    """Refuse an evaluation without queries: every part of the report would be empty."""
    if not evaluation.outcomes:
        raise ValueError(
            f"evaluation of {evaluation.dataset!r} ({evaluation.protocol}) has no queries: nothing to report"
        )


def _check_count(value: int, what: str) -> int:
    """Refuse negative counts (``worst``, ``top``, ``highlight``)."""
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def _by_ap(outcomes: Iterable[QueryOutcome]) -> list[QueryOutcome]:
    """Outcomes sorted by AP ascending, queries without positives (NaN AP) last, ties in input order."""
    return sorted(outcomes, key=lambda o: (math.isnan(o.ap), 0.0 if math.isnan(o.ap) else o.ap))


def _scored(evaluation: Evaluation) -> list[QueryOutcome]:
    """Outcomes with an AP (queries that have positives), worst first."""
    return [o for o in _by_ap(evaluation.outcomes) if not math.isnan(o.ap)]


def _fmt(value: Any, digits: int = 3) -> str:
    """A metric value for display: fixed decimals, ``n/a`` for NaN or missing."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    return "n/a" if math.isnan(value) else f"{float(value):.{digits}f}"


def _map_percent(evaluation: Evaluation) -> float:
    """mAP in % from the summary, else from the outcomes (NaN when no query has positives)."""
    value = evaluation.summary.get("mAP")
    if value is not None:
        return float(value)
    aps = [o.ap for o in evaluation.outcomes if not math.isnan(o.ap)]
    return 100.0 * math.fsum(aps) / len(aps) if aps else math.nan


# ----------------------------------------------------------------------------- PR curves

def precision_recall_points(outcome: QueryOutcome) -> tuple[np.ndarray, np.ndarray]:
    """The vertices of the query's precision-recall curve, as revisitop integrates it.

    Junk and the query itself (unless it is one of its own positives) are removed from the
    ranking first, as the evaluation protocol does. The curve starts at recall 0,
    precision 1; then for each positive, at 0-based position ``r`` of the junk-free ranking and
    ``j`` positives before it, it has the point just before the positive (recall ``j / P``,
    precision ``j / r``: a vertical drop, omitted when equal to the previous point) and the point
    at the positive (recall ``(j + 1) / P``, precision ``(j + 1) / (r + 1)``), where ``P`` is the
    number of positives. The trapezoidal area under these points, ``np.trapezoid(precision,
    recall)``, is exactly :func:`~matchlens.evaluate.metrics.average_precision`; positives
    missing from the ranking leave the curve short of recall 1 and so contribute nothing.

    Returns:
        ``(recall, precision)``, two float arrays of the same length, recall non-decreasing;
        both empty for a query without positives (its AP is undefined).

    Raises:
        ValueError: if the ranking repeats an id.
    """
    positives = frozenset(outcome.query.positives)
    if not positives:
        return np.empty(0), np.empty(0)
    n = len(positives)
    recall, precision = [0.0], [1.0]
    for j, r in enumerate(_hit_ranks(outcome.ranking, positives, _excluded(outcome))):
        before = 1.0 if r == 0 else j / r  # revisitop's precision just before the hit
        if (j / n, before) != (recall[-1], precision[-1]):
            recall.append(j / n)
            precision.append(before)
        recall.append((j + 1) / n)
        precision.append((j + 1) / (r + 1))
    return np.asarray(recall), np.asarray(precision)


def _hit_points(outcome: QueryOutcome) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at each positive only: what interpolation takes its maximum over."""
    positives = frozenset(outcome.query.positives)
    ranks = np.asarray(_hit_ranks(outcome.ranking, positives, _excluded(outcome)), dtype=float)
    hits = np.arange(1, len(ranks) + 1, dtype=float)
    return hits / max(len(positives), 1), hits / (ranks + 1)


def _interpolated_precision(outcome: QueryOutcome, grid: np.ndarray = _RECALL_GRID) -> np.ndarray:
    """Interpolated precision on ``grid``: the best precision reached at any recall >= r, 0 past
    the last positive found (the usual interpolation, so the mean curve is monotone)."""
    recall, precision = _hit_points(outcome)
    if recall.size == 0:
        return np.zeros_like(grid)
    best_from = np.maximum.accumulate(precision[::-1])[::-1]  # max precision at this hit or later
    idx = np.searchsorted(recall, grid - 1e-12, side="left")  # first hit with recall >= r
    padded = np.append(best_from, 0.0)
    return padded[idx]


def _mathtext_safe(text: str) -> str:
    """Escape ``$`` so matplotlib does not parse a file name as mathtext (and fail on it)."""
    return text.replace("$", r"\$")


def _short(name: str, width: int = 32) -> str:
    """A name cut to ``width`` characters for the legend, keeping its end (the file name)."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _plot_title(evaluation: Evaluation) -> str:
    """Dataset, protocol, pipeline and mAP, wrapped to fit the figure."""
    head = f"{evaluation.dataset} — {evaluation.protocol} — mAP {_fmt(_map_percent(evaluation), 1)}%"
    pipeline = textwrap.fill(evaluation.pipeline, 90, max_lines=2, placeholder=" …")
    return _mathtext_safe(f"{head}\n{pipeline}" if pipeline else head)


def plot_pr_curves(evaluation: Evaluation, path: Path, highlight: int = 5) -> Path:
    """Plot every query's precision-recall curve into one PNG and return its path.

    Thin grey: each query's curve (:func:`precision_recall_points`). Bold black: the mean
    interpolated precision over the queries that have positives (those without are left out,
    as from mAP). In colour: the ``highlight`` queries with the lowest AP, with their AP in the
    legend. The title gives dataset, protocol, pipeline and mAP.

    Raises:
        ValueError: the evaluation has no queries, or ``highlight`` is negative.
    """
    _require_queries(evaluation)
    highlight = _check_count(highlight, "highlight")
    scored = _scored(evaluation)
    # The OO API (no pyplot) renders with Agg without touching the process-wide backend, so
    # calling this from a notebook or a GUI program does not switch its backend.
    fig = Figure(figsize=(8, 6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    segments = [np.column_stack(precision_recall_points(o)) for o in scored]
    ax.add_collection(LineCollection(segments, colors="#bbb", linewidths=0.6, label=f"each query ({len(scored)})"))
    if scored:
        mean = np.mean([_interpolated_precision(o) for o in scored], axis=0)
        ax.plot(_RECALL_GRID, mean, color="black", linewidth=2.8, label="mean interpolated precision")
    for i, outcome in enumerate(scored[:highlight]):
        recall, precision = precision_recall_points(outcome)
        # Markers, because a query with no positive retrieved has a one-point "curve".
        ax.plot(recall, precision, color=f"C{i % 10}", linewidth=1.6, marker="o", markersize=3,
                label=_mathtext_safe(f"{_short(outcome.query.image)}  AP {100 * outcome.ap:.1f}"))
    if not scored:
        ax.text(0.5, 0.5, "no query has positives: nothing to plot", ha="center", va="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(_plot_title(evaluation), fontsize=10)
    path = Path(path)
    fig.savefig(path, format="png")
    return path


# ----------------------------------------------------------------------------- CSV

def _metric_names(outcomes: Sequence[QueryOutcome]) -> list[str]:
    """Every metric any query has, in first-seen order (so AP, P@1, ... keep their order)."""
    return list(dict.fromkeys(name for o in outcomes for name in o.metrics))


def _csv_value(value: float | None) -> str:
    """A metric for the CSV: full precision; empty for NaN or missing, as JSON's null."""
    if value is None or math.isnan(value):
        return ""
    return repr(float(value))


def write_per_query_csv(evaluation: Evaluation, path: Path) -> Path:
    """Write one row per query (query, group, query_label, then every metric) sorted by AP
    ascending, queries without positives last; NaN metrics are empty cells. Returns ``path``.

    Raises:
        ValueError: the evaluation has no queries.
    """
    _require_queries(evaluation)
    metrics = _metric_names(evaluation.outcomes)
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "group", "query_label", *metrics])
        for o in _by_ap(evaluation.outcomes):
            writer.writerow([o.query.image, o.query.group or "", o.query_label,
                             *(_csv_value(o.metrics.get(m)) for m in metrics)])
    return path


# ----------------------------------------------------------------------------- worst queries page

def _image_path(evaluation: Evaluation, name: str) -> Path:
    """Where the image called ``name`` is (an absolute name stays as it is)."""
    return Path(evaluation.image_root) / name


def _positives_text(outcome: QueryOutcome) -> str:
    """How many positives exist and at which ranks the first few were found.

    Ranks are 1-based positions in the ranking as shown; the junk-free rank (what AP counts)
    is added when junk or the query itself come before the first positive.
    """
    n = len(outcome.query.positives)
    shown = [i for i, name in enumerate(outcome.ranking, 1) if _metric_verdict(outcome, name) == "positive"]
    counted = _hit_ranks(outcome.ranking, frozenset(outcome.query.positives), _excluded(outcome))
    parts = [f"{n} positive{'s' if n != 1 else ''} in the ground truth, {len(shown) or 'none'} in the ranking"]
    if not shown:
        return parts[0]
    first = f"first positive at rank {shown[0]}"
    if counted and counted[0] + 1 != shown[0]:
        first += f" (rank {counted[0] + 1} once junk and the query are removed)"
    parts.append(first)
    if len(shown) > 1:
        more = ", ".join(str(r) for r in shown[:FIRST_POSITIVES])
        parts.append(f"positives at ranks {more}{', …' if len(shown) > FIRST_POSITIVES else ''}")
    return "; ".join(parts)


def _result_figure(evaluation: Evaluation, outcome: QueryOutcome, rank: int, cache: dict) -> str:
    """One result: thumbnail, rank and score, the verdict, the name."""
    name = outcome.ranking[rank - 1]
    score = outcome.scores[rank - 1] if rank - 1 < len(outcome.scores) else math.nan
    verdict = _metric_verdict(outcome, name)
    thumb = thumbnail_html(_image_path(evaluation, name), name, cache=cache)
    return (f"<figure class='result {verdict}'>{thumb}<div>#{rank} · {_fmt(score)}</div>"
            f"<div class=tag>{html.escape(VERDICT_TEXT[verdict])}</div>"
            f"<div class=name>{html.escape(name)}</div></figure>")


def _query_section(evaluation: Evaluation, outcome: QueryOutcome, top: int, cache: dict) -> str:
    """A query's block: its thumbnail (box drawn), AP and metrics, positives, top results."""
    q = outcome.query
    thumb = thumbnail_html(_image_path(evaluation, q.image), q.image, box=q.box, cache=cache)
    metrics = "".join(f" · {html.escape(k)} {_fmt(v)}" for k, v in outcome.metrics.items() if k != "AP")
    info = [f"<b class=qname>{html.escape(q.image)}</b>",
            f"group {html.escape(q.group or '—')} · {html.escape(outcome.query_label or 'query')}"
            + (" · box drawn in yellow" if q.box is not None else ""),
            f"<b>AP {_fmt(outcome.ap)}</b>{metrics}",
            f"<span class=positives>{html.escape(_positives_text(outcome))}</span>"]
    results = "".join(_result_figure(evaluation, outcome, rank, cache)
                      for rank in range(1, min(top, len(outcome.ranking)) + 1))
    if not results:
        results = "<p>The ranking is empty.</p>"
    return (f"<section class=qblock data-query='{html.escape(q.image)}' data-ap='{float(outcome.ap)!r}'>"
            f"<div class=head><div class=q>{thumb}</div><div class=info>{'<br>'.join(info)}</div></div>"
            f"<div class=results>{results}</div></section>")


def _unscored_section(outcomes: Sequence[QueryOutcome]) -> str:
    """The queries without positives, listed apart: their AP is undefined and mAP skips them."""
    if not outcomes:
        return ""
    items = "".join(f"<li>{html.escape(o.query.image)} (group {html.escape(o.query.group or '—')})</li>"
                    for o in outcomes)
    return (f"<h2>Queries without positives ({len(outcomes)})</h2><p>Their AP is undefined; "
            f"they are left out of mAP and of this page's ranking.</p><ul class=unscored>{items}</ul>")


def _page(title: str, body: str) -> str:
    """A complete, self-contained HTML document."""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_REPORT_STYLE}</style></head><body>{body}</body></html>")


def _legend() -> str:
    """What the outlines and verdict colours mean."""
    items = " ".join(f"<span class={v}><span class=tag>■ {html.escape(t)}</span></span>"
                     for v, t in VERDICT_TEXT.items())
    return f"<p>{items}</p>"


def write_worst_queries_html(evaluation: Evaluation, path: Path, worst: int = 10, top: int = 10) -> Path:
    """Write a self-contained page of the ``worst`` queries by AP (lowest first) and return ``path``.

    For each: the query thumbnail with its box, AP and every metric, how many positives exist
    and where the first few were found, then the first ``top`` results of the ranking (fewer if
    the ranking is shorter) with rank, score and a verdict that says how the metric counted it.
    Queries without positives are listed apart at the end. Missing images become a placeholder
    naming the file.

    Raises:
        ValueError: the evaluation has no queries, or ``worst`` or ``top`` is negative.
    """
    _require_queries(evaluation)
    worst, top = _check_count(worst, "worst"), _check_count(top, "top")
    scored = _scored(evaluation)
    unscored = [o for o in evaluation.outcomes if math.isnan(o.ap)]
    cache: dict = {}  # an image shown for several queries is decoded once
    title = f"{evaluation.dataset} — {evaluation.protocol}: worst queries"
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class=summary>{html.escape(evaluation.pipeline)} · mAP {_fmt(_map_percent(evaluation), 1)}% · "
            f"the {min(worst, len(scored))} lowest-AP of {len(scored)} scored queries, top {top} results each</p>",
            _legend()]
    body += [_query_section(evaluation, o, top, cache) for o in scored[:worst]]
    body.append(_unscored_section(unscored))
    path = Path(path)
    path.write_text(_page(title, "".join(body)), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- index + everything

def _json_safe(value: Any) -> Any:
    """``value`` with every NaN replaced by None, so the file is valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _index_page(evaluation: Evaluation, files: dict[str, Path]) -> str:
    """The index: summary table, notes, links (relative) to the other files, the PR plot."""
    n_unscored = sum(math.isnan(o.ap) for o in evaluation.outcomes)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v, 2)}</td></tr>" for k, v in evaluation.summary.items())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in evaluation.notes)
    links = {"worst": "worst queries (thumbnails)", "csv": "per-query metrics (CSV)",
             "summary": "summary and per-query metrics (JSON)", "pr": "precision-recall curves (PNG)"}
    link_items = "".join(f"<li><a href='{html.escape(files[k].name)}'>{html.escape(text)}</a></li>"
                         for k, text in links.items())
    title = f"{evaluation.dataset} — {evaluation.protocol}"
    body = (f"<h1>{html.escape(title)}</h1><p class=summary>{html.escape(evaluation.pipeline)}<br>"
            f"{len(evaluation.outcomes)} queries"
            + (f", {n_unscored} without positives (left out of the means)" if n_unscored else "")
            + f"</p><table class=metrics>{rows}</table>"
            + (f"<h2>Notes</h2><ul class=notes>{notes}</ul>" if notes else "")
            + f"<h2>Files</h2><ul>{link_items}</ul>"
            + f"<img src='{html.escape(files['pr'].name)}' alt='precision-recall curves' style='max-width:100%;max-height:none'>")
    return _page(title, body)


def write_report(evaluation: Evaluation, out_dir: Path, worst: int = 10, top: int = 10) -> dict[str, Path]:
    """Write the whole report into ``out_dir`` (created if needed) and return the files.

    Files: ``summary.json`` (:meth:`Evaluation.to_dict`, NaN as null), ``per_query.csv``,
    ``pr_curves.png``, ``worst_queries.html`` and ``index.html`` linking them.

    Returns:
        ``{"summary": ..., "csv": ..., "pr": ..., "worst": ..., "index": ...}``.

    Raises:
        ValueError: the evaluation has no queries, or ``worst`` or ``top`` is negative.
    """
    _require_queries(evaluation)
    # Check the counts before writing anything, so a bad call leaves no half-written report.
    _check_count(worst, "worst")
    _check_count(top, "top")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"summary": out_dir / "summary.json"}
    files["summary"].write_text(
        json.dumps(_json_safe(evaluation.to_dict()), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    files["csv"] = write_per_query_csv(evaluation, out_dir / "per_query.csv")
    files["pr"] = plot_pr_curves(evaluation, out_dir / "pr_curves.png")
    files["worst"] = write_worst_queries_html(evaluation, out_dir / "worst_queries.html", worst, top)
    files["index"] = out_dir / "index.html"
    files["index"].write_text(_index_page(evaluation, files), encoding="utf-8")
    return files
