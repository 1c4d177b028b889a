"""Degraded queries (QAIR, P1f): how well the quality network predicts a query's AP, and what
enhancing degraded queries buys, on ../shared/data/oxford5k_subset (the paper's protocol).

(a) Quality prediction. Every whole-image query (114) under every variant of ``VARIANTS`` is
    ranked against the whole index and labelled with its AP. Landmark-disjoint 80/20 splits × 5
    (the 11 landmarks in 5 folds, each held out once): the quality head is trained on the patches of
    the training landmarks' labelled queries and predicts the held-out ones; Spearman ρ and MAE of
    predicted vs true AP, against a training-free predictor (the mean of the top-10 scores; its
    MAE after a least-squares line fitted on the training split).
(b) Enhancement, on the held-out queries of split 0 (``--enhance-splits`` for more): mAP of
    σ = 50 and σ = 90 noisy queries, ×4 low-resolution (bicubic down and back up) and low-light
    queries: degraded → NL-means (noise only; given the true σ) → DnCNN (MSE) → DnCNN-QA (fine-tuned
    through the frozen quality net, eq. 3) → feature adaptation (DnCNN output, adapted last feature
    map, eq. 4) → ``--enhance auto``, against clean. BM3D only if the ``bm3d`` package is importable.
    The enhancers train on dataset images outside the held-out landmarks (never shipped).
    The last line checks ``--enhance auto`` on the clean held-out queries of every split.

Reductions for a 2-core CPU (printed under the tables): DnCNN 6 layers × 24 channels instead of
17 × 64, few epochs on few patches, 128-px quality patches on the 640-px query, feature adaptation of
the last feature map only.

    python benchmarks/degraded.py [--data ../shared/data/oxford5k_subset] [--index bench-out/oxford5k_subset]
        [--work bench-out/degraded] [--enhance-splits 1] [--enhance-queries 12] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr

from matchlens.api import build_index, open_index
from matchlens.evaluate.protocol import dataset_paths
from matchlens.extract import Extractor
from matchlens.io.degrade import degrade
from matchlens.io.formats.detect import load_dataset
from matchlens.io.images import load_image
from matchlens.evaluate.metrics import average_precision
from matchlens.quality.auto import choose
from matchlens.quality.dncnn import CPU, DnCNN, default_size, enhance_image, make_pairs, train_mse
from matchlens.quality.enhance import FeatureAdapter, adapted_vector, finetune_qa, train_feature_adaptation
from matchlens.quality.labels import Labelled, Variant, dataset_labels, query_rows, ranking_ap, variant
from matchlens.quality.net import QualityHead, QualityNet, to_tensor, train_head
from matchlens.quality.nlmeans import nl_means
from matchlens.quality.patches import MAX_SIDE, PATCH
from matchlens.quality.store import QualityModel, target_of
from matchlens.quality.train import LOW_SHARE

torch.set_num_threads(1)

VARIANTS = (variant("clean"), variant("noise", sigma=50), variant("noise", sigma=90), variant("blur", sigma=3.0),
            variant("downsample", factor=4), variant("low_light", gain=0.12, gamma=2.4))
# --enhance auto is measured on these sets (with the denoise and sr enhancers, as train-quality makes them)
AUTO_SETS = ("clean", "noise:sigma=50", "downsample:factor=4")
# (b): the degradation, its row label, and whether NL-means applies
ENHANCE = (("noise:sigma=50", "σ = 50 noise", 50.0), ("noise:sigma=90", "σ = 90 noise", 90.0),
           ("downsample:factor=4", "×4 low resolution", None), ("low_light:gain=0.12:gamma=2.4", "low light", None))


@dataclass
class Settings:
    head_epochs: int = 60
    mse_pairs: int = 1200
    mse_epochs: int = 3
    qa_pairs: int = 128
    qa_epochs: int = 1
    fa_patches: int = 128
    fa_epochs: int = 20
    train_images: int = 24
    queries: int | None = None
    enhance_queries: int = 12  # held-out queries of split 0 that (b) enhances (evenly spread)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- labels ---------------------------------------------------------------------------------------
def cached_labels(index, dataset, net, work: Path, queries: list[str]) -> list[Labelled]:
    """Labels of every (query, variant), cached per index generation and query set."""
    key = f"labels-{index.generation}-{len(queries)}-{len(VARIANTS)}.npz"
    path = work / key
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        return [Labelled(str(q), str(g), str(v), float(a), f, float(t))
                for q, g, v, a, f, t in zip(data["query"], data["group"], data["variant"], data["ap"], data["features"], data["top"])]
    start = time.perf_counter()
    total = len(queries) * len(VARIANTS)
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if done[0] % 60 == 0:
            log(f"labelled {done[0]}/{total}")
    labels = dataset_labels(index, dataset, net, VARIANTS, queries=queries, advance=advance)
    log(f"labelled {len(labels)} queries in {time.perf_counter() - start:.0f} s")
    work.mkdir(parents=True, exist_ok=True)
    np.savez(path, query=[lab.query for lab in labels], group=[lab.group for lab in labels],
             variant=[lab.variant for lab in labels], ap=[lab.ap for lab in labels],
             features=np.stack([lab.features for lab in labels]), top=[lab.top_score for lab in labels])
    return labels


def folds(groups: list[str], k: int = 5, seed: int = 0) -> list[set[str]]:
    """Landmark-disjoint folds of about equal size (about 20% of the queries each): the landmarks,
    largest first (ties shuffled), each into the fold with the fewest queries so far."""
    counts: dict[str, int] = {}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    shuffled = list(np.random.default_rng(seed).permutation(sorted(counts)))
    out: list[set[str]] = [set() for _ in range(k)]
    sizes = [0] * k
    for g in sorted(shuffled, key=lambda name: -counts[name]):
        smallest = sizes.index(min(sizes))
        out[smallest].add(str(g))
        sizes[smallest] += counts[g]
    return out


def fit_head(labels: list[Labelled], epochs: int, seed: int = 0) -> QualityHead:
    kept = [lab for lab in labels if not math.isnan(lab.ap)]
    x = np.concatenate([lab.features for lab in kept]).astype(np.float32)
    y = np.concatenate([np.full(len(lab.features), lab.ap, np.float32) for lab in kept])
    head = QualityHead(x.shape[1])
    train_head(head, x, y, epochs=epochs, seed=seed)
    return head.eval()


@torch.no_grad()
def predict(head: QualityHead, labels: list[Labelled]) -> np.ndarray:
    return np.array([float(head(torch.from_numpy(lab.features.astype(np.float32))).mean()) for lab in labels])


def part_a(labels: list[Labelled], splits: list[set[str]], settings: Settings) -> tuple[list[dict], list[QualityHead]]:
    rows, heads = [], []
    for s, held in enumerate(splits):
        train = [lab for lab in labels if lab.group not in held and not math.isnan(lab.ap)]
        test = [lab for lab in labels if lab.group in held and not math.isnan(lab.ap)]
        head = fit_head(train, settings.head_epochs, seed=s)
        heads.append(head)
        true = np.array([lab.ap for lab in test])
        pred = predict(head, test)
        top_train = np.array([lab.top_score for lab in train])
        slope, intercept = np.polyfit(top_train, np.array([lab.ap for lab in train]), 1)
        top = np.array([lab.top_score for lab in test])
        rows.append({"split": s, "held_out": sorted(held), "n": len(test),
                     "rho_qa": float(spearmanr(pred, true).statistic), "mae_qa": float(np.mean(np.abs(pred - true))),
                     "rho_top10": float(spearmanr(top, true).statistic),
                     "mae_top10": float(np.mean(np.abs(np.clip(slope * top + intercept, 0, 1) - true)))})
        log(f"split {s}: held out {sorted(held)} ({len({lab.query for lab in test})} queries, {len(test)} labels): ρ {rows[-1]['rho_qa']:.3f} vs {rows[-1]['rho_top10']:.3f}")
    return rows, heads


# --- enhancers ------------------------------------------------------------------------------------
def by_name(name: str) -> Variant:
    return next(v for v in VARIANTS if str(v) == name)


def degrader(name: str):
    chosen = by_name(name)
    return lambda image, seed: degrade(image, chosen.name, seed=seed, **dict(chosen.params))


def train_images(dataset, held: set[str], count: int, seed: int = 0) -> list[Image.Image]:
    """Dataset images that are neither queries nor positives/junk of the held-out landmarks."""
    excluded = {q.image for q in dataset.queries}
    for q in dataset.queries:
        if q.group in held:
            excluded |= set(q.positives) | set(q.junk)
    names = [n for n in dataset.images if n not in excluded]
    chosen = np.random.default_rng(seed).choice(len(names), min(count, len(names)), replace=False)
    return [load_image(dataset.image_path(names[i]), max_side=MAX_SIDE) for i in sorted(chosen)]


def train_enhancers(name: str, images, net: QualityNet, settings: Settings, seed: int = 0):
    """DnCNN (MSE), its QA fine-tuned copy, and a feature adapter trained on DnCNN outputs."""
    hurt = degrader(name)
    mse = DnCNN(*CPU)
    noisy, clean = make_pairs(images, hurt, settings.mse_pairs, 40, seed)
    losses = train_mse(mse, noisy, clean, epochs=settings.mse_epochs, seed=seed)
    qa = DnCNN(*CPU)
    qa.load_state_dict(mse.state_dict())
    noisy, clean = make_pairs(images, hurt, settings.qa_pairs, PATCH, seed + 1)
    qa_losses = finetune_qa(qa, net, noisy, clean, epochs=settings.qa_epochs, seed=seed)
    degraded, _ = make_pairs(images, hurt, settings.fa_patches, PATCH, seed + 2)
    with torch.no_grad():  # the DnCNN's output patches, as uint8 like a photo
        patches = mse(to_tensor(degraded)).clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    adapter = FeatureAdapter(int(net.backbone.out_channels))
    fa_losses = train_feature_adaptation(adapter, net, patches, epochs=settings.fa_epochs, seed=seed)
    log(f"{name}: MSE {losses[0]:.4f}→{losses[-1]:.4f}, QA loss {qa_losses[-1]:.3f}, FA loss {fa_losses[0]:.3f}→{fa_losses[-1]:.3f}")
    return mse.eval(), qa.eval(), adapter.eval()


def bm3d_denoise(image: Image.Image, sigma: float) -> Image.Image | None:
    try:
        import bm3d  # optional, benchmark only (its licence forbids shipping it)
    except ImportError:
        return None
    pixels = np.asarray(image, np.float32) / 255.0
    return Image.fromarray(np.clip(bm3d.bm3d(pixels, sigma / 255.0) * 255, 0, 255).astype(np.uint8))


def part_b(index, dataset, labels, held: set[str], head: QualityHead, settings: Settings, seed: int = 0):
    """Per degradation and method, the held-out queries' mAP (in %)."""
    net = QualityNet(head).eval()
    judged = query_rows(index, dataset)
    order = seeds(dataset)
    test = spread(sorted({lab.query for lab in labels if lab.group in held}), settings.enhance_queries)
    ap_of = {(lab.query, lab.variant): lab.ap for lab in labels}
    images = train_images(dataset, held, settings.train_images, seed)
    extractor = Extractor(index.spec)
    whiten = index.pipeline.encoder.whiten
    clean_ap = [ap_of[(q, "clean")] for q in test]
    table, enhancers = {}, {}
    for name, label, sigma in ENHANCE:
        start = time.perf_counter()
        mse, qa, adapter = train_enhancers(name, images, net, settings, seed)
        enhancers[name] = qa
        row: dict[str, float | None] = {"clean": mean(clean_ap), "degraded": mean([ap_of[(q, name)] for q in test])}
        aps: dict[str, list[float]] = {k: [] for k in ("nl_means", "bm3d", "dncnn", "dncnn_qa", "feature_adaptation")}
        for q in test:
            positives, junk = judged[q]
            original = load_image(dataset.image_path(q), max_side=MAX_SIDE)
            hurt = by_name(name).apply(original, seed=order[q])  # the same noise as its label
            if sigma is not None:
                aps["nl_means"].append(ranking_ap(index.pipeline, nl_means(hurt, sigma), positives, junk)[0])
                denoised = bm3d_denoise(hurt, sigma)
                if denoised is not None:
                    aps["bm3d"].append(ranking_ap(index.pipeline, denoised, positives, junk)[0])
            enhanced = enhance_image(mse, hurt)
            aps["dncnn"].append(ranking_ap(index.pipeline, enhanced, positives, junk)[0])
            aps["dncnn_qa"].append(ranking_ap(index.pipeline, enhance_image(qa, hurt), positives, junk)[0])
            vector = adapted_vector(extractor, adapter, enhanced, whiten)
            _, rows = index.search_vectors(vector[None, :], index.size)
            aps["feature_adaptation"].append(average_precision([int(r) for r in rows[0] if r >= 0], positives, junk))
        row.update({k: mean(v) if v else None for k, v in aps.items()})
        table[label] = row
        log(f"{label}: {json.dumps({k: None if v is None else round(v, 1) for k, v in row.items()})} "
            f"({time.perf_counter() - start:.0f} s)")
    return table, enhancers, test


