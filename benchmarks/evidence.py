"""Indicative retrieval (P0) on the shared data: retrieval quality and evidence quality, P0 Tables 1–2 layout.

Rows: the global descriptor (the index's own ranking), the CAM+CroW and global-similarity evidence
baselines, and the verifier runs Base (no HAR), +HAR, +HAR+PRF (avg) and +HAR+PRF (max).
Columns: mAP, mAP@5, mAP@10, mAP@20, mIoU on two evidence sets, and seconds per pair.

Two protocols, reported separately and labelled:

* **standard** — the verifier is trained WITHOUT labels on Oxford images (label-free views,
  ``matchlens train-verifier --label-free``) and re-scores the top ``k`` of the global search of
  the index; mAP with the official junk handling over the whole collection.
* **P0 cross-validation** — P0's protocol: pairs (query, image) drawn from the test collection
  with their ground-truth labels, split in ``folds`` folds; train on the others, rank each test
  query's pairs in the held-out fold. Its numbers are NOT comparable with the standard protocol
  (training sees the test queries' landmarks and labels; rankings cover only the sampled pairs).

Evidence quality (IoU of the thresholded map with a region, over thresholds 0.05…0.95; mIoU =
mean over pairs and thresholds):

* query side — C_Q of (full query image, positive) pairs against the official query boxes of
  oxford5k_subset;
* target side — C_T on a generated set: UKBench object photos (another view of the query
  object) pasted into Oxford photos at known boxes.

    python benchmarks/evidence.py [--data ../shared/data] [--index bench-out/oxford5k_subset]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from matchlens.evaluate import metrics
from matchlens.evidence import EvidenceModel, VerifierConfig, pool_query_maps, reweight_query, upsample
from matchlens.evidence.baselines import BackboneMaps
from matchlens.evidence.iou import THRESHOLDS, box_mask, iou_curve, mean_iou
from matchlens.evidence.pairs import Pair, folder_images, label_free_pairs, load_small, paste, query_image
from matchlens.evidence.train import TrainSettings, fit_tensors, pair_tensors, train_verifier
from matchlens.io.formats import load_dataset

console = Console(width=160)
RUNS = ("Base", "+HAR", "+HAR+PRF (avg)", "+HAR+PRF (max)")
BASELINES = ("Global descriptor", "CAM+CroW")
KS = (5, 10, 20)


# ------------------------------------------------------------------------------------------
# Models

def train_models(args, oxford) -> dict[str, Path]:
    """Label-free Base and +HAR verifiers on a sample of Oxford images (re-used when present)."""
    rows, cols = (int(v) for v in args.grid.split("x"))
    out = Path(args.out)
    suffix = "" if args.features == "pixels" else f"-{args.features}"
    paths = {"Base": out / f"verifier-base{suffix}.pt", "+HAR": out / f"verifier-har{suffix}.pt"}
    images = None
    for name, path in paths.items():
        if path.is_file() and not args.retrain:
            console.print(f"re-using {path}")
            continue
        if images is None:
            images = folder_images(oxford.image_dir, args.train_images, seed=args.seed)
            pairs = label_free_pairs(images, args.pairs, seed=args.seed)
        config = VerifierConfig(rows=rows, cols=cols, patch_px=args.patch_px, har=name != "Base", arch=args.arch,
                                source=args.features)
        result = train_verifier(pairs, config, TrainSettings(epochs=args.epochs, seed=args.seed), device=args.device)
        result.model.save(path, origin=f"label-free views of {len(images)} Oxford images", seconds=result.seconds)
        console.print(f"trained {name}: {result.seconds:.0f} s, last epoch {result.history[-1]}")
    return paths


def chain(run: str, paths: dict[str, Path], k: int, prf_k: int) -> str:
    """The rerank chain string of a verifier run."""
    model = paths["Base" if run == "Base" else "+HAR"]
    prf = {"+HAR+PRF (avg)": "avg", "+HAR+PRF (max)": "max"}.get(run, "none")
    return f"indicative:k={k},model={model},prf={prf},prf_k={prf_k}"


# ------------------------------------------------------------------------------------------
# Standard protocol retrieval

def ranking_metrics(outcomes) -> dict[str, float]:
    """mAP and mAP@k (percent) with the official junk handling (query image ignored when not a positive)."""
    aps, at_k = [], {k: [] for k in KS}
    for o in outcomes:
        ignore = set(o.query.junk) | ({o.query.image} if o.query.image not in o.query.positives else set())
        aps.append(metrics.average_precision(o.ranking, o.query.positives, ignore))
        for k in KS:
            at_k[k].append(metrics.average_precision_at_k(o.ranking, o.query.positives, ignore, k=k))
    out = {"mAP": 100 * metrics.mean_average_precision(aps)}
    out.update({f"mAP@{k}": 100 * metrics.mean_average_precision(v) for k, v in at_k.items()})
    return out


def standard_retrieval(args, oxford, paths) -> dict[str, dict[str, dict[str, float]]]:
    """Per protocol (full, cropped) and run: mAP figures and seconds per verified pair."""
    from matchlens.evaluate.protocol import evaluate_index
    from matchlens.pipeline import open_index

    index = open_index(args.index)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for protocol in args.protocols.split(","):
        results[protocol] = {}
        for run in ("Global descriptor",) + RUNS:
            rerank = None if run == "Global descriptor" else chain(run, paths, args.k, args.prf_k)
            started = time.perf_counter()
            evaluation = evaluate_index(index.pipeline, oxford, protocol, rerank=rerank)
            seconds = time.perf_counter() - started
            figures = ranking_metrics(evaluation.outcomes)
            n_pairs = len(evaluation.outcomes) * (args.k if rerank else 0)
            figures["s/pair"] = seconds / n_pairs if n_pairs else float("nan")
            figures["queries"] = len(evaluation.outcomes)
            results[protocol][run] = figures
            console.print(f"[{protocol}] {run}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))
    return results


# ------------------------------------------------------------------------------------------
# Evidence sets

def query_side_set(oxford, per_query: int, seed: int) -> list[tuple[int, Pair]]:
    """(query id, pair) with the FULL query image and one of its positives; ``pair.box`` = the query box."""
    rng = np.random.default_rng(seed)
    out = []
    for qid, query in enumerate(q for q in oxford.queries if q.box is not None):
        full = load_small(oxford.image_path(query.image))
        stored = load_small(oxford.image_path(query.image), 10_000)  # box is in stored pixels
        s = full.width / stored.width
        box = tuple(v * s for v in query.box)
        positives = sorted(query.positives - {query.image})
        for name in rng.choice(positives, min(per_query, len(positives)), replace=False):
            out.append((qid, Pair(full, load_small(oxford.image_path(str(name))), 1, box)))
    return out


def target_side_set(ukbench, backgrounds, seed: int) -> list[tuple[int, Pair]]:
    """(object id, pair): UKBench view 0 as query; each other view pasted into an Oxford photo."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    out = []
    for oid, query in enumerate(q for q in ukbench.queries if q.image not in seen):
        seen.update({query.image, *query.positives})
        obj = load_small(ukbench.image_path(query.image))
        for view in sorted(query.positives):
            background = backgrounds[int(rng.integers(len(backgrounds)))]
            target, box = paste(load_small(ukbench.image_path(view)), background, rng, (0.15, 0.35))
            out.append((oid, Pair(obj, target, 1, box)))
    return out


