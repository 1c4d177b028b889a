"""Heatmap overlays: the query and the result side by side, each with its contribution map."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``image`` blended with the 'jet' colouring of ``heat`` ((H, W) in [0, 1], image-sized)."""
    from matplotlib import colormaps

    colours = (colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.float32)
    base = np.asarray(image.convert("RGB"), np.float32)
    return Image.fromarray((base * (1 - alpha) + colours * alpha).clip(0, 255).astype(np.uint8))


def side_by_side(query: Image.Image, query_map: np.ndarray, target: Image.Image, target_map: np.ndarray,
                 score: float | None = None, alpha: float = 0.5, height: int = 320) -> Image.Image:
    """Query overlay (left) and target overlay (right) at a common height, with a caption strip."""
    panels = []
    for image, heat in ((query, query_map), (target, target_map)):
        panel = overlay(image, heat, alpha)
        width = max(1, round(panel.width * height / panel.height))
        panels.append(panel.resize((width, height), Image.Resampling.BILINEAR))
    caption = 22
    gap = 8
    canvas = Image.new("RGB", (panels[0].width + gap + panels[1].width, height + caption), "white")
    canvas.paste(panels[0], (0, caption))
    canvas.paste(panels[1], (panels[0].width + gap, caption))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "query", fill="black")
    text = "result" + (f"  (verifier score {score:.3f})" if score is not None else "")
    draw.text((panels[0].width + gap + 4, 4), text, fill="black")
    return canvas
