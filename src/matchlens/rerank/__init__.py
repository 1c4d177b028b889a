"""Re-ranking: query expansion, database augmentation, k-reciprocal, diffusion, spatial verification.

Importing this package registers every reranker in :data:`RERANKERS`.
"""

from matchlens.rerank.base import (RERANKERS, QueryInput, Reranker, RerankContext, Shortlist, chain_depth,
                                   describe_chain, parse_chain, run_chain)
from matchlens.rerank import spatial  # noqa: F401  (registers)
from matchlens.rerank import qe, kreciprocal  # noqa: F401  (registers)
from matchlens.rerank import diffusion  # noqa: F401  (registers)
from matchlens.rerank import indicative  # noqa: F401  (registers; torch loaded only when used)

__all__ = ["RERANKERS", "QueryInput", "RerankContext", "Reranker", "Shortlist", "chain_depth", "describe_chain",
           "parse_chain", "run_chain"]
