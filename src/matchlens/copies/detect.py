"""``find_duplicates``: exact copies, near-duplicates and partial copies of an index, in groups.

1. exact copies by content hash (sha256 of the file, from the index metadata: no decoding);
2. candidate pairs from the index's own kNN search in batches (:mod:`matchlens.copies.candidates`);
3. each candidate verified: identical decoded pixels when the cosine is ~1, else the near-copy
   geometry of its RootSIFT matches (:mod:`matchlens.copies.geometry`) and, when the index stores
   the regional kind, per-region similarities; the first rule of :data:`COPY_KINDS` that holds
   names it, or it is rejected;
4. groups are the connected components of the accepted pairs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from matchlens.copies.candidates import Candidates, candidate_pairs
from matchlens.copies.features import pixel_digest
from matchlens.local.pool import FeaturePool
from matchlens.copies.geometry import GeometrySettings, verify_copy
from matchlens.copies.groups import components
from matchlens.copies.kinds import COPY_KINDS, PairEvidence, classify
from matchlens.copies.regions import REGIONAL_HINT, open_regions, pair_regions
from matchlens.regional import RegionalKind
from matchlens.copies.thresholds import CALIBRATED, Thresholds
from matchlens.index.writer import ProgressFactory
from matchlens.local import CACHE_KIND
from matchlens.pipeline import Index

__all__ = ["CopyPair", "DuplicateGroup", "DuplicateReport", "DuplicateSettings", "evaluate_pairs", "find_duplicates"]


@dataclass(frozen=True)
class DuplicateSettings:
    """``k`` neighbours per image, ``batch`` rows per kNN call, the pair ``geometry`` settings, the
    name of the ``regional`` kind to use when stored, and a ``cache_dir`` for RootSIFT features
    (None: the index's own ``cache/local_features``)."""

    k: int = 10
    batch: int = 512
    geometry: GeometrySettings = GeometrySettings()
    regional: str = "regional"
    cache_dir: Path | None = None


@dataclass
class CopyPair:
    """An evaluated pair: ``kind`` is a :data:`COPY_KINDS` name, or None when rejected."""

    kind: str | None
    evidence: PairEvidence
    paths: tuple[str, str]

    def as_dict(self, thresholds: Thresholds) -> dict[str, Any]:
        """JSON-ready pair."""
        return {"a": self.paths[0], "b": self.paths[1], "kind": self.kind, "evidence": self.evidence.as_dict(thresholds)}


@dataclass
class DuplicateGroup:
    """One connected component: its ``rows``, their ``paths`` and the accepted ``pairs`` inside it."""

    rows: list[int]
    paths: list[str]
    pairs: list[CopyPair]

    @property
    def kinds(self) -> list[str]:
        """The kinds of its pairs, each once, in precedence order."""
        return sorted({p.kind for p in self.pairs if p.kind}, key=_kind_order)


@dataclass
class DuplicateReport:
    """The outcome of :func:`find_duplicates` (``pairs``: every evaluated pair, accepted or not)."""

    index: str
    thresholds: Thresholds
    settings: DuplicateSettings
    groups: list[DuplicateGroup]
    pairs: list[CopyPair]
    regional: bool
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    knn_batches: list[int] = field(default_factory=list)

    @property
    def accepted(self) -> list[CopyPair]:
        """The pairs that are copies."""
        return [p for p in self.pairs if p.kind is not None]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready report (rejected pairs are counted, not listed)."""
        t = self.thresholds
        return {"index": self.index, "thresholds": t.as_dict(), "k": self.settings.k, "regional": self.regional,
                "notes": self.notes, "counts": self.counts, "timings_s": self.timings_s,
                "groups": [{"id": i + 1, "members": g.paths, "kinds": g.kinds,
                            "pairs": [p.as_dict(t) for p in g.pairs]} for i, g in enumerate(self.groups)]}


def find_duplicates(index: Index, thresholds: Thresholds = CALIBRATED, settings: DuplicateSettings = DuplicateSettings(),
                    progress: ProgressFactory | None = None) -> DuplicateReport:
    """Group the copies of ``index`` (see the module docstring); ``progress`` draws the kNN and
    verification passes."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    paths, shas = _files(index)
    same_file = _same_file_pairs(index, shas)
    timings["exact"] = time.perf_counter() - start
    candidates = candidate_pairs(index, settings.k, thresholds.cosine_floor, settings.batch, progress)
    timings["knn"] = candidates.seconds
    view = open_regions(index, settings.regional)
    start = time.perf_counter()
    verifier = _Verifier(index, paths, shas, thresholds, settings, view)
    evaluated = same_file + list(verifier.run(candidates, {(e.a, e.b) for e in same_file}, progress))
    timings["verify"] = time.perf_counter() - start
    pairs = [CopyPair(classify(e, thresholds), e, (paths[e.a], paths[e.b])) for e in evaluated]
    report = DuplicateReport(str(index.root), thresholds, settings, _groups(pairs, paths), pairs, view is not None,
                             timings_s={k: round(v, 3) for k, v in timings.items()}, knn_batches=candidates.batches)
    report.notes = _notes(index, view)
    report.counts = _counts(index.size, candidates, pairs, report.groups, verifier.pool.extracted)
    return report


def evaluate_pairs(index: Index, pairs: list[tuple[int, int]], thresholds: Thresholds = CALIBRATED,
                   settings: DuplicateSettings = DuplicateSettings()) -> list[CopyPair]:
    """The evidence and kind of given row pairs (calibration and benchmarks: pairs the kNN did not propose)."""
    paths, shas = _files(index)
    vectors = index.vectors()
    verifier = _Verifier(index, paths, shas, thresholds, settings, open_regions(index, settings.regional))
    found = []
    for a, b in pairs:
        cosine = float(np.dot(vectors[a], vectors[b]))
        evidence = (PairEvidence(a, b, cosine, same_file=True) if shas[a] == shas[b]
                    else verifier.evidence(a, b, cosine))
        found.append(CopyPair(classify(evidence, thresholds), evidence, (paths[a], paths[b])))
    return found


def _files(index: Index) -> tuple[list[str], list[str]]:
    """(path, sha256) of every row."""
    entries = [index.entry_for_row(r) for r in range(index.size)]
    return [e.path for e in entries], [e.sha256 for e in entries]


def _same_file_pairs(index: Index, shas: list[str]) -> list[PairEvidence]:
    """Star-linked pairs of rows with equal sha256 (each row to the first of its hash)."""
    first: dict[str, int] = {}
    pairs = []
    vectors = index.vectors()
    for row, sha in enumerate(shas):
        if sha in first:
            a = first[sha]
            cosine = float(np.dot(vectors[a], vectors[row]))
            pairs.append(PairEvidence(a, row, cosine, same_file=True))
        else:
            first[sha] = row
    return pairs


class _Verifier:
    """The verification pass over candidate pairs (features and pixel digests memoised)."""

    def __init__(self, index: Index, paths: list[str], shas: list[str], thresholds: Thresholds,
                 settings: DuplicateSettings, view: RegionalKind | None) -> None:
        g = settings.geometry
        cache = settings.cache_dir if settings.cache_dir is not None else index.store.cache_dir(CACHE_KIND)
        self.pool = FeaturePool(paths.__getitem__, shas.__getitem__, cache, g.max_keypoints, g.max_side)
        self.paths, self.shas, self.thresholds, self.settings, self.view = paths, shas, thresholds, settings, view
        self._digests: dict[int, str | None] = {}

    def run(self, candidates: Candidates, known: set[tuple[int, int]],
            progress: ProgressFactory | None) -> Iterator[PairEvidence]:
        """Evidence of every candidate pair not already known (pairs of one file hash are)."""
        advance = progress(len(candidates), "verifying pairs") if progress is not None and len(candidates) else None
        for a, b, cosine in zip(candidates.a.tolist(), candidates.b.tolist(), candidates.cosine.tolist()):
            if (a, b) not in known and self.shas[a] != self.shas[b]:
                yield self.evidence(a, b, cosine)
            if advance is not None:
                advance(1)

    def evidence(self, a: int, b: int, cosine: float) -> PairEvidence:
        """Pixels, geometry and regions of one pair."""
        found = PairEvidence(a, b, cosine)
        if cosine >= self.thresholds.exact_cosine and self._digest(a) is not None:
            found.same_pixels = self._digest(a) == self._digest(b)
        if found.same_pixels:
            return found
        fa, fb = self.pool.get(a), self.pool.get(b)
        if fa is not None and fb is not None:
            found.geometry = verify_copy(fa, fb, self.settings.geometry)
        regions = pair_regions(self.view, a, b)
        if regions is not None:
            found.regions, found.region_names = regions
        return found

    def _digest(self, row: int) -> str | None:
        if row not in self._digests:
            self._digests[row] = pixel_digest(self.paths[row])
        return self._digests[row]


def _groups(pairs: list[CopyPair], paths: list[str]) -> list[DuplicateGroup]:
    accepted = [p for p in pairs if p.kind is not None]
    groups = [DuplicateGroup(rows, [paths[r] for r in rows], []) for rows in
              components((p.evidence.a, p.evidence.b) for p in accepted)]
    where = {row: g for g in groups for row in g.rows}
    for p in accepted:
        where[p.evidence.a].pairs.append(p)
    return groups


def _notes(index: Index, view: RegionalKind | None) -> list[str]:
    notes = [] if view is not None else [REGIONAL_HINT]
    if index.approximate:
        notes.append("the index searches approximately (a trained backend): a copy pair the kNN misses is not found")
    return notes


def _counts(size: int, candidates: Candidates, pairs: list[CopyPair], groups: list[DuplicateGroup],
            extracted: int) -> dict[str, int]:
    counts = {"images": size, "candidates": len(candidates), "evaluated": len(pairs),
              "accepted": sum(p.kind is not None for p in pairs), "groups": len(groups),
              "in_groups": sum(len(g.rows) for g in groups), "features_extracted": extracted}
    counts.update({name: 0 for name in COPY_KINDS.ordered()})
    for p in pairs:
        if p.kind is not None:
            counts[p.kind] = counts.get(p.kind, 0) + 1
    return counts


def _kind_order(name: str) -> int:
    return COPY_KINDS.ordered().index(name)
