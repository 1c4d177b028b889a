"""The regions drawn on a query and a result, coloured by their similarity (Pillow only).

Each region's box is outlined on both images — red where its cosine is below the verdict
threshold (the region differs), yellow to green above it (green: identical) — and labelled with the region's name
and cosine; a differing region gets a thicker outline. The query panel is the query as searched
(cropped to its box), since a query's regions are relative to its box.
"""

from __future__ import annotations

import io
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from matchlens.regional.layouts import Box, region_label
from matchlens.regional.scoring import DIFFERS_BELOW

__all__ = ["colour", "draw_regions", "render_pair"]

PANEL = 360  # longest side of each panel, pixels


def colour(similarity: float, differs_below: float = DIFFERS_BELOW) -> tuple[int, int, int]:
    """Red for a region that differs; yellow (just above the threshold) to green (identical) otherwise."""
    if similarity < differs_below:
        return 230, 30, 30
    t = min(max((similarity - differs_below) / max(1.0 - differs_below, 1e-6), 0.0), 1.0)
    return int(round(220 * (1 - t))), 190, 30


def draw_regions(image: Image.Image, boxes: Sequence[Box], names: Sequence[str], similarities: Sequence[float],
                 differs_below: float = DIFFERS_BELOW, side: int = PANEL) -> Image.Image:
    """A copy of ``image`` (longest side ``side``) with the relative ``boxes`` outlined and labelled."""
    scale = side / max(image.size)
    panel = image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                        Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    w, h = panel.size
    for box, name, sim in zip(boxes, names, similarities):
        x0, y0, x1, y1 = box[0] * w, box[1] * h, box[2] * w - 1, box[3] * h - 1
        tint = colour(sim, differs_below)
        draw.rectangle((x0, y0, max(x1, x0), max(y1, y0)), outline=tint, width=4 if sim < differs_below else 2)
        label = f"{region_label(name)} {sim:.2f}"
        left, top, right, bottom = draw.textbbox((x0 + 3, y0 + 2), label, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
        draw.text((x0 + 3, y0 + 2), label, fill=tint, font=font)
    return panel


def render_pair(query: Image.Image, query_boxes: Sequence[Box], result: Image.Image, result_boxes: Sequence[Box],
                names: Sequence[str], similarities: Sequence[float], title: str = "",
                differs_below: float = DIFFERS_BELOW) -> bytes:
    """PNG bytes: the query and a result side by side, both with their regions drawn."""
    left = draw_regions(query, query_boxes, names, similarities, differs_below)
    right = draw_regions(result, result_boxes, names, similarities, differs_below)
    gap, head = 12, 22 if title else 0
    canvas = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height) + head), "white")
    canvas.paste(left, (0, head))
    canvas.paste(right, (left.width + gap, head))
    if title:
        ImageDraw.Draw(canvas).text((4, 4), title, fill=(0, 0, 0), font=ImageFont.load_default())
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()
