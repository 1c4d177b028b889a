"""A self-contained HTML page of ranked results: query, top results as thumbnails, scores, and
each result marked correct or incorrect. Thumbnails are embedded, so the page works offline and
can be moved or mailed as one file."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

THUMB = 160


@dataclass
class ResultRow:
    """One query's line on the page."""

    query_path: str
    label: str
    ap: float
    results: Sequence[tuple[str, float, str]]  # (path, score, verdict: "positive" | "negative" | "junk")


def thumbnail_uri(path: str | Path, side: int = THUMB) -> str:
    """A JPEG data URI of a small thumbnail of ``path``."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((side, side))
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em} .summary{margin-bottom:1em}
table{border-collapse:collapse} td{padding:6px;vertical-align:top;text-align:center;font-size:12px}
tr{border-bottom:1px solid #ddd} img{display:block;max-width:160px;max-height:160px;margin:auto}
.q img{outline:3px solid #36c} .positive img{outline:4px solid #2a2} .negative img{outline:4px solid #d33}
.junk img{outline:4px solid #aaa} .tag{font-weight:bold} .positive .tag{color:#2a2} .negative .tag{color:#d33}
"""


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
