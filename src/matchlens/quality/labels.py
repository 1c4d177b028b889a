"""Quality labels: the AP a query reaches with this index's search pipeline, for clean and degraded
versions of the query (the paper's definition of quality).

Two ways to get them:

* :func:`dataset_labels` — **with ground truth**: every query of an evaluation set (``gt.json``, the
  official Oxford/Paris lists, ...), degraded by each variant, ranked against the whole index;
  AP exactly as ``matchlens eval`` computes it (junk ignored, the query's own image ignored unless
  it is listed as a positive).
* :func:`self_labels` — **without labels, on the user's own index**: indexed images are degraded
  and used as queries; the positives are the clean original and those of its nearest neighbours
  that pass spatial verification against it (RootSIFT + MAGSAC, the ``sv`` re-ranker, ≥ 12
  inliers by default). A user with no ground truth gets labels of the same kind.

Each labelled image keeps the pooled backbone features of its patches (not its pixels), so a few
thousand labelled images fit in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from matchlens.evaluate.metrics import average_precision
from matchlens.evaluate.protocol import select_queries
from matchlens.errors import ConfigError, SourceError
from matchlens.io.datasets import Dataset
from matchlens.io.degrade import degrade
from matchlens.io.images import crop_to_box, load_image
from matchlens.pipeline import Index, SearchPipeline
from matchlens.quality.net import QualityNet
from matchlens.quality.patches import MAX_SIDE, PATCH, grid_patches, working_image
from matchlens.rerank import parse_chain
from matchlens.rerank.spatial import SpatialVerification

__all__ = ["LABEL_VARIANTS", "Labelled", "Variant", "dataset_labels", "parse_variants", "query_rows", "ranking_ap", "self_labels",
           "variant", "verified_positives"]

Advance = Callable[[int], None]


@dataclass(frozen=True)
class Variant:
    """A degradation of :mod:`matchlens.io.degrade` with its parameters (``clean``: none), or a
    callable transform (an enhancer applied after a degradation, in the benchmark)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    then: Callable[[Image.Image], Image.Image] | None = field(default=None, compare=False)
    label: str = ""

    def __str__(self) -> str:
        if self.label:
            return self.label
        return self.name + "".join(f":{k}={v}" for k, v in self.params)

    def apply(self, image: Image.Image, seed: int = 0) -> Image.Image:
        """The degraded (and, with ``then``, enhanced) image."""
        out = image if self.name == "clean" else degrade(image, self.name, seed=seed, **dict(self.params))
        return self.then(out) if self.then is not None else out


def variant(name: str, **params: Any) -> Variant:
    """A :class:`Variant` from keyword parameters."""
    return Variant(name, tuple(sorted(params.items())))


#: The degradations quality labels are made with: clean, the paper's noise levels, blur,
#: ×4 / ×8 down-sampling, low light (two strengths) and night.
LABEL_VARIANTS: tuple[Variant, ...] = (
    variant("clean"), variant("noise", sigma=30), variant("noise", sigma=50), variant("noise", sigma=90),
    variant("blur", sigma=3.0), variant("downsample", factor=4), variant("downsample", factor=8),
    variant("low_light"), variant("low_light", gain=0.12, gamma=2.4), variant("night"),
)


def parse_variants(text: str | None) -> tuple[Variant, ...]:
    """Label variants by their names (``"clean,noise:sigma=50"``); None: :data:`LABEL_VARIANTS`."""
    if not text:
        return LABEL_VARIANTS
    known = {str(v): v for v in LABEL_VARIANTS}
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(f"unknown degradation {', '.join(unknown) or repr(text)}; choose from {', '.join(known)}")
    return tuple(known[n] for n in names)


@dataclass
class Labelled:
    """One labelled image: which query, which group (landmark / object), the variant, its AP, and
    the pooled backbone features of its grid patches."""

    query: str
    group: str
    variant: str
    ap: float
    features: np.ndarray
    top_score: float = math.nan  # mean of the top-10 scores: the training-free predictor

TOP = 10  # results the training-free predictor averages


def ranking_ap(pipeline: SearchPipeline, image: Image.Image, positives: set[int], junk: set[int]) -> tuple[float, float]:
    """(AP, mean of the top-10 scores) of ``image`` as a query through ``pipeline`` (whole ranking)
    with the given index rows as positives and junk."""
    shortlist = pipeline.rank(image, depth=pipeline.index.size)
    kept = shortlist.rows >= 0
    rows, scores = shortlist.rows[kept], shortlist.scores[kept]
    return average_precision([int(r) for r in rows.tolist()], positives, junk), float(np.mean(scores[:TOP]))