def verifier_maps(model: EvidenceModel, items: list[tuple[int, Pair]], side: str, prf: str | None,
                  prf_k: int) -> tuple[list[np.ndarray], float]:
    """Maps (query side: C_Q; target side: C_T) per pair, optionally after indicative PRF per query group.

    PRF pools the C_Q maps of the ``prf_k`` best-scored pairs of the same query (the pseudo-relevant
    top results), re-weights the query and explains the pairs again. Returns maps and s/pair.
    """
    started = time.perf_counter()
    queries = [p.query for _, p in items]
    targets = [p.target for _, p in items]
    scores, c_q, c_t, _ = model.explain_grids(queries, targets)
    if prf:
        refined = list(queries)
        for group in sorted({g for g, _ in items}):
            members = [i for i, (g, _) in enumerate(items) if g == group]
            best = sorted(members, key=lambda i: -scores[i])[:prf_k]
            mask = pool_query_maps([c_q[i] for i in best], prf)
            image = reweight_query(queries[members[0]], mask)
            for i in members:
                refined[i] = image
        _, c_q, c_t, _ = model.explain_grids(refined, targets)
    grids = c_q if side == "query" else c_t
    images = queries if side == "query" else targets
    maps = [upsample(g, im.size) for g, im in zip(grids, images)]
    return maps, (time.perf_counter() - started) / max(len(items), 1)


