"""The vector store: atomic generations of vectors + metadata, searched through a backend.

It stores and searches vectors only; extraction, whitening, augmentation and re-ranking sit
above it, in :mod:`matchlens.pipeline`.
"""

from matchlens.index.vectors import VectorIndex

__all__ = ["VectorIndex"]
