"""``index.html`` of ``matchlens search --explain DIR``: the query (box drawn) and, for each ranked
result, its rank, score, file name and evidence PNG.

The page sits beside the PNGs and links them by relative name, so the folder can be moved as a
whole; the query thumbnail is embedded and nothing refers to a network resource. Thumbnails and
the base style are the demo's and the evaluation report's (:mod:`matchlens.evaluate.html`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

from matchlens.evaluate.html import STYLE, thumbnail_html

# The evidence PNGs are wide (two panels): let them use the page width, unlike the thumbnails.
EVIDENCE_STYLE = (".evidence img{max-width:min(100%,1100px);max-height:none;outline:none}"
                  ".evidence td{text-align:left} .rank{font-size:1.4em;font-weight:bold}")


@dataclass(frozen=True)
class EvidenceRow:
    """One result on the page: ``png`` is the evidence file's name, relative to the page."""

    rank: int
    score: float
    path: str
    png: str
    caption: str


def write_evidence_page(path: str | Path, query: str | Path, box: Sequence[float] | None, method: str,
                        rows: Sequence[EvidenceRow]) -> Path:
    """Write the results page to ``path`` and return it.

    Args:
        path: the HTML file to write (in the folder that holds the PNGs).
        query: the query image file; its thumbnail is embedded with ``box`` drawn in yellow.
        box: the query box (pixels of the upright full-size query), or None.
        method: how the evidence was made, shown under the title.
        rows: the ranked results, best first.
    """
    path = Path(path)
    name = Path(query).name
    shown_box = "" if box is None else " · box " + ",".join(f"{v:g}" for v in box)
    body = [f"<h1>Evidence for {html.escape(name)}</h1>",
            f"<p class=summary>{len(rows)} results · evidence: {html.escape(method)}</p>",
            f"<table><tr><td class=q>{thumbnail_html(query, name, side=320, box=box)}"
            f"<div>query: {html.escape(name)}{html.escape(shown_box)}</div></td></tr></table>",
            "<table class=evidence>"]
    body += [_row(row) for row in rows]
    body.append("</table>")
    title = f"matchlens evidence: {name}"
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}{EVIDENCE_STYLE}</style></head><body>{''.join(body)}</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _row(row: EvidenceRow) -> str:
    href = html.escape(quote(row.png), quote=True)
    name = html.escape(Path(row.path).name)
    return (f"<tr><td><div class=rank>#{row.rank}</div><div>score {row.score:.4f}</div>"
            f"<div title='{html.escape(row.path, quote=True)}'>{name}</div><div>{html.escape(row.caption)}</div></td>"
            f"<td><a href='{href}'><img src='{href}' alt='evidence for {name}'></a></td></tr>")
