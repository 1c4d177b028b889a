"""Ensembles of two (or more) pipelines (P4): each network's descriptor L2-normalised and weighted,
the parts concatenated, then PCA(-whitened) to one compact vector.

The maths lives in :mod:`matchlens.ensemble.vectors` (below the search pipeline, so the
``ensemble`` descriptor kind uses it too); this module keeps the names training code and older
scripts import.
"""

from __future__ import annotations

from matchlens.ensemble.vectors import Ensemble, concatenate

__all__ = ["Ensemble", "concatenate"]
