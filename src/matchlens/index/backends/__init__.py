"""Vector backends by name: ``faiss`` (factory strings: Flat, IVF-PQ, HNSW, ...) and ``milvus``.

A generation's manifest names its backend (``{"name", "factory", "uri", "params", "state"}``);
:func:`make_backend` builds one from CLI/API options, :func:`backend_from_dict` from a manifest.
"""

from matchlens.index.backends.base import (BACKENDS, Delta, Searcher, VectorBackend, WriteJob, backend_from_dict,
                                           refine_exact)
from matchlens.index.backends import faiss_backend, milvus_backend  # noqa: F401  (register the backends)


def make_backend(name: str | None = None, factory: str | None = None, uri: str | None = None,
                 **params) -> VectorBackend:
    """A backend from options: ``name`` defaults to ``milvus`` when a ``uri`` is given, else ``faiss``."""
    chosen = name or ("milvus" if uri else "faiss")
    return BACKENDS.get(chosen)(factory, uri, **params)


__all__ = ["BACKENDS", "Delta", "Searcher", "VectorBackend", "WriteJob", "backend_from_dict", "make_backend",
           "refine_exact"]
