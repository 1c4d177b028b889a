"""The Python API: what ``import matchlens`` offers. The CLI is a thin layer over these functions.

Example::

    import matchlens
    index = matchlens.build_index("photos/", "photos.idx")          # embedded default pipeline
    for r in index.search("query.jpg", box=(10, 20, 300, 400), k=5):
        print(r.rank, r.score, r.path)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from matchlens.config import PipelineSpec, spec_from_preset
from matchlens.evaluate.protocol import dataset_paths, default_protocol, evaluate_index
from matchlens.fusion import parse_fusion
from matchlens.index import backends, store
from matchlens.index.writer import ProgressFactory
from matchlens.io.collection import scan_many
from matchlens.io.formats import load_dataset
from matchlens.pipeline import KEEP, BuildReport, Index, Query, SearchPipeline, SearchResponse, SearchResult, open_index
from matchlens.pipeline.index import as_paths
from matchlens.pipeline.search import Chain
import matchlens.ensemble  # noqa: F401  (registers the ensemble kind with the classic kinds)
from matchlens.regional import open_regional, read_weights
from matchlens.regional.search import RegionalMatch, RegionalPlan, compare_results, rows_of, weigh

if TYPE_CHECKING:
    from matchlens.classic.kinds import KindInfo
    from matchlens.evaluate.results import Evaluation
    from matchlens.train import TrainConfig, TrainResult


def build_index(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    index_dir: str | os.PathLike,
    spec: PipelineSpec | None = None,
    preset: str = "default",
    rebuild: bool = False,
    progress: ProgressFactory | None = None,
    replace: bool = False,
) -> Index:
    """Index a folder (recursive), a list file, or several of them; returns the opened index.

    Re-running on an existing index re-uses every unchanged image's descriptor, and a build that
    was interrupted resumes where it stopped. Unreadable files are skipped and listed
    (``index.skipped()``). An existing index that holds images this source does not is refused
    unless ``replace=True`` (use :meth:`Index.add` to add to it); images whose files were deleted
    from disk are dropped.
    """
    return build_index_report(source, index_dir, spec, preset, rebuild, progress, replace=replace)[0]


def build_index_report(
    source, index_dir, spec: PipelineSpec | None = None, preset: str = "default",
    rebuild: bool = False, progress: ProgressFactory | None = None, dba: dict | None | str = "keep",
    backend=None, dask: str | None = None, replace: bool = False,
) -> tuple[Index, BuildReport]:
    """Like :func:`build_index`, also returning what was computed, reused and skipped.

    ``dba``: database-side augmentation (``{"k": 3}`` or ``{"k": 3, "alpha": 3}``), None to turn
    it off, ``"keep"`` (default) to keep the index's current setting. ``backend``: a vector
    backend (:func:`make_backend`, e.g. ``make_backend("faiss", "IVF1024,PQ64")`` or
    ``make_backend("milvus", "HNSW:M=16", uri="vectors.db")``); None keeps the index's current one
    (exact FAISS Flat for a new index). ``dask``: a Dask scheduler address whose workers extract.
    ``replace``: let the build drop existing images the source does not hold.
    """
    paths = scan_many(as_paths(source))
    return Index.build(paths, index_dir, spec or spec_from_preset(preset), rebuild=rebuild, progress=progress,
                       dba=KEEP if dba == "keep" else dba, backend=KEEP if backend is None else backend, dask=dask,
                       replace=replace)


def make_backend(name: str | None = None, factory: str | None = None, uri: str | None = None, **params):
    """A vector backend: ``faiss`` with a factory string (``Flat``, ``IVF1024,PQ64``, ``HNSW32``) or
    ``milvus`` with an index type and a URI (a local ``.db`` path is Milvus Lite). Parameters:
    ``train_size``, ``nprobe``, ``efSearch``/``ef``, ``refine`` (see :mod:`matchlens.index.backends`)."""
    return backends.make_backend(name, factory, uri, **params)


def create_index(index_dir: str | os.PathLike, spec: PipelineSpec | None = None, preset: str = "default") -> Index:
    """Create an empty index (add images later with :meth:`Index.add`); an existing index is
    refused (one-line IndexError_), never emptied."""
    return Index.build([], Path(index_dir), spec or spec_from_preset(preset), create=True)[0]


def search(index_dir: str | os.PathLike, query, box=None, k: int = 20, rerank: str | None = None,
           fuse: str | None = None) -> list[SearchResult]:
    """One-shot search: open ``index_dir`` and rank it against ``query`` (path, bytes, PIL image or
    array), optionally re-ranked by a chain such as ``"sv:k=100,aqe:k=2"``. ``fuse``: rank by a
    stored descriptor kind (``"asmk"``) or a late fusion of kinds (``"cnn+asmk:ghm"``)."""
    index = open_index(index_dir)
    return (fused_searcher(index, fuse) if fuse else index.pipeline).search(query, box=box, k=k, rerank=rerank)


def evaluate_dataset(
    dataset_root: str | os.PathLike,
    index_dir: str | os.PathLike | None = None,
    spec: PipelineSpec | None = None,
    preset: str = "default",
    protocols: Sequence[str] | None = None,
    dataset_format: str | None = None,
    dataset_options: dict | None = None,
    report_dir: str | os.PathLike | None = None,
    progress: ProgressFactory | None = None,
    rerank: str | None = None,
    fuse: str | None = None,
) -> list["Evaluation"]:
    """Evaluate retrieval on a dataset in its official layout (or gt.json).

    With ``index_dir`` naming an existing index, that index is evaluated (it must contain the
    dataset's images; extra images count as distractors). Otherwise an index is built from
    ``spec``/``preset`` — into ``index_dir`` when given (kept for the next run), else into a
    temporary folder. ``protocols``: ``cropped`` (standard where queries have boxes), ``full``.
    ``rerank``: a re-ranking chain applied to every query, e.g. ``"sv:k=100,aqe:k=2"``.
    ``fuse``: rank by a descriptor kind or a fusion (``"cnn+asmk:ghm"``); kinds the index lacks
    are added with their default parameters first.
    """
    dataset = load_dataset(dataset_root, dataset_format, **(dataset_options or {}))
    protocols = list(protocols or [default_protocol(dataset)])
    with tempfile.TemporaryDirectory(prefix="matchlens-eval-") as tmp:
        target = Path(index_dir) if index_dir else Path(tmp) / "index"
        if store.is_index_dir(target) and spec is None:
            index = open_index(target)
        else:
            index = Index.build(dataset_paths(dataset), target, spec or spec_from_preset(preset), progress=progress)[0]
        searcher = fused_searcher(index, fuse, progress, add_missing=True) if fuse else index.pipeline
        evaluations = [evaluate_index(searcher, dataset, p, progress=progress, rerank=rerank) for p in protocols]
    if report_dir:
        from matchlens.evaluate.report import write_report

        for evaluation, protocol in zip(evaluations, protocols):
            write_report(evaluation, Path(report_dir) / f"{dataset.name}-{protocol}" if len(protocols) > 1 else Path(report_dir))
    return evaluations


def train(config: "TrainConfig", progress: ProgressFactory | None = None, log=None) -> "TrainResult":
    """Fine-tune a backbone + GeM for retrieval (``matchlens train``); resumes an interrupted run in
    ``config.out``. Returns the best checkpoint (loadable with ``--weights``), history and curve."""
    from matchlens.train.moco import train_selfsup  # the trainer's run, with MoCo's step when selfsup == "moco"

    return train_selfsup(config, progress=progress, log=log)



# --- indicative retrieval (matchlens.evidence) ---

def train_verifier(source, out, config=None, settings=None, pairs: int = 400, label_free: bool | None = None,
                   dataset_format: str | None = None, limit: int | None = None, device: str | None = None,
                   progress: ProgressFactory | None = None):
    """Train the indicative verifier on pairs from ``source`` — ground truth (gt.json or an official
    layout) or, for any folder, label-free views — and save it to ``out``.
    Returns ``(TrainResult, origin)``; see :mod:`matchlens.evidence`."""
    from matchlens.explain.workflows import train_from_source

    return train_from_source(source, out, config, settings, pairs, label_free, dataset_format, limit, device, progress)


def explain(index_dir, query, result, model, box=None, out=None):
    """Score and explain ``result`` (file, row id or indexed name) for ``query`` with a verifier
    checkpoint; returns an :class:`matchlens.evidence.Explanation` (PNG written to ``out`` if given)."""
    from matchlens.explain.workflows import explain_result

    return explain_result(index_dir, query, result, model, box, out)


__all__ = ["build_index", "build_index_report", "create_index", "evaluate_dataset", "explain", "make_backend", "open_index", "search", "train", "train_verifier",
           "Index", "SearchResult"]


# --- classic local-feature kinds and late fusion (matchlens.classic, matchlens.fusion) ---

def encode(index_dir: str | os.PathLike, kind: str | None = None, name: str | None = None, params: dict | None = None,
           retrain: bool = False, progress: ProgressFactory | None = None) -> list["KindInfo"]:
    """Add a classic descriptor kind to an index — ``bow``, ``vlad``, ``densevlad`` or ``asmk``,
    stored as ``name`` (default: the kind) with encoding ``params`` such as ``{"k": 16384}`` — or,
    without ``kind``, bring every stored kind up to date with the index (only new images are
    encoded). Returns the state of the kinds written."""
    encode_kind, kind_names, refresh_kind = (getattr(_classic(), n) for n in ("encode_kind", "kind_names", "refresh_kind"))
    index = open_index(index_dir)
    if kind is None:
        return [refresh_kind(index, n, progress) for n in kind_names(index)]
    return [encode_kind(index, kind, name, params, retrain, progress)]


def list_kinds(index_dir: str | os.PathLike) -> list["KindInfo"]:
    """The classic descriptor kinds stored with an index (the CNN descriptor ``cnn`` is implicit)."""
    return _classic().list_kinds(open_index(index_dir))


def fused_searcher(index: Index, fuse: str, progress: ProgressFactory | None = None,
                   add_missing: bool = False) -> SearchPipeline:
    """The search pipeline ranking ``index`` by ``fuse`` (a kind, or a fusion like ``"cnn+asmk:ghm"``;
    see :mod:`matchlens.fusion.expression`); with ``add_missing``, kinds the index lacks are encoded first."""
    encode_kind, kind_names = _classic().encode_kind, _classic().kind_names
    if add_missing:
        for name in set(parse_fusion(fuse).kinds) - {"cnn", *kind_names(index.store)}:
            encode_kind(index.store, name, progress=progress)
    return index.searcher(fuse, progress)


def _classic():
    """The classic kinds' machinery (the regional kind is registered in it: this module imports
    matchlens.regional)."""
    import matchlens.classic as classic  # deferred: SciPy and OpenCV load only for kinds

    return classic


__all__ += ["encode", "fused_searcher", "list_kinds"]


# --- regional descriptors (matchlens.regional, PS-Net) ---

def regional_search(index: Index, query, box=None, k: int = 20, weights: str | os.PathLike | None = None,
                    category: str | None = None, rerank: Chain = None, name: str = "regional",
                    fuse: str | None = None) -> tuple[SearchResponse, RegionalPlan, list[RegionalMatch]]:
    """Rank ``index`` by Σ λ_r cos of its regional kind ``name`` (λ from a ``fit-regions`` file
    ``weights`` and ``category``; uniform without) through the search pipeline — the kind alone,
    or the fusion ``fuse`` that holds it — re-ranked by ``rerank``. Returns the answer, the
    weights used and, per result, its per-region cosines, verdict and region boxes."""
    kind = open_regional(index, name)  # first: a missing kind is a one-line error before any work
    table = read_weights(weights, kind.names, kind.layout)
    searcher = fused_searcher(index, fuse or name)  # the stored kind's ranking (brought up to date)
    plan = weigh(searcher, open_regional(index, name), table, category)
    answer = searcher.run(Query(query, box, name=str(query) if isinstance(query, (str, os.PathLike)) else None), k,
                          rerank)
    rows = rows_of(index.store, [r.id for r in answer.results])
    return answer, plan, compare_results(plan, plan.kind.query_code(query, box), rows)


__all__ += ["regional_search"]
