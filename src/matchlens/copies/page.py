"""The HTML page of ``matchlens duplicates --html DIR``: each group's members as thumbnails, and
each pair side by side (a PNG with its verified matches drawn) with its kind and evidence.

``DIR/index.html`` links the pair PNGs in ``DIR/pairs/`` by relative name and embeds the member
thumbnails, so the folder can be moved as a whole; nothing refers to a network resource.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageDraw

from matchlens.copies.detect import CopyPair, DuplicateReport
from matchlens.copies.kinds import COPY_KINDS
from matchlens.errors import ImageLoadError
from matchlens.evaluate.html import STYLE, thumbnail_html
from matchlens.io.images import load_image

__all__ = ["pair_png", "write_duplicates_page"]

PAIR_HEIGHT = 220  # px of each image in a pair PNG
_PAGE_STYLE = (".pair img{max-width:min(100%,900px);max-height:none} .kind{font-weight:bold}"
               ".exact .kind{color:#2a2} .near .kind{color:#36c} .partial .kind{color:#c60} .differ{color:#d33}"
               ".group{margin:1.5em 0;padding-top:.5em;border-top:2px solid #bbb} .members td{font-size:11px}")
_LINE = (40, 200, 60)


def write_duplicates_page(report: DuplicateReport, folder: str | Path) -> Path:
    """Write ``folder/index.html`` (and ``folder/pairs/*.png``) for ``report``; return the page's path."""
    folder = Path(folder)
    (folder / "pairs").mkdir(parents=True, exist_ok=True)
    thumbs: dict = {}
    c = report.counts
    body = ["<h1>Duplicate groups</h1>",
            f"<p class=summary>{html.escape(report.index)} · {c.get('images', 0)} images · {len(report.groups)} groups · "
            + " · ".join(f"{c.get(k, 0)} {html.escape(k)}" for k in COPY_KINDS.ordered())
            + f" · cosine floor {report.thresholds.cosine_floor:g}, k={report.settings.k}</p>"]
    body += [f"<p><em>{html.escape(note)}</em></p>" for note in report.notes]
    for number, group in enumerate(report.groups, 1):
        body.append(f"<div class=group><h2>Group {number}: {len(group.rows)} images ({', '.join(group.kinds)})</h2>")
        body.append("<table class=members><tr>" + "".join(
            f"<td>{thumbnail_html(p, Path(p).name, cache=thumbs)}<div>{html.escape(Path(p).name)}</div></td>"
            for p in group.paths) + "</tr></table><table>")
        for index, pair in enumerate(group.pairs, 1):
            name = f"g{number:04d}-p{index:03d}.png"
            pair_png(pair, folder / "pairs" / name)
            body.append(_pair_row(pair, f"pairs/{name}", report))
        body.append("</table></div>")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>matchlens duplicates</title>"
            f"<style>{STYLE}{_PAGE_STYLE}</style></head><body>{''.join(body)}</body></html>")
    path = folder / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _pair_row(pair: CopyPair, png: str, report: DuplicateReport) -> str:
    """One table row: kind and evidence on the left, the side-by-side PNG on the right."""
    evidence = pair.evidence.as_dict(report.thresholds)
    regions = evidence.pop("regions", None)
    differ = set(evidence.pop("regions_differ", []))
    lines = [f"{html.escape(k)}: {html.escape(str(v))}" for k, v in evidence.items()]
    if regions:
        lines.append("regions: " + ", ".join(
            f"<span class={'differ' if n in differ else 'agree'}>{html.escape(n)} {s:.2f}</span>" for n, s in regions.items()))
    href = html.escape(quote(png), quote=True)
    names = " ↔ ".join(html.escape(Path(p).name) for p in pair.paths)
    return (f"<tr class='pair {html.escape(pair.kind or '')}'><td style='text-align:left'><div class=kind>"
            f"{html.escape(pair.kind or 'rejected')}</div><div>{names}</div><div>{'<br>'.join(lines)}</div></td>"
            f"<td><a href='{href}'><img src='{href}' alt='{names}'></a></td></tr>")


def pair_png(pair: CopyPair, path: Path) -> Path:
    """The two images of ``pair`` side by side at the same height, verified matches drawn in green."""
    images = [_load(p) for p in pair.paths]
    resized = [im.resize((max(1, round(im.width * PAIR_HEIGHT / im.height)), PAIR_HEIGHT)) for im in images]
    canvas = Image.new("RGB", (resized[0].width + resized[1].width + 8, PAIR_HEIGHT), (255, 255, 255))
    canvas.paste(resized[0], (0, 0))
    offset = resized[0].width + 8
    canvas.paste(resized[1], (offset, 0))
    geometry = pair.evidence.geometry
    if geometry is not None and len(geometry.points):
        # points are in the frames the features were detected in: scale those to the drawn size
        scales = [r.width / frame[0] for r, frame in zip(resized, geometry.frames)]
        draw = ImageDraw.Draw(canvas)
        step = max(1, len(geometry.points) // 60)  # a readable number of lines
        for xa, ya, xb, yb in geometry.points[::step].tolist():
            draw.line((xa * scales[0], ya * scales[0], offset + xb * scales[1], yb * scales[1]), fill=_LINE, width=1)
    canvas.save(path, "PNG")
    return path


def _load(path: str) -> Image.Image:
    """The image at a size fit for drawing, or a grey placeholder if it cannot be read any more."""
    try:
        return load_image(path, max_side=2 * PAIR_HEIGHT)
    except (ImageLoadError, OSError):
        return Image.new("RGB", (PAIR_HEIGHT, PAIR_HEIGHT), (200, 200, 200))
