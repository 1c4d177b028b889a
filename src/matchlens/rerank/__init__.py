"""Re-ranking: query expansion, database augmentation, k-reciprocal, diffusion, spatial verification.

Importing this package imports every module in it, so each ``@RERANKERS.register(...)`` runs:
a new reranker is one new module here, with no list to edit (see docs/extending.md).
"""

import sys

from matchlens.registry import import_submodules
from matchlens.rerank.base import (RERANKERS, QueryInput, Reranker, RerankContext, Shortlist, chain_depth,
                                   describe_chain, parse_chain, run_chain)

import_submodules(sys.modules[__name__])  # each module registers itself: no list to edit

__all__ = ["RERANKERS", "QueryInput", "RerankContext", "Reranker", "Shortlist", "chain_depth", "describe_chain",
           "parse_chain", "run_chain"]
