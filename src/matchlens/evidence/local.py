"""Spatial-verification evidence for one (query, result) pair, drawn side by side.

It needs no trained model: RootSIFT matches that pass Lowe's ratio test, the inliers of a
homography fitted with MAGSAC++ (as the sv reranker, with :mod:`matchlens.local.verify`), and on each
side a heatmap of inlier density. :func:`explain_pair` returns a :class:`PairEvidence` (a score and
two contribution maps at image resolution, DESIGN.md's evidence contract) and the PNG of
:func:`render_evidence`. The trained alternative is the indicative verifier
(:mod:`matchlens.evidence.model`); :mod:`matchlens.evidence.explainers` picks between the two.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from matchlens.io.images import crop_to_box
from matchlens.local.features import LocalFeatures, extract_rootsift
from matchlens.local.verify import inlier_mask, match_features, to_working_frame

MAX_KEYPOINTS = 1000  # the sv reranker's defaults, so its feature cache entries are reused
MAX_SIDE = 1024
RATIO = 0.8
THRESHOLD = 8.0  # inlier distance in pixels at the MAX_SIDE working resolution
MAX_LINES = 80  # more match lines than this hide the images
PANEL_HEIGHT = 420
PANEL_MAX_WIDTH = 640
GAP = 12
CAPTION = 28


@dataclass
class PairEvidence:
    """Why a result matches a query.

    ``query_map`` and ``target_map`` are contribution maps in [0, 1] at the resolution of the
    query and target images given; ``query_points``/``target_points`` are matched points (pixels
    of those images) that explain the score, row-aligned; ``tentative`` counts the candidate
    matches before verification.
    """

    score: float
    query_map: np.ndarray
    target_map: np.ndarray
    query_points: np.ndarray
    target_points: np.ndarray
    tentative: int
    method: str


@dataclass
class Explanation:
    """The rendered evidence (PNG) and the numbers behind it."""

    png: bytes
    evidence: PairEvidence


def explain_pair(query: Image.Image, target: Image.Image, box: Sequence[float] | None = None,
                 target_features: LocalFeatures | None = None, title: str = "") -> Explanation:
    """Evidence that ``target`` shows what ``query`` (inside ``box``, pixels of ``query``) shows.

    ``target_features`` may come from the spatial verifier's cache (RootSIFT of ``target`` at the
    default parameters, in any pixel frame: they are rescaled to ``target``'s size).
    """
    evidence = local_feature_evidence(query, target, box, target_features)
    return Explanation(render_evidence(query, target, evidence, box, title), evidence)


def local_feature_evidence(query: Image.Image, target: Image.Image, box: Sequence[float] | None = None,
                           target_features: LocalFeatures | None = None) -> PairEvidence:
    """Spatial-verification evidence: MAGSAC inliers of RootSIFT matches and their density maps."""
    offset = np.zeros(2, np.float32)
    crop = query
    if box is not None:
        crop = crop_to_box(query, box)
        # crop_to_box keeps whole pixels from floor(clipped x0, y0): the crop's origin in ``query``.
        offset = np.array([np.floor(max(box[0], 0.0)), np.floor(max(box[1], 0.0))], np.float32)
    q = extract_rootsift(crop, MAX_KEYPOINTS, MAX_SIDE)
    t = target_features if target_features is not None else extract_rootsift(target, MAX_KEYPOINTS, MAX_SIDE)
    src, dst = match_features(q, t, RATIO)
    dst = dst * (np.array(target.size, np.float32) / np.array(t.size, np.float32))  # into target's frame
    mask = _inlier_mask(src, dst, crop.size, target.size)
    q_points, t_points = src[mask] + offset, dst[mask]
    return PairEvidence(
        score=float(mask.sum()), query_map=density_map(q_points, query.size), target_map=density_map(t_points, target.size),
        query_points=q_points, target_points=t_points, tentative=int(len(src)),
        method="RootSIFT + ratio test + MAGSAC++ homography (inliers)")


def _inlier_mask(src: np.ndarray, dst: np.ndarray, src_size: tuple[int, int], dst_size: tuple[int, int]) -> np.ndarray:
    """Inliers of a MAGSAC++ homography, with the threshold in pixels of the working resolution
    (as the sv reranker measures it)."""
    return inlier_mask(to_working_frame(src, src_size, MAX_SIDE), to_working_frame(dst, dst_size, MAX_SIDE),
                       "homography", "magsac", THRESHOLD)


def density_map(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Where ``points`` lie, as a smooth map in [0, 1) at ``size``: each point adds a Gaussian of
    peak 1 (sigma 5% of the diagonal) and the sum saturates as ``1 - exp(-sum)``, so one lone
    match shows faintly and a cluster of matches shows strongly."""
    width, height = size
    # Work at most 256 px wide: the map is smooth, so a small grid and a resize lose nothing.
    factor = min(1.0, 256 / max(width, height))
    w, h = max(1, round(width * factor)), max(1, round(height * factor))
    grid: np.ndarray = np.zeros((h, w), np.float32)
    if len(points):
        xy = np.clip(np.round(points * factor).astype(int), 0, [w - 1, h - 1])
        np.add.at(grid, (xy[:, 1], xy[:, 0]), 1.0)
        sigma = 0.05 * float(np.hypot(w, h))
        grid = cv2.GaussianBlur(grid, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
        grid = 1.0 - np.exp(-grid * np.float32(2 * np.pi * sigma**2))  # the blur kernel sums to 1: rescale to peak 1
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)