def baseline_maps(maps: BackboneMaps, items: list[tuple[int, Pair]], side: str, kind: str) -> list[np.ndarray]:
    """CAM+CroW (per image) or global-descriptor similarity maps on the evaluated side."""
    out = []
    for _, p in items:
        image, other = (p.query, p.target) if side == "query" else (p.target, p.query)
        out.append(maps.cam_crow_map(image) if kind == "CAM+CroW" else maps.similarity_map(image, other))
    return out


def evidence_quality(args, oxford, ukbench, paths) -> dict[str, dict[str, object]]:
    """mIoU and IoU curves of every method on both evidence sets."""
    backgrounds = folder_images(oxford.image_dir, 60, seed=args.seed + 7)
    sets = {"query": query_side_set(oxford, args.per_query, args.seed),
            "target": target_side_set(ukbench, backgrounds, args.seed)}
    backbone = BackboneMaps()
    models = {name: EvidenceModel.load(path, device=args.device) for name, path in paths.items()}
    results: dict[str, dict[str, object]] = {}
    for side, items in sets.items():
        regions = [box_mask((p.query if side == "query" else p.target).size, p.box) for _, p in items]
        per_method: dict[str, object] = {"pairs": len(items)}
        for method in ("CAM+CroW", "Global similarity") + RUNS:
            started = time.perf_counter()
            if method in ("CAM+CroW", "Global similarity"):
                maps = baseline_maps(backbone, items, side, method)
                seconds = (time.perf_counter() - started) / len(items)
            else:
                prf = {"+HAR+PRF (avg)": "avg", "+HAR+PRF (max)": "max"}.get(method)
                model = models["Base" if method == "Base" else "+HAR"]
                maps, seconds = verifier_maps(model, items, side, prf, args.prf_k)
            curves = [iou_curve(m, r) for m, r in zip(maps, regions)]
            per_method[method] = {"mIoU": 100 * mean_iou(curves), "curve": np.mean(curves, axis=0).tolist(),
                                  "s/pair": seconds}
            console.print(f"[{side} side, {len(items)} pairs] {method}: mIoU {100 * mean_iou(curves):.2f}")
        results[side] = per_method
    return results


# ------------------------------------------------------------------------------------------
# P0's cross-validation protocol

def cv_pairs(oxford, n_queries: int, n_pos: int, n_neg: int, seed: int) -> tuple[list[Pair], list[int]]:
    """Labelled (query, image) pairs from the test collection and the query id of each."""
    rng = np.random.default_rng(seed)
    candidates = [q for q in oxford.queries if q.box is None and len(q.positives - {q.image}) >= 2]
    chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), min(n_queries, len(candidates)), replace=False))]
    cache: dict[str, object] = {}

    def image(name):
        if name not in cache:
            cache[name] = load_small(oxford.image_path(name))
        return cache[name]

    pairs, qids = [], []
    for qid, query in enumerate(chosen):
        q_img = query_image(oxford, query, loader=image)
        positives = sorted(query.positives - {query.image})
        negatives = sorted(set(oxford.images) - query.positives - query.junk - {query.image})
        for names, label in ((rng.choice(positives, min(n_pos, len(positives)), replace=False), 1),
                             (rng.choice(negatives, n_neg, replace=False), 0)):
            for name in names:
                pairs.append(Pair(q_img, image(str(name)), label))
                qids.append(qid)
    return pairs, qids


