"""Recipes the API and CLI call: train from a source, explain an indexed result, explain a search."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

from matchlens.errors import ConfigError
from matchlens.evidence.config import VerifierConfig
from matchlens.evidence.model import EvidenceModel, Explanation, explain_pair, load_model
from matchlens.evidence.pairs import pairs_from_source
from matchlens.evidence.train import Progress, TrainResult, TrainSettings, train_verifier


def train_from_source(source: str | os.PathLike, out: str | os.PathLike, config: VerifierConfig | None = None,
                      settings: TrainSettings | None = None, pairs: int = 400, label_free: bool | None = None,
                      dataset_format: str | None = None, limit: int | None = None, device: str | None = None,
                      progress: Progress | None = None) -> tuple[TrainResult, str]:
    """Train a verifier on pairs from ``source`` (ground truth if it has some, else label-free) and
    save the checkpoint at ``out``. Returns the result and where the pairs came from."""
    settings = settings or TrainSettings()
    training_pairs, origin = pairs_from_source(source, pairs, settings.seed, label_free, dataset_format, limit)
    result = train_verifier(training_pairs, config or VerifierConfig(), settings, device, progress)
    result.model.save(out, source=str(source), origin=origin, seconds=result.seconds)
    return result, origin


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
    from matchlens.index.index import open_index
    from matchlens.io.images import load_image

    index = open_index(index_dir)
    query_image = load_image(Path(query).expanduser(), max_side=1024)
    if box is not None:
        query_image = query_image.crop(tuple(int(round(v)) for v in box))
    explanation = explain_pair(query_image, resolve_result(index, result), model)
    if out is not None:
        explanation.save_png(out)
    return explanation


def explain_results(query_image, paths: Sequence[str], model: EvidenceModel | str | os.PathLike,
                    folder: str | os.PathLike) -> list[Path]:
    """One side-by-side PNG per result path, named ``<rank>_<stem>.png`` in ``folder``."""
    evidence_model = load_model(model)
    written = []
    for rank, path in enumerate(paths, start=1):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem)
        written.append(explain_pair(query_image, path, evidence_model).save_png(Path(folder) / f"{rank:03d}_{name}.png"))
    return written


def model_from_chain(rerank: str | None) -> str | None:
    """The ``model=`` of an ``indicative`` step in a rerank chain string, if any."""
    if not rerank:
        return None
    from matchlens.rerank import parse_chain

    for step in parse_chain(rerank):
        if step.name == "indicative":
            return str(step.config["model"])
    return None


def settings_summary(result: TrainResult) -> dict[str, Any]:
    """The last epoch's figures, for printing."""
    return dict(result.history[-1]) if result.history else {}
