"""Recipes the API and CLI call: train a verifier from a source, explain an indexed result, explain a search.

They combine the evidence layer (:mod:`matchlens.evidence`) with the index, the rerank chain
syntax and the HTML of the evaluation report, which is why they live above all of them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from matchlens.errors import ConfigError
from matchlens.evidence.config import VerifierConfig
from matchlens.evidence.explainers import MAX_SIDE, make_explainer
from matchlens.evidence.model import EvidenceModel, Explanation, explain_pair
from matchlens.evidence.pairs import pairs_from_source
from matchlens.evidence.train import Progress, TrainResult, TrainSettings, train_verifier
from matchlens.explain.page import EvidenceRow, write_evidence_page
from matchlens.io.images import crop_to_box, image_size, load_image
from matchlens.pipeline import open_index
from matchlens.rerank import parse_chain


def train_from_source(source: str | os.PathLike, out: str | os.PathLike, config: VerifierConfig | None = None,
                      settings: TrainSettings | None = None, pairs: int = 400, label_free: bool | None = None,
                      dataset_format: str | None = None, limit: int | None = None, device: str | None = None,
                      progress: Progress | None = None) -> tuple[TrainResult, str]:
    """Train a verifier on pairs from ``source`` (ground truth if it has some, else label-free) and
    save the checkpoint at ``out``. Returns the result and where the pairs came from."""
    settings = settings or TrainSettings()
    config = config or VerifierConfig()
    _check_training(config, settings, device)
    _output_file(Path(out).expanduser(), "verifier checkpoint", "verifier.pt")  # before training: a bad --out must not waste a run
    training_pairs, origin = pairs_from_source(source, pairs, settings.seed, label_free, dataset_format, limit)
    result = train_verifier(training_pairs, config, settings, device, progress)
    result.model.save(out, source=str(source), origin=origin, seconds=result.seconds)
    return result, origin


# The verifier's tensor has (rows*cols)^2 cells per pair and metric: past this many patches it no
# longer fits any memory (a 1000x1000 grid asks for terabytes) and training fails deep inside torch.
MAX_PATCHES = 1024


def _check_training(config: VerifierConfig, settings: TrainSettings, device: str | None) -> None:
    """One-line errors for settings that would otherwise fail deep inside torch."""
    if config.rows * config.cols > MAX_PATCHES:
        raise ConfigError(f"grid {config.rows}x{config.cols} has {config.rows * config.cols} patches; "
                          f"the verifier takes at most {MAX_PATCHES} (e.g. 32x32)")
    if not math.isfinite(settings.lr):
        raise ConfigError(f"train-verifier: lr must be a positive number, got {settings.lr}")
    if device is not None:
        try:
            kind = torch.device(device).type
        except RuntimeError:
            raise ConfigError(f"unknown device {device!r}; use cpu or cuda") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: no CUDA device is available here; use --device cpu")
        if kind not in ("cpu", "cuda"):
            raise ConfigError(f"device {device!r} is not supported; use cpu or cuda")


def _output_folder(folder: Path, what: str) -> Path:
    """``folder``, created; a one-line error when it cannot be (a file in the way, no permission)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the {what} folder {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"cannot write the {what} into {folder}: permission denied")
    return folder


def _output_file(path: Path, what: str, example: str) -> Path:
    """``path`` checked as the file to write (its folder created): not a folder, in a writable folder."""
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the {what} file to write, e.g. {path / example}")
    _output_folder(path.parent, what)
    return path


def resolve_result(index, result: str) -> str:
    """An image path from ``result``: an existing file, an index row id, or an indexed file name."""
    path = Path(result).expanduser()
    if path.is_file():
        return str(path)
    if result.isdigit() and int(result) < index.size:
        return index.entry_for_row(int(result)).path
    matches = [index.entry_for_row(r).path for r in range(index.size)
               if Path(index.entry_for_row(r).path).name == path.name or index.entry_for_row(r).path.endswith(result)]
    if len(matches) != 1:
        what = "no" if not matches else f"{len(matches)}"
        raise ConfigError(f"{what} indexed image matches {result!r}; give a file path, a row id or a unique name")
    return matches[0]


def explain_result(index_dir: str | os.PathLike, query: str | os.PathLike, result: str,
                   model: EvidenceModel | str | os.PathLike, box: Sequence[float] | None = None,
                   out: str | os.PathLike | None = None) -> Explanation:
    """Explain why ``result`` (file, row id or indexed name) matches ``query``; PNG written to ``out``."""
    index = open_index(index_dir)
    query_image, scaled_box = load_query(query, box)
    if scaled_box is not None:
        query_image = crop_to_box(query_image, scaled_box)
    explanation = explain_pair(query_image, resolve_result(index, result), model)
    if out is not None:
        explanation.save_png(_output_file(Path(out).expanduser(), "evidence PNG", "evidence.png"))
    return explanation


def load_query(query: str | os.PathLike, box: Sequence[float] | None = None, max_side: int = 1024
               ) -> tuple[Image.Image, tuple[float, ...] | None]:
    """The query decoded at about ``max_side`` and ``box`` (pixels of the full-size upright image)
    in the decoded image's frame: JPEG draft decoding may divide the sides by 2, 4 or 8."""
    path = Path(query).expanduser()
    image = load_image(path, max_side=max_side)
    if box is None:
        return image, None
    factor = max(image.size) / max(image_size(path))
    return image, tuple(float(v) * factor for v in box)


@dataclass
class SearchEvidence:
    """What :func:`explain_search` wrote: the page, one evidence row per result, and the method."""

    page: Path
    rows: list[EvidenceRow]
    kind: str
    method: str

    @property
    def pngs(self) -> list[Path]:
        """The evidence PNGs, best result first."""
        return [self.page.parent / row.png for row in self.rows]


def explain_search(query: str | os.PathLike, results: Sequence[tuple[str, float]], folder: str | os.PathLike,
                   model: EvidenceModel | str | os.PathLike | None = None, box: Sequence[float] | None = None,
                   progress: Progress | None = None) -> SearchEvidence:
    """Evidence for ranked search results: ``<rank>_<stem>.png`` per result and ``index.html`` in ``folder``.

    Args:
        query: the query image file.
        results: (path, score) of each result, best first.
        folder: where the PNGs and the page go (created).
        model: a verifier (or its checkpoint) for indicative evidence; None: spatial verification.
        box: the query box, pixels of the full-size upright query.
        progress: a progress factory (one step per result).
    """
    explainer = make_explainer(model)
    image, scaled_box = load_query(query, box, MAX_SIDE)
    folder = _output_folder(Path(folder).expanduser(), "evidence")
    advance = progress(len(results), f"evidence ({explainer.kind})") if progress else None
    rows = []
    for rank, (path, score) in enumerate(results, start=1):
        view = explainer.explain(image, load_image(path, max_side=MAX_SIDE), scaled_box,
                                 title=f"query | #{rank} {Path(path).name}")
        png = f"{rank:03d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', Path(path).stem)}.png"
        (folder / png).write_bytes(view.png)
        rows.append(EvidenceRow(rank, float(score), str(path), png, view.caption))
        if advance:
            advance(1)
    page = write_evidence_page(folder / "index.html", Path(query), box, explainer.description, rows)
    return SearchEvidence(page, rows, explainer.kind, explainer.description)


def model_from_chain(rerank: str | None) -> str | None:
    """The ``model=`` of an ``indicative`` step in a rerank chain string, if any."""
    if not rerank:
        return None
    for step in parse_chain(rerank):
        if step.name == "indicative":
            return str(step.config["model"])
    return None

