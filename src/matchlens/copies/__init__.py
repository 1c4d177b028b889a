"""Copies and near-duplicates: pairs from the index kNN graph, labelled exact / near / partial, and their groups.

:func:`find_duplicates` (``matchlens duplicates``) finds candidate pairs with the index's own
batched kNN search (never an N×N matrix), verifies each by file hash, decoded pixels, the
near-copy geometry of its RootSIFT matches and, where the index stores the regional kind, region
agreement; :data:`COPY_KINDS` names the kinds, :data:`CALIBRATED` holds the thresholds of
``--auto`` (calibrated by ``benchmarks/copies.py --calibrate`` on a generated set). See docs/copies.md.
"""

from matchlens.copies.candidates import Candidates, KnnSource, candidate_pairs
from matchlens.copies.detect import (CopyPair, DuplicateGroup, DuplicateReport, DuplicateSettings, evaluate_pairs,
                                     find_duplicates)
from matchlens.copies.geometry import Geometry, GeometrySettings, verify_copy
from matchlens.copies.groups import UnionFind, components
from matchlens.copies.kinds import COPY_KINDS, PairEvidence, classify
from matchlens.copies.regions import REGIONAL_HINT, open_regions
from matchlens.copies.thresholds import CALIBRATED, Thresholds, thresholds_for

__all__ = ["CALIBRATED", "COPY_KINDS", "REGIONAL_HINT", "Candidates", "CopyPair", "DuplicateGroup", "DuplicateReport",
           "DuplicateSettings", "Geometry", "GeometrySettings", "KnnSource", "PairEvidence", "Thresholds", "UnionFind",
           "candidate_pairs", "classify", "components", "evaluate_pairs", "find_duplicates", "open_regions", "thresholds_for",
           "verify_copy"]