def seeds(dataset) -> dict[str, int]:
    """The degradation seed of each query image: its position among the queries, as labelling used."""
    return {q.image: i for i, q in enumerate(dataset.queries)}


def spread(items: list[str], count: int) -> list[str]:
    """``count`` items evenly spread over the list (all when it is short)."""
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def auto_rows(index, dataset, labels, held: set[str], head: QualityHead, enhancers: dict, test: list[str], seed: int = 0):
    """``--enhance auto`` on the held-out clean queries and each degraded set: mAP and how many changed."""
    clean_aps = [lab.ap for lab in labels if lab.variant == "clean" and lab.group not in held and not math.isnan(lab.ap)]
    model = QualityModel(head, target_of(index), LOW_SHARE * float(np.mean(clean_aps)))
    kinds = {"denoise": enhancers["noise:sigma=50"], "sr": enhancers["downsample:factor=4"]}
    judged = query_rows(index, dataset)
    ap_of = {(lab.query, lab.variant): lab.ap for lab in labels}
    order = seeds(dataset)
    out = {}
    for name in AUTO_SETS:
        aps, changed = [], 0
        for q in test:
            image = by_name(name).apply(load_image(dataset.image_path(q), max_side=MAX_SIDE), seed=order[q])
            choice = choose(image, "auto", model, kinds)
            if choice.applied == "none":
                aps.append(ap_of[(q, name)])
            else:
                changed += 1
                aps.append(ranking_ap(index.pipeline, choice.image, *judged[q])[0])
        out[name] = {"auto": mean(aps), "none": mean([ap_of[(q, name)] for q in test]), "changed": changed, "n": len(test)}
    return out


