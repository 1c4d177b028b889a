"""A self-contained HTML page of ranked results: query, top results as thumbnails, scores, and
each result marked correct or incorrect. Thumbnails are embedded, so the page works offline and
can be moved or mailed as one file."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# Shared with the evaluation report; re-exported here so the demo's public names stay put.
from matchlens.evaluate.html import STYLE, THUMB, thumbnail_uri

__all__ = ["STYLE", "THUMB", "ResultRow", "thumbnail_uri", "write_results_page"]


@dataclass
class ResultRow:
    """One query's line on the page."""

    query_path: str
    label: str
    ap: float
    results: Sequence[tuple[str, float, str]]  # (path, score, verdict: "positive" | "negative" | "junk")


def write_results_page(path: Path, title: str, summary: str, rows: Sequence[ResultRow]) -> Path:
    """Write the page to ``path`` and return it."""
    body = [f"<h1>{html.escape(title)}</h1>", f"<p class=summary>{html.escape(summary)}</p>",
            "<p>Blue: query. Green: correct result. Red: incorrect. Grey: junk (ignored by the metric).</p>",
            "<table>"]
    for row in rows:
        cells = [f"<td class=q><img src='{thumbnail_uri(row.query_path)}'><div>{html.escape(Path(row.query_path).name)}</div>"
                 f"<div>{html.escape(row.label)}</div><div>AP {100 * row.ap:.1f}</div></td>"]
        for rank, (result, score, verdict) in enumerate(row.results, 1):
            mark = {"positive": "✔ correct", "negative": "✘ wrong", "junk": "junk"}[verdict]
            cells.append(f"<td class={verdict}><img src='{thumbnail_uri(result)}'><div>#{rank} · {score:.3f}</div>"
                         f"<div class=tag>{mark}</div><div>{html.escape(Path(result).name)}</div></td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    body.append("</table>")
    page = f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    path.write_text(page, encoding="utf-8")
    return path
