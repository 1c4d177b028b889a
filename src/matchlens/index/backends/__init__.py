"""Vector backends by name: ``faiss`` (factory strings: Flat, IVF-PQ, HNSW, ...) and ``milvus``.

Every module of this package is imported, so a new backend is one new module here (docs/extending.md).

A generation's manifest names its backend (``{"name", "factory", "uri", "params", "state"}``);
:func:`make_backend` builds one from CLI/API options, :func:`backend_from_dict` from a manifest.
"""

import sys

from matchlens.index.backends.base import (BACKENDS, Delta, Searcher, VectorBackend, WriteJob, backend_from_dict,
                                           refine_exact)
from matchlens.registry import import_submodules

import_submodules(sys.modules[__name__])  # each module registers itself: no list to edit


def make_backend(name: str | None = None, factory: str | None = None, uri: str | None = None,
                 **params) -> VectorBackend:
    """A backend from options: ``name`` defaults to ``milvus`` when a ``uri`` is given, else ``faiss``."""
    chosen = name or ("milvus" if uri else "faiss")
    return BACKENDS.get(chosen)(factory, uri, **params)


__all__ = ["BACKENDS", "Delta", "Searcher", "VectorBackend", "WriteJob", "backend_from_dict", "make_backend",
           "refine_exact"]