def _rows_by_name(index: Index, dataset: Dataset) -> dict[str, int]:
    """Dataset image name → index row (every dataset image must be indexed)."""
    by_path = {str(Path(dataset.image_path(n)).resolve()): n for n in dataset.images}
    rows = {by_path[e.path]: int(e.row) for e in index.entries
            if e.status == "indexed" and e.row is not None and e.path in by_path}
    if len(rows) < len(dataset.images):
        raise SourceError(f"index '{index.root}' lacks {len(dataset.images) - len(rows)} of the "
                          f"{len(dataset.images)} images of {dataset.name}; index the dataset's image folder first")
    return rows


def query_rows(index: Index, dataset: Dataset) -> dict[str, tuple[set[int], set[int]]]:
    """(positive rows, junk rows) of every query image of ``dataset`` in ``index``; the query's own
    image is junk unless listed as a positive (as ``matchlens eval`` scores it)."""
    rows = _rows_by_name(index, dataset)
    out: dict[str, tuple[set[int], set[int]]] = {}
    for query in dataset.queries:
        positives = {rows[p] for p in query.positives if p in rows}
        junk = {rows[j] for j in query.junk if j in rows}
        if query.image not in query.positives:
            junk.add(rows[query.image])
        out[query.image] = (positives, junk)
    return out


def _features(net: QualityNet, image: Image.Image) -> np.ndarray:
    return net.features(grid_patches(working_image(image, MAX_SIDE), PATCH)).astype(np.float16)


def dataset_labels(index: Index, dataset: Dataset, net: QualityNet, variants: Sequence[Variant] = LABEL_VARIANTS,
                   queries: Iterable[str] | None = None, advance: Advance | None = None, seed: int = 0) -> list[Labelled]:
    """Labels from ground truth: each (whole-image) query of ``dataset`` under each variant.
    ``queries`` restricts to those query image names."""
    judged = query_rows(index, dataset)
    wanted = set(queries) if queries is not None else None
    out: list[Labelled] = []
    for n, (query, box, _) in enumerate(select_queries(dataset, "full")):
        if wanted is not None and query.image not in wanted:
            continue
        image = load_image(dataset.image_path(query.image), max_side=MAX_SIDE)
        image = crop_to_box(image, box) if box is not None else image
        if min(working_image(image).size) < PATCH:
            continue  # too small to take patches from
        positives, junk = judged[query.image]
        for v in variants:
            shown = v.apply(image, seed=seed + n)
            ap, top = ranking_ap(index.pipeline, shown, positives, junk)
            out.append(Labelled(query.image, str(query.group), str(v), ap, _features(net, shown), top))
            if advance:
                advance(1)
    return out


def verified_positives(index: Index, path: str, row: int, k: int = 10, min_inliers: int = 12) -> set[int]:
    """The row itself and those of its ``k`` nearest neighbours that spatial verification accepts."""
    (sv,) = parse_chain(f"sv:k={k + 1},min_inliers={min_inliers}")
    assert isinstance(sv, SpatialVerification)  # the registry's "sv"
    index.pipeline.rank(path, depth=k + 1, rerank=[sv])
    return {row} | {r for r, inliers in sv.last_inliers.items() if inliers >= min_inliers}


def self_labels(index: Index, net: QualityNet, count: int = 200, variants: Sequence[Variant] = LABEL_VARIANTS,
                k: int = 10, min_inliers: int = 12, advance: Advance | None = None, seed: int = 0) -> list[Labelled]:
    """Labels without ground truth: ``count`` indexed images (sampled), each degraded by every
    variant and searched; positives: the clean original and its verified neighbours."""
    entries = [e for e in index.entries if e.status == "indexed" and e.row is not None]
    if len(entries) < 2:
        raise SourceError(f"index '{index.root}' has {len(entries)} image(s): self-supervised quality labels need a collection")
    rng = np.random.default_rng(seed)
    chosen = [entries[i] for i in sorted(rng.choice(len(entries), min(count, len(entries)), replace=False))]
    out: list[Labelled] = []
    for n, entry in enumerate(chosen):
        row = int(entry.row or 0)  # indexed entries have a row (filtered above)
        positives = verified_positives(index, entry.path, row, k, min_inliers)
        image = load_image(entry.path, max_side=MAX_SIDE)
        if min(working_image(image).size) < PATCH:
            continue  # too small to take patches from: nothing to learn from it
        for v in variants:
            shown = v.apply(image, seed=seed + n)
            # the group is the verified cluster's smallest row: views of one object share it
            ap, top = ranking_ap(index.pipeline, shown, positives, set())
            out.append(Labelled(entry.path, str(min(positives)), str(v), ap, _features(net, shown), top))
            if advance:
                advance(1)
    return out