def mean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return 100.0 * float(np.mean(kept)) if kept else math.nan


# --- output ---------------------------------------------------------------------------------------
def print_a(rows: list[dict]) -> None:
    print("\n(a) Predicted vs true AP on held-out landmarks (landmark-disjoint 80/20 splits × 5; "
          f"{min(r['n'] for r in rows)}–{max(r['n'] for r in rows)} labelled held-out query variants per split)\n")
    print("| predictor | Spearman ρ (mean ± sd) | MAE (mean ± sd) |")
    print("|---|---|---|")
    for key, label in (("qa", "quality net (frozen Lite0 + 5 FC, MAE on patches)"),
                       ("top10", "training-free: mean of the top-10 scores (MAE after a line fitted on train)")):
        rho = np.array([r[f"rho_{key}"] for r in rows])
        mae = np.array([r[f"mae_{key}"] for r in rows])
        print(f"| {label} | {rho.mean():.3f} ± {rho.std():.3f} | {mae.mean():.3f} ± {mae.std():.3f} |")


def print_b(table: dict, auto: dict, n: int, split: int) -> None:
    where = f"split {split}" if split >= 0 else "all enhanced splits (query-weighted: the mAP over their queries)"
    print(f"\n(b) mAP (%) of {n} held-out queries of {where} (whole images, whole index)\n")
    cols = ["clean", "degraded", "nl_means", "bm3d", "dncnn", "dncnn_qa", "feature_adaptation"]
    names = ["clean", "degraded", "NL-means", "BM3D", "DnCNN (MSE)", "DnCNN-QA", "feature adapt."]
    print("| degradation | " + " | ".join(names) + " | --enhance auto |")
    print("|---" * (len(names) + 2) + "|")
    keys = {label: name for name, label, _ in ENHANCE}
    for label, row in table.items():
        cells = ["—" if row.get(c) is None else f"{row[c]:.1f}" for c in cols]
        a = auto.get(keys[label])
        shown = f"{a['auto']:.1f} ({a['changed']}/{a['n']} enhanced)" if a else "not run"
        print(f"| {label} | " + " | ".join(cells) + f" | {shown} |")


