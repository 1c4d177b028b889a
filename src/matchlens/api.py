"""The Python API: what ``import matchlens`` offers. The CLI is a thin layer over these functions.

Example::

    import matchlens
    index = matchlens.build_index("photos/", "photos.idx")          # embedded default pipeline
    for r in index.search("query.jpg", box=(10, 20, 300, 400), k=5):
        print(r.rank, r.score, r.path)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from matchlens.config import PipelineSpec, spec_from_preset
from matchlens.index.index import BuildReport, Index, ProgressFactory, SearchResult, open_index
from matchlens.io.collection import scan_many

if TYPE_CHECKING:
    from matchlens.evaluate.results import Evaluation


def build_index(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    index_dir: str | os.PathLike,
    spec: PipelineSpec | None = None,
    preset: str = "default",
    rebuild: bool = False,
    progress: ProgressFactory | None = None,
) -> Index:
    """Index a folder (recursive), a list file, or several of them; returns the opened index.

    Re-running on an existing index re-uses every unchanged image's descriptor, and a build that
    was interrupted resumes where it stopped. Unreadable files are skipped and listed
    (``index.skipped()``).
    """
    return build_index_report(source, index_dir, spec, preset, rebuild, progress)[0]


def build_index_report(
    source, index_dir, spec: PipelineSpec | None = None, preset: str = "default",
    rebuild: bool = False, progress: ProgressFactory | None = None, dba: dict | None | str = "keep",
) -> tuple[Index, BuildReport]:
    """Like :func:`build_index`, also returning what was computed, reused and skipped.

    ``dba``: database-side augmentation (``{"k": 3}`` or ``{"k": 3, "alpha": 3}``), None to turn
    it off, ``"keep"`` (default) to keep the index's current setting.
    """
    from matchlens.index.index import KEEP

    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    paths = scan_many([str(s) for s in sources])
    return Index.build(paths, index_dir, spec or spec_from_preset(preset), rebuild=rebuild, progress=progress,
                       dba=KEEP if dba == "keep" else dba)


def create_index(index_dir: str | os.PathLike, spec: PipelineSpec | None = None, preset: str = "default") -> Index:
    """Create an empty index (add images later with :meth:`Index.add`)."""
    return Index.build([], Path(index_dir), spec or spec_from_preset(preset))[0]


def search(index_dir: str | os.PathLike, query, box=None, k: int = 20, rerank: str | None = None) -> list[SearchResult]:
    """One-shot search: open ``index_dir`` and rank it against ``query`` (path, bytes, PIL image or
    array), optionally re-ranked by a chain such as ``"sv:k=100,aqe:k=2"``."""
    return open_index(index_dir).search(query, box=box, k=k, rerank=rerank)


def evaluate_dataset(
    dataset_root: str | os.PathLike,
    index_dir: str | os.PathLike | None = None,
    spec: PipelineSpec | None = None,
    preset: str = "default",
    protocols: Sequence[str] | None = None,
    dataset_format: str | None = None,
    dataset_options: dict | None = None,
    report_dir: str | os.PathLike | None = None,
    progress: ProgressFactory | None = None,
    rerank: str | None = None,
) -> list["Evaluation"]:
    """Evaluate retrieval on a dataset in its official layout (or gt.json).

    With ``index_dir`` naming an existing index, that index is evaluated (it must contain the
    dataset's images; extra images count as distractors). Otherwise an index is built from
    ``spec``/``preset`` — into ``index_dir`` when given (kept for the next run), else into a
    temporary folder. ``protocols``: ``cropped`` (standard where queries have boxes), ``full``.
    ``rerank``: a re-ranking chain applied to every query, e.g. ``"sv:k=100,aqe:k=2"``.
    """
    import tempfile

    from matchlens.evaluate.protocol import dataset_paths, default_protocol, evaluate_index
    from matchlens.index import store
    from matchlens.io.official import load_dataset

    dataset = load_dataset(dataset_root, dataset_format, **(dataset_options or {}))
    protocols = list(protocols or [default_protocol(dataset)])
    with tempfile.TemporaryDirectory(prefix="matchlens-eval-") as tmp:
        target = Path(index_dir) if index_dir else Path(tmp) / "index"
        if store.is_index_dir(target) and spec is None:
            index = open_index(target)
        else:
            index = Index.build(dataset_paths(dataset), target, spec or spec_from_preset(preset), progress=progress)[0]
        evaluations = [evaluate_index(index, dataset, p, progress=progress, rerank=rerank) for p in protocols]
    if report_dir:
        from matchlens.evaluate.report import write_report

        for evaluation, protocol in zip(evaluations, protocols):
            write_report(evaluation, Path(report_dir) / f"{dataset.name}-{protocol}" if len(protocols) > 1 else Path(report_dir))
    return evaluations


__all__ = ["build_index", "build_index_report", "create_index", "evaluate_dataset", "open_index", "search", "Index",
           "SearchResult"]