def cross_validation(args, oxford) -> dict[str, dict[str, float]]:
    """P0's protocol: ``folds``-fold CV over labelled pairs of the test collection.

    Every pair is scored by the model of the fold that held it out (out-of-fold scores); each
    query's pairs are then ranked by score → AP, AP@k (mean over queries). ``fold AP`` is the AP
    of each fold's pooled test-pair ranking, given as mean ± std over folds (P0's ± is over folds).
    """
    rows, cols = (int(v) for v in args.grid.split("x"))
    pairs, qids = cv_pairs(oxford, args.cv_queries, args.cv_pos, args.cv_neg, args.seed)
    qids_arr = np.array(qids)
    results = {}
    for run, har in (("Base", False), ("+HAR", True)):
        config = VerifierConfig(rows=rows, cols=cols, patch_px=args.patch_px, har=har, arch=args.arch,
                                source=args.features)
        tensors, labels = pair_tensors(EvidenceModel(config, device="cpu"), pairs)
        folds = np.random.default_rng(args.seed).permutation(len(pairs)) % args.folds
        scores = np.zeros(len(pairs), np.float32)
        fold_ap = []
        started = time.perf_counter()
        for fold in range(args.folds):
            test, train = np.flatnonzero(folds == fold), np.flatnonzero(folds != fold)
            model = EvidenceModel(config, device=args.device)
            fit_tensors(model, tensors[train], labels[train], TrainSettings(epochs=args.epochs, seed=args.seed + fold,
                                                                            val_fraction=0.0))
            scores[test] = model.score_tensors(tensors[test])
            fold_ap.append(_fold_metrics(scores[test], labels[test].numpy(), np.zeros(len(test)))["mAP"])
        figures = _fold_metrics(scores, labels.numpy(), qids_arr)
        figures["fold AP"] = float(np.mean(fold_ap))
        figures["fold AP std"] = float(np.std(fold_ap))
        figures["seconds"] = time.perf_counter() - started
        figures["pairs"] = len(pairs)
        figures["queries"] = len(set(qids))
        results[run] = figures
        console.print(f"[P0 CV, {args.folds} folds, {len(pairs)} pairs] {run}: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
    return results


def _fold_metrics(scores: np.ndarray, labels: np.ndarray, qids: np.ndarray) -> dict[str, float]:
    """mAP and mAP@k (percent) of per-query rankings of pairs by score."""
    aps, at_k = [], {k: [] for k in KS}
    for q in np.unique(qids):
        sel = qids == q
        if labels[sel].sum() == 0:
            continue
        ranked = np.argsort(-scores[sel], kind="stable").tolist()
        positives = frozenset(np.flatnonzero(labels[sel] >= 0.5).tolist())
        aps.append(metrics.average_precision(ranked, positives, ()))
        for k in KS:
            at_k[k].append(metrics.average_precision_at_k(ranked, positives, (), k=k))
    out = {"mAP": 100 * float(np.mean(aps))}
    out.update({f"mAP@{k}": 100 * float(np.mean(v)) for k, v in at_k.items()})
    return out


# ------------------------------------------------------------------------------------------
# Tables

def print_tables(standard, evidence, cv, args) -> None:
    """P0 Tables 1–2 layout, one table per protocol."""
    for protocol, runs in (standard or {}).items():
        n = next(iter(runs.values()))["queries"]
        table = Table(title=f"STANDARD protocol — oxford5k_subset, {protocol} ({n} queries); verifier "
                            f"({args.features}, grid {args.grid}) trained label-free, re-scores the global top {args.k}")
        for col in ("method", "mAP", "mAP@5", "mAP@10", "mAP@20", "mIoU query", "mIoU target", "s/pair"):
            table.add_column(col, justify="right" if col != "method" else "left")
        for method in ("Global descriptor", "CAM+CroW", "Global similarity") + RUNS:
            fig = runs.get(method, {})
            ev = [evidence.get(side, {}).get(method, {}) if evidence else {} for side in ("query", "target")]
            table.add_row(method, *[_f(fig.get(c)) for c in ("mAP", "mAP@5", "mAP@10", "mAP@20")],
                          _f(ev[0].get("mIoU")), _f(ev[1].get("mIoU")),
                          _f(fig.get("s/pair", ev[1].get("s/pair")), 4))
        console.print(table)
    if evidence:
        table = Table(title="IoU vs threshold (percent), evidence sets")
        table.add_column("set / method")
        picks = [i for i, t in enumerate(THRESHOLDS) if round(t * 100) % 10 == 0]
        for i in picks:
            table.add_column(f"t={THRESHOLDS[i]:.1f}", justify="right")
        for side, methods in evidence.items():
            for method, fig in methods.items():
                if isinstance(fig, dict):
                    table.add_row(f"{side} ({methods['pairs']} pairs) {method}",
                                  *[_f(100 * fig["curve"][i]) for i in picks])
        console.print(table)
    if cv:
        first = next(iter(cv.values()))
        table = Table(title=f"P0 CROSS-VALIDATION protocol — {args.folds}-fold CV on {first['pairs']} labelled pairs "
                            f"({first['queries']} queries) of oxford5k_subset itself (NOT comparable with the standard "
                            f"protocol)")
        for col in ("method", "mAP", "mAP@5", "mAP@10", "mAP@20", "fold AP (mean ± std)", "train+test s"):
            table.add_column(col, justify="right" if col != "method" else "left")
        for method, fig in cv.items():
            table.add_row(method, *[_f(fig[c]) for c in ("mAP", "mAP@5", "mAP@10", "mAP@20")],
                          f"{fig['fold AP']:.2f} ± {fig['fold AP std']:.2f}", f"{fig['seconds']:.0f}")
        console.print(table)


def _f(value, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--index", default="bench-out/oxford5k_subset", help="An index of oxford5k_subset.")
    parser.add_argument("--out", default="bench-out/evidence", help="Where the trained verifiers go.")
    parser.add_argument("--grid", default="8x8")
    parser.add_argument("--patch-px", type=int, default=12)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--features", default="pixels", help="Patch descriptors: pixels (P0) or backbone.")
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--k", type=int, default=20, help="Shortlist re-scored by the verifier.")
    parser.add_argument("--prf-k", type=int, default=3)
    parser.add_argument("--per-query", type=int, default=5, help="Query-side evidence pairs per boxed query.")
    parser.add_argument("--protocols", default="cropped,full")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--cv-queries", type=int, default=30)
    parser.add_argument("--cv-pos", type=int, default=8)
    parser.add_argument("--cv-neg", type=int, default=8)
    parser.add_argument("--skip", default="", help="Comma list of parts to skip: standard, evidence, cv.")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded CPU).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    data = Path(args.data)
    oxford = load_dataset(data / "oxford5k_subset")
    ukbench = load_dataset(data / "ukbench_subset")
    started = time.perf_counter()
    paths = train_models(args, oxford)
    standard = standard_retrieval(args, oxford, paths) if "standard" not in skip else {}
    evidence = evidence_quality(args, oxford, ukbench, paths) if "evidence" not in skip else {}
    cv = cross_validation(args, oxford) if "cv" not in skip else {}
    if not standard and evidence:
        standard = {"(no retrieval run)": {"Global descriptor": {"queries": 0}}}
    print_tables(standard, evidence, cv, args)
    console.print(f"total {time.perf_counter() - started:.0f} s; load {os.getloadavg()[0]:.1f}; "
                  f"torch threads {args.threads}; device {args.device}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "standard": standard, "evidence": evidence,
                                               "cv": cv}, indent=1, default=float))


if __name__ == "__main__":
    sys.exit(main())
