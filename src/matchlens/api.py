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
from typing import Sequence

from matchlens.config import PipelineSpec, spec_from_preset
from matchlens.index.index import BuildReport, Index, ProgressFactory, SearchResult, open_index
from matchlens.io.collection import scan_many


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
    rebuild: bool = False, progress: ProgressFactory | None = None,
) -> tuple[Index, BuildReport]:
    """Like :func:`build_index`, also returning what was computed, reused and skipped."""
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    paths = scan_many([str(s) for s in sources])
    return Index.build(paths, index_dir, spec or spec_from_preset(preset), rebuild=rebuild, progress=progress)


def create_index(index_dir: str | os.PathLike, spec: PipelineSpec | None = None, preset: str = "default") -> Index:
    """Create an empty index (add images later with :meth:`Index.add`)."""
    return Index.build([], Path(index_dir), spec or spec_from_preset(preset))[0]


def search(index_dir: str | os.PathLike, query, box=None, k: int = 20) -> list[SearchResult]:
    """One-shot search: open ``index_dir`` and rank it against ``query`` (path, bytes, PIL image or array)."""
    return open_index(index_dir).search(query, box=box, k=k)


__all__ = ["build_index", "build_index_report", "create_index", "open_index", "search", "Index", "SearchResult"]
