"""The on-disk index: manifest + vectors + metadata, atomic generations, exact FAISS search."""

from matchlens.index.index import BuildReport, Index, Interrupted, SearchResult, open_index

__all__ = ["BuildReport", "Index", "Interrupted", "SearchResult", "open_index"]
