"""Retrieval quality of pipelines on the shared evaluation data, printed as a table.

For every pooling × whitening × scale set (and so every preset): mAP (junk and the query itself
excluded, revisitop's AP) on ../shared/data/oxford5k_subset over all whole-image queries and over
the official queries cropped to their boxes, and the N-S score (and mAP) on ukbench_subset.

Feature maps are computed once per scale and shared by every pooling; each descriptor is made by
the same Extractor code that ``matchlens index`` uses. PCA whitening is learned without labels
on the indexed collection (Oxford) — as ``matchlens index`` does by default — and, for UKBench,
whose 56 images are too few to learn it, on the Oxford collection (an independent set).

    python benchmarks/quality.py [--data ../shared/data] [--limit N] [--json out.json]
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

from matchlens.config import DEFAULT_PRESET, MULTI_SCALES, PRESETS, PipelineSpec
from matchlens.evaluate.metrics import average_precision, mean_average_precision, ns_score
from matchlens.extract import Extractor, l2_normalize
from matchlens.io.formats import load_gt_json
from matchlens.whitening import PCAWhitening

POOLINGS = {"mac": {}, "spoc": {}, "gem": {"p": 3.0}, "rmac": {"levels": 3}, "crow": {}}
SCALE_SETS = {"single": (1.0,), "multi": MULTI_SCALES}
WHITENINGS = {"none": None, "pcaw-full (d512, power 0.5)": {"dim": 512, "power": 0.5},
              "pcaw (d256, power 0.25)": {"dim": 256, "power": 0.25}}


def feature_maps(extractor: Extractor, images, scales) -> dict[float, list[torch.Tensor]]:
    """Feature maps of every image at every scale (computed once, shared by all poolings)."""
    maps: dict[float, list[torch.Tensor]] = {s: [] for s in scales}
    for i, image in enumerate(images):
        for s in scales:
            maps[s].append(extractor.feature_map(image, s))
        if (i + 1) % 100 == 0:
            print(f"  {i + 1}/{len(images)} images", file=sys.stderr, flush=True)
    return maps


def pooled(maps: dict[float, list[torch.Tensor]], scales, pooling) -> np.ndarray | None:
    """Descriptors as Extractor.describe_image makes them: per-scale L2, summed, L2."""
    n = len(maps[scales[0]])
    if n == 0:
        return None
    out = []
    with torch.inference_mode():
        for i in range(n):
            total = sum(l2_normalize(pooling(maps[s][i]).numpy())[0].astype(np.float64) for s in scales)
            out.append(l2_normalize(total))
    return np.stack(out)


def oxford_map(db: np.ndarray, queries: np.ndarray, dataset, query_list) -> float:
    names = dataset.images
    aps = []
    for q, vec in zip(query_list, queries):
        order = np.argsort(-(db @ vec), kind="stable")
        ranking = [names[j] for j in order]
        aps.append(average_precision(ranking, q.positives, set(q.junk) | {q.image}))
    return mean_average_precision(aps)


def ukbench_scores(db: np.ndarray, dataset) -> tuple[float, float]:
    names = dataset.images
    ns, aps = [], []
    for q in dataset.queries:
        vec = db[names.index(q.image)]
        order = np.argsort(-(db @ vec), kind="stable")
        ranking = [names[j] for j in order]
        ns.append(ns_score(ranking, set(q.positives) | {q.image}))
        aps.append(average_precision(ranking, q.positives, {q.image}))
    return float(np.mean(ns)), mean_average_precision(aps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N Oxford images (quick check)")
    parser.add_argument("--json", default="", help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 2)

    oxford = load_gt_json(Path(args.data) / "oxford5k_subset")
    ukbench = load_gt_json(Path(args.data) / "ukbench_subset")
    base = Extractor(PipelineSpec(max_side=args.max_side))
    all_scales = sorted({s for ss in SCALE_SETS.values() for s in ss}, reverse=True)

    ox_names = list(oxford.images[: args.limit] if args.limit else oxford.images)
    ox_images = [base.load(oxford.image_path(n)) for n in ox_names]
    whole = [q for q in oxford.queries if q.image in set(ox_names)]
    official = [q for q in oxford.official_queries() if q.image in set(ox_names)]
    crops = [base.load(oxford.image_path(q.image), q.box) for q in official]
    uk_images = [base.load(ukbench.image_path(n)) for n in ukbench.images]

    timings = {}
    print(f"feature maps: {len(ox_images)} Oxford images, {len(crops)} cropped queries, {len(uk_images)} UKBench, "
          f"scales {all_scales}", file=sys.stderr)
    maps = {}
    for label, images in (("ox", ox_images), ("crop", crops), ("uk", uk_images)):
        maps[label] = {}
        for set_name, scales in SCALE_SETS.items():
            missing = [s for s in scales if s not in maps[label]]
            t0 = time.perf_counter()
            maps[label].update(feature_maps(base, images, missing))
            if label == "ox":
                timings[set_name] = (time.perf_counter() - t0) / len(images)
    # The time of the second scale set only counts its new scales: report the full cost instead.
    timings["multi"] = timings["multi"] + timings["single"] * (1.0 in SCALE_SETS["multi"])

    class Sub:  # a dataset view restricted to the images actually used
        images = tuple(ox_names)

    rows = []
    for pool_name, params in POOLINGS.items():
        from matchlens.pooling import make_pooling

        pooling = make_pooling(pool_name, **params)
        for set_name, scales in SCALE_SETS.items():
            db = pooled(maps["ox"], scales, pooling)
            qcrop = pooled(maps["crop"], scales, pooling)
            uk = pooled(maps["uk"], scales, pooling)
            qwhole = db[[ox_names.index(q.image) for q in whole]]
            for white_name, wparams in WHITENINGS.items():
                if wparams is None:
                    d, qc, qw, u = db, qcrop, qwhole, uk
                else:
                    white = PCAWhitening(**{**wparams, "dim": min(wparams["dim"], len(db) - 1)}).fit(db)
                    d, qw, u = white.transform(db), white.transform(qwhole), white.transform(uk)
                    qc = white.transform(qcrop) if qcrop is not None else None
                ns, uk_map = ukbench_scores(u, ukbench)
                row = {
                    "pooling": pool_name, "scales": set_name, "whitening": white_name,
                    "oxford_whole_map": 100 * oxford_map(d, qw, Sub, whole),
                    "oxford_cropped_map": 100 * oxford_map(d, qc, Sub, official) if official else float("nan"),
                    "ukbench_ns": ns, "ukbench_map": 100 * uk_map,
                    "ms_per_image": 1000 * timings[set_name],
                }
                rows.append(row)
                print(_fmt(row), file=sys.stderr, flush=True)

    print(f"\nbackbone tf_efficientnet_lite0, max side {args.max_side}px, multi = scales {MULTI_SCALES}; "
          f"oxford5k_subset: {len(whole)} whole-image queries, {len(official)} official cropped queries, "
          f"{len(ox_names)} images; PCA whitening learned on the Oxford collection (no labels)\n")
    print("| pooling | scales | whitening | Oxford mAP (whole, 114 q) | Oxford mAP (cropped, 10 q) | UKBench N-S | UKBench mAP | ms/image |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(_fmt(row))
    print("\n| preset | pipeline | Oxford mAP (whole) | Oxford mAP (cropped) | UKBench N-S | ms/image |")
    print("|---|---|---|---|---|---|")
    for name, values in PRESETS.items():
        row = _row_of_preset(rows, PipelineSpec(**values))
        label = f"{name} (default)" if name == DEFAULT_PRESET else name
        print(f"| {label} | {PipelineSpec(**values).describe()} | {row['oxford_whole_map']:.1f} | "
              f"{row['oxford_cropped_map']:.1f} | {row['ukbench_ns']:.2f} | {row['ms_per_image']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def _row_of_preset(rows: list[dict], spec: PipelineSpec) -> dict:
    """The grid row that measured a preset's pipeline."""
    scales = next(name for name, values in SCALE_SETS.items() if tuple(values) == spec.scales)
    white = next(name for name, params in WHITENINGS.items()
                 if (params is None and spec.whitening == "none") or params == dict(spec.whitening_params))
    return next(r for r in rows if (r["pooling"], r["scales"], r["whitening"]) == (spec.pooling, scales, white))


def _fmt(row: dict) -> str:
    return (f"| {row['pooling']} | {row['scales']} | {row['whitening']} | {row['oxford_whole_map']:.1f} | "
            f"{row['oxford_cropped_map']:.1f} | {row['ukbench_ns']:.2f} | {row['ukbench_map']:.1f} | {row['ms_per_image']:.0f} |")


if __name__ == "__main__":
    main()