def render_evidence(query: Image.Image, target: Image.Image, evidence: PairEvidence,
                    box: Sequence[float] | None = None, title: str = "") -> bytes:
    """PNG: query (left) and target (right) with heatmaps, the query box and the match lines."""
    left, fl = _panel(query, evidence.query_map)
    right, fr = _panel(target, evidence.target_map)
    width = left.shape[1] + GAP + right.shape[1]
    height = max(left.shape[0], right.shape[0])
    canvas = np.full((height + CAPTION, width, 3), 255, np.uint8)
    canvas[CAPTION:CAPTION + left.shape[0], :left.shape[1]] = left
    canvas[CAPTION:CAPTION + right.shape[0], left.shape[1] + GAP:] = right
    if box is not None:
        x0, y0, x1, y1 = (np.asarray(box, np.float32) * fl).round().astype(int)
        cv2.rectangle(canvas, (x0, y0 + CAPTION), (x1, y1 + CAPTION), (255, 214, 0), 2, cv2.LINE_AA)
    _draw_matches(canvas, evidence, fl, fr, left.shape[1] + GAP)
    text = (f"{int(evidence.score)} inliers of {evidence.tentative} tentative matches" if evidence.score
            else f"no geometrically consistent matches ({evidence.tentative} tentative)")
    image = Image.fromarray(canvas)
    ImageDraw.Draw(image).text((6, 6), f"{title}  {text}".strip(), fill=(20, 20, 20), font=_font())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _panel(image: Image.Image, heat: np.ndarray) -> tuple[np.ndarray, float]:
    """The image scaled to the panel size with the heatmap blended on; returns (pixels, scale)."""
    factor = min(PANEL_HEIGHT / image.height, PANEL_MAX_WIDTH / image.width)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    pixels = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), np.float32)
    heat = cv2.resize(heat.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    from matplotlib import colormaps

    heat = heat[..., None]
    colour = colormaps["inferno"](heat[..., 0])[..., :3] * 255
    # A spotlight: regions without evidence are dimmed, matched regions keep their pixels, tinted.
    if heat.max() > 0:
        pixels = pixels * (0.35 + 0.65 * heat)
        pixels = pixels * (1 - 0.35 * heat) + colour * (0.35 * heat)
    return pixels.clip(0, 255).astype(np.uint8), factor


def _draw_matches(canvas: np.ndarray, evidence: PairEvidence, fl: float, fr: float, x_right: int) -> None:
    """Lines between matched points, evenly subsampled to at most MAX_LINES, one hue each."""
    n = len(evidence.query_points)
    picks: np.ndarray | list[int] = np.linspace(0, n - 1, min(n, MAX_LINES)).round().astype(int) if n else []
    for i, j in enumerate(picks):
        hue = int(180 * i / max(1, len(picks)))
        colour = cv2.cvtColor(np.array([[[hue, 220, 255]]], dtype=np.uint8), cv2.COLOR_HSV2RGB)[0, 0].tolist()
        a = (evidence.query_points[j] * fl).round().astype(int) + (0, CAPTION)
        b = (evidence.target_points[j] * fr).round().astype(int) + (x_right, CAPTION)
        cv2.line(canvas, tuple(int(v) for v in a), tuple(int(v) for v in b), colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, tuple(int(v) for v in a), 3, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, tuple(int(v) for v in b), 3, colour, 1, cv2.LINE_AA)


def _font():
    try:
        return ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()
