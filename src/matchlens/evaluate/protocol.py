"""Run a dataset's queries against an index and score them under a stated protocol.

Query protocols (Oxford/Paris): ``cropped`` — the standard: each query that has a box is cropped
to it before extraction (Crop_I), queries without a box are dropped; ``full`` — every query as
the whole image (not the standard for Oxford/Paris, and labelled so).

Every query is ranked against the whole index, exactly as ``matchlens search`` ranks it (the same
code path), so ``matchlens eval`` and an independent mAP computed from ``matchlens search --json``
agree. The query image itself counts as the ground truth says: a positive where it is listed
as one (classic Oxford5k/Paris6k), ignored otherwise (gt.json sets, whose positives exclude it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

from matchlens.errors import SourceError
from matchlens.evaluate import metrics
from matchlens.evaluate.results import Evaluation, QueryOutcome
from matchlens.io.datasets import Dataset, Query
from matchlens.pipeline import Query as SearchQuery
from matchlens.pipeline import Index, SearchPipeline

PROTOCOLS = ("cropped", "full")
KS = (1, 5, 10)

NOTES = [
    "AP: revisitop's compute_ap (trapezoidal interpolation); junk ignored; a query without positives is skipped (NaN).",
    "mP@k: revisitop's definition, positives in the top min(k, rank of the last positive) divided by that cut-off.",
    "mAP@k: mean of AP@k = (1/min(k, #positives)) * sum over the top k of P(i)*rel(i), junk removed.",
    "R@k: fraction of queries with at least one positive in the top k.",
    "N-S (UKBench): members of the query's group, the query included, in the top 4 (0-4).",
]


def select_queries(dataset: Dataset, protocol: str) -> list[tuple[Query, tuple | None, str]]:
    """(query, box to crop or None, label) for every query the protocol uses."""
    if protocol not in PROTOCOLS:
        raise SourceError(f"unknown query protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    if protocol == "full":
        return [(q, None, "full image") for q in dataset.queries]
    boxed: list[tuple[Query, tuple | None, str]] = [
        (q, q.box, "cropped to box") for q in dataset.queries if q.box is not None
    ]
    if not boxed:
        raise SourceError(f"dataset {dataset.name} has no query boxes; use the 'full' protocol")
    return boxed


def default_protocol(dataset: Dataset) -> str:
    """``cropped`` where the dataset has boxes (the standard), else ``full``."""
    return "cropped" if any(q.box is not None for q in dataset.queries) else "full"


def protocol_label(dataset: Dataset, protocol: str) -> str:
    """A label that cannot be mistaken: which queries, cropped or not, and whether it is the standard."""
    n = len(select_queries(dataset, protocol))
    if protocol == "cropped":
        return f"{n} queries cropped to their boxes (standard protocol)"
    boxed = any(q.box is not None for q in dataset.queries)
    return f"{n} full-image queries" + (" (not the standard cropped protocol)" if boxed else "")


def evaluate_index(
    searcher: SearchPipeline | Index,
    dataset: Dataset,
    protocol: str | None = None,
    progress: Callable[[int, str], Callable[[int], None]] | None = None,
    rerank: str | None = None,
) -> Evaluation:
    """Rank every query of ``dataset`` against the whole index through ``searcher`` (the search
    pipeline ``matchlens search`` uses; re-ranked by the chain ``rerank``, e.g.
    ``"sv:k=100,aqe:k=2"``) and compute per-query and mean metrics. An :class:`Index` is
    searched through its own pipeline."""
    if isinstance(searcher, Index):
        searcher = searcher.pipeline
    protocol = protocol or default_protocol(dataset)
    chosen = select_queries(dataset, protocol)
    names = _path_names(searcher, dataset)
    advance = progress(len(chosen), "queries") if progress else None
    ukbench_like = all(len(q.positives) == 3 and not q.junk and q.image not in q.positives for q, _, _ in chosen)
    queries = (SearchQuery(dataset.image_path(q.image), box, name=q.image) for q, box, _ in chosen)
    outcomes = []
    for (query, _, label), answer in zip(chosen, searcher.run_many(queries, searcher.index.size, rerank)):
        ranking = [names[r.path] for r in answer.results]
        outcomes.append(QueryOutcome(query, ranking, [r.score for r in answer.results],
                                     query_metrics(query, ranking, ns=ukbench_like), label))
        if advance:
            advance(1)
    return Evaluation(
        dataset=dataset.name, protocol=protocol_label(dataset, protocol),
        pipeline=searcher.describe() + (f" + rerank {rerank}" if rerank else ""),
        image_root=str(dataset.image_dir), outcomes=outcomes, summary=summarise(outcomes), notes=list(NOTES),
    )


def query_metrics(query: Query, ranking: Sequence[str], ks: Sequence[int] = KS, ns: bool = False) -> dict[str, float]:
    """AP, P@k (revisitop), AP@k, R@k of one ranking, and with ``ns`` (UKBench-style groups of
    four, every query with its three others) the N-S score."""
    ignore = set(query.junk)
    if query.image not in query.positives:
        ignore.add(query.image)
    values = {"AP": metrics.average_precision(ranking, query.positives, ignore)}
    for k in ks:
        values[f"P@{k}"] = metrics.precision_at_k_revisitop(ranking, query.positives, ignore, k=k)
        values[f"AP@{k}"] = metrics.average_precision_at_k(ranking, query.positives, ignore, k=k)
        values[f"R@{k}"] = metrics.recall_at_k(ranking, query.positives, ignore, k=k)
    if ns:
        values["N-S"] = metrics.ns_score(ranking, set(query.positives) | {query.image}, k=4)
    return values


def summarise(outcomes: Sequence[QueryOutcome]) -> dict[str, float]:
    """Means over queries (NaN-skipping, as revisitop): mAP etc. in percent, N-S as is."""
    keys = list(dict.fromkeys(k for o in outcomes for k in o.metrics))
    summary: dict[str, float] = {}
    for key in keys:
        mean = metrics.mean_average_precision(o.metrics.get(key, math.nan) for o in outcomes)
        name = {"AP": "mAP"}.get(key, "m" + key if key.startswith(("P@", "AP@")) else key)
        summary[name] = mean if key == "N-S" else 100 * mean
    summary["queries"] = len(outcomes)
    return summary


def _path_names(searcher: SearchPipeline, dataset: Dataset) -> dict[str, str]:
    """Dataset image name of every indexed path; images outside the dataset keep their path (distractors)."""
    index = searcher.index
    by_path = {str(Path(dataset.image_path(n)).resolve()): n for n in dataset.images}
    paths = [index.entry_for_row(r).path for r in range(index.size)]
    names = {p: by_path.get(p, p) for p in paths}
    missing = set(dataset.images) - set(names.values())
    if missing:
        example = sorted(missing)[0]
        raise SourceError(
            f"index '{index.root}' lacks {len(missing)} of the {len(dataset.images)} images of {dataset.name} "
            f"(e.g. {example}); index the dataset's image folder, or let 'matchlens eval' build the index"
        )
    return names


def dataset_paths(dataset: Dataset) -> list[str]:
    """Absolute paths of the dataset's images (what to index)."""
    return [str(Path(dataset.image_path(n)).resolve()) for n in dataset.images]


def format_table(evaluations: Sequence[Evaluation]) -> list[list[str]]:
    """Rows for a printed table, one row per metric and one column per evaluation (narrow enough
    for a terminal); the header names each column ``dataset [n]``, see :func:`legend`."""
    keys = list(dict.fromkeys(k for e in evaluations for k in e.summary))
    rows = [["metric", *(f"{e.dataset} [{i}]" for i, e in enumerate(evaluations, 1))]]
    for key in keys:
        rows.append([key, *(_fmt(e.summary.get(key, math.nan), key) for e in evaluations)])
    return rows


def legend(evaluations: Sequence[Evaluation]) -> list[str]:
    """One line per column of :func:`format_table`: which queries and protocol it measured."""
    return [f"[{i}] {e.dataset}: {e.protocol}" for i, e in enumerate(evaluations, 1)]


def _fmt(value: float, key: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if key == "queries":
        return str(int(value))
    return f"{value:.2f}"
