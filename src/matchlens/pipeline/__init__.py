"""The search pipeline and the writers above the vector store.

:class:`SearchPipeline` is the one place where a query becomes results (encode → shortlist →
re-rank, timed); :class:`Builder` is the one place where images become a new generation
(extract → whiten → augment → store); :class:`Index` joins both for an index folder.
"""

from matchlens.pipeline.build import KEEP, BuildReport, Builder, Interrupted
from matchlens.pipeline.index import Index, open_index
from matchlens.pipeline.results import SearchResponse, SearchResult
from matchlens.pipeline.search import Query, SearchPipeline
from matchlens.pipeline.batch import read_queries

__all__ = ["KEEP", "BuildReport", "Builder", "Index", "Interrupted", "Query", "SearchPipeline", "SearchResponse",
           "SearchResult", "open_index", "read_queries"]
