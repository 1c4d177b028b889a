"""matchlens: instance-level image retrieval with evidence.

Index a collection once; for a query photo (optionally a box around the object) get the images
that show the same object or place, ranked. See :mod:`matchlens.api` for the functions.
"""

import os as _os

_os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never let timm reach a hub

__version__ = "0.2.0"

from matchlens.api import build_index, build_index_report, create_index, evaluate_dataset, open_index, search  # noqa: E402
from matchlens.config import PipelineSpec, preset_names, spec_from_preset  # noqa: E402
from matchlens.errors import MatchlensError  # noqa: E402
from matchlens.index.index import BuildReport, Index, SearchResult  # noqa: E402

__all__ = [
    "BuildReport", "Index", "MatchlensError", "PipelineSpec", "SearchResult", "__version__",
    "build_index", "build_index_report", "create_index", "evaluate_dataset", "open_index", "preset_names", "search",
    "spec_from_preset",
]