def print_b_combined(tables: list) -> None:
    """(b) over every enhanced split: each cell the query-weighted mean of the splits' mAPs, i.e. the
    mAP over all their held-out queries (each query is held out in exactly one split)."""
    total = sum(n for _, _, n in tables)
    merged: dict = {}
    for table, _, n in tables:
        for label, row in table.items():
            for column, value in row.items():
                if value is not None:
                    cell = merged.setdefault(label, {}).setdefault(column, [0.0, 0])
                    cell[0] += n * value
                    cell[1] += n
    combined = {label: {c: (v / m if m == total else None) for c, (v, m) in row.items()} for label, row in merged.items()}
    auto: dict = {}
    for _, rows, _n in tables:
        for key, a in rows.items():
            if key != "clean":
                cell = auto.setdefault(key, {"auto": 0.0, "changed": 0, "n": 0})
                cell["auto"] += a["n"] * a["auto"]
                cell["changed"] += a["changed"]
                cell["n"] += a["n"]
    auto = {k: {**a, "auto": a["auto"] / a["n"]} for k, a in auto.items() if a["n"]}
    print_b(combined, auto, total, -1)
    clean = [rows["clean"] for _, rows, _ in tables]
    n = sum(c["n"] for c in clean)
    print(f"\n--enhance auto on all {n} clean held-out queries: mAP {sum(c['n'] * c['none'] for c in clean) / n:.1f} → "
          f"{sum(c['n'] * c['auto'] for c in clean) / n:.1f} ({sum(c['changed'] for c in clean)} enhanced)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/oxford5k_subset")
    parser.add_argument("--index", type=Path, default=Path("bench-out/oxford5k_subset"))
    parser.add_argument("--work", type=Path, default=Path("bench-out/degraded"))
    parser.add_argument("--enhance-splits", type=int, default=1)
    parser.add_argument("--enhance-queries", type=int, default=Settings.enhance_queries,
                        help="held-out queries of each enhanced split that (b) uses (evenly spread)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 12 queries, tiny training")
    args = parser.parse_args()
    start = time.perf_counter()
    settings = Settings() if not args.quick else Settings(head_epochs=10, mse_pairs=200, mse_epochs=1, qa_pairs=16,
                                                          fa_patches=16, fa_epochs=2, train_images=6, queries=12,
                                                          enhance_queries=2)
    if not args.quick:
        settings.enhance_queries = args.enhance_queries
    dataset = load_dataset(args.data)
    index = open_index(args.index) if args.index.exists() else build_index(dataset_paths(dataset), args.index)
    queries = [q.image for q in dataset.queries]
    if settings.queries:  # quick: a spread of queries over the landmarks
        queries = queries[:: max(1, len(queries) // settings.queries)][: settings.queries]
    net = QualityNet().eval()
    labels = cached_labels(index, dataset, net, args.work, queries)
    splits = folds([lab.group for lab in labels])
    rows, heads = part_a(labels, splits, settings)
    print_a(rows)
    sys.stdout.flush()
    auto_all: dict = {}
    tables = []
    for s in range(min(args.enhance_splits, len(splits))):
        table, enhancers, test = part_b(index, dataset, labels, splits[s], heads[s], settings, seed=s)
        auto_all = auto_rows(index, dataset, labels, splits[s], heads[s], enhancers, test, seed=s)
        tables.append((table, auto_all, len(test)))
        print_b(table, auto_all, len(test), s)
        c = auto_all["clean"]
        print(f"\n--enhance auto on the {c['n']} clean held-out queries: mAP {c['none']:.1f} → {c['auto']:.1f} "
              f"({c['changed']} enhanced)")
    if len(tables) > 1:
        print_b_combined(tables)
    d, ch = CPU
    print(f"\nReductions (2-core CPU, measured under shared load, {time.perf_counter() - start:.0f} s): DnCNN {d} layers × "
          f"{ch} channels (paper: 17 × 64; default_size() here: {default_size()}); DnCNN trained on {settings.mse_pairs} "
          f"40-px pairs × {settings.mse_epochs} epochs from {settings.train_images} images outside the held-out landmarks; "
          f"QA fine-tuning {settings.qa_pairs} 128-px pairs × {settings.qa_epochs} epoch (λ = 100); feature adaptation = "
          f"residual 1×1 conv on the last feature map ({settings.fa_patches} patches × {settings.fa_epochs} epochs, λ = 10); "
          f"quality patches 128 px on the 640-px query; (b) on ≤ {settings.enhance_queries} held-out queries of each of "
          f"{len(tables)} split(s) (evenly spread); --enhance auto with the σ = 50 denoiser and the ×4 SR network, on clean, σ = 50 and ×4 only; "
          f"NL-means given the true σ"
          + ("; BM3D not installed" if bm3d_denoise(Image.new("RGB", (8, 8)), 1.0) is None else ""))
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / ("results-quick.json" if args.quick else "results.json")).write_text(
        json.dumps({"a": rows, "b": [t for t, _, _ in tables], "auto": auto_all}, indent=1, default=str))


if __name__ == "__main__":
    main()
