"""matchlens: instance-level image retrieval with evidence.

Index a collection once; for a query photo (optionally a box around the object) get the images
that show the same object or place, ranked. See :mod:`matchlens.api` for the functions.

The names below are loaded on first use (PEP 562), so that ``matchlens --help`` and other
commands that need little do not pay for NumPy, FAISS and the search pipeline.
"""

from __future__ import annotations

import importlib
import os as _os
from typing import Any

_os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never let timm reach a hub

from matchlens.version import __version__  # noqa: E402

_EXPORTS = {
    "build_index": "matchlens.api", "build_index_report": "matchlens.api", "create_index": "matchlens.api",
    "evaluate_dataset": "matchlens.api", "open_index": "matchlens.api", "search": "matchlens.api",
    "PipelineSpec": "matchlens.config", "preset_names": "matchlens.config", "spec_from_preset": "matchlens.config",
    "MatchlensError": "matchlens.errors",
    "BuildReport": "matchlens.pipeline", "Index": "matchlens.pipeline", "SearchPipeline": "matchlens.pipeline",
    "SearchResult": "matchlens.pipeline",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    """Load an exported name on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'matchlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
