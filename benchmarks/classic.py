"""Classic local-feature retrieval and late fusion: mAP, index size and ms/query.

On ../shared/data/oxford5k_subset (the 10 official queries cropped to their boxes, and all 114
whole-image queries) and ukbench_subset (56 queries, mAP and N-S), for the CNN default (preset
rmac-ms), RootSIFT BoW, VLAD, DenseVLAD, ASMK*, and fusions of the CNN with them. Indexes, local
features and codebooks are built once into --work (reused by later runs). ukbench_subset has
only 56 images (~100k descriptors): its BoW and ASMK codebooks have 4,096 words instead of the
default 65,536.

    python benchmarks/classic.py [--work bench-out/classic] [--data ../shared/data]
                                 [--kinds bow vlad densevlad asmk] [--fusions EXPR ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matchlens
from matchlens.classic import encode_kind, kind_names, list_kinds
from matchlens.classic.features import LocalFeatureStore
from matchlens.cli import progress_factory
from matchlens.evaluate.protocol import evaluate_index
from matchlens.pipeline import SearchPipeline
from matchlens.io.formats import load_dataset

KINDS = ["bow", "vlad", "densevlad", "asmk"]
FUSIONS = [
    "cnn+bow:ghm", "cnn+vlad:ghm", "cnn+densevlad:ghm", "cnn+asmk:ghm",
    "cnn+asmk:mean_power", "cnn+asmk:min_max", "cnn+asmk:min", "cnn+asmk:max", "cnn+asmk:mean",
    "cnn+asmk:round_robin", "cnn+asmk:ghm:norm=rank", "cnn+asmk:ghm:norm=none",
    "cnn+bow+asmk:ghm", "cnn+bow+asmk:mean_power", "cnn+bow+vlad+asmk:ghm",
]
# ukbench_subset is too small for 65k words: same methods, smaller codebooks.
SMALL_SET_PARAMS = {"bow": {"k": 4096, "sample": 200_000}, "asmk": {"k": 4096, "sample": 200_000}}
SETS = {"oxford5k_subset": ("full", "cropped"), "ukbench_subset": ("full",)}


def uptime() -> str:
    """The load line of ``uptime`` (the machine is shared: timings depend on it)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def build(data: Path, name: str, work: Path, kinds: list[str]) -> matchlens.Index:
    """The default-preset index of a shared set plus the classic kinds (built once, then reused)."""
    dataset = load_dataset(data / name)
    index = matchlens.build_index([str(dataset.image_path(n)) for n in dataset.images], work / name)
    present = set(kind_names(index))
    with progress_factory() as progress:
        for kind in kinds:
            params = SMALL_SET_PARAMS.get(kind, {}) if len(dataset.images) < 500 else {}
            if kind not in present:
                encode_kind(index, kind, params=params or None, progress=progress)
    return index


def evaluate(index, dataset, protocol: str, fusion: str) -> tuple[dict, float, float]:
    """(summary, cold ms/query, warm ms/query): cold includes the query's feature extraction
    (CNN and/or local features), warm is a second pass with the features memoised."""
    searcher = SearchPipeline(index.store, fuse=fusion)  # a fresh query encoder: nothing memoised
    LocalFeatureStore._query_memo.clear()
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        evaluation = evaluate_index(searcher, dataset, protocol)
        times.append(1000 * (time.perf_counter() - t0) / max(1, len(evaluation.outcomes)))
    return evaluation.summary, times[0], times[1]


def sizes(index) -> dict[str, dict[str, float]]:
    """Bytes per image stored for each kind, the fixed model size, and the local-feature cache."""
    gen = index.root / index.generation
    cnn = sum((gen / f).stat().st_size for f in ("vectors.npy", "descriptors.npy") if (gen / f).exists())
    out = {"cnn": {"per_image": cnn / index.size, "model": 0}}
    for info in list_kinds(index):
        out[info.name] = {"per_image": info.bytes_per_image, "model": info.model_bytes,
                          "build_s": info.build_seconds, "train_s": info.train_seconds}
    cache = index.root / "cache" / "local_features"
    files = [p for p in cache.rglob("*.npz") if "n2000" in p.name] if cache.is_dir() else []
    out["local_features"] = {"per_image": sum(p.stat().st_size for p in files) / max(index.size, 1), "model": 0}
    return out


def whitening_sweep(index, dataset, kind: str, dims=(64, 128, 512), powers=(0.0, 0.25, 0.5)) -> list[tuple]:
    """mAP of whole-image queries for a VLAD kind under several PCA dims and whitening powers.

    The whole-image queries of oxford5k_subset are database images, so their stored codes stand in
    for the query codes (the query path would recompute the same features); only the whitening,
    learned on the collection's own VLADs, changes between cells."""
    import numpy as np

    from matchlens.classic.kinds import _load_codes, _read_current, kinds_root
    from matchlens.evaluate.protocol import query_metrics
    from matchlens.whitening import PCAWhitening

    folder = kinds_root(index) / kind
    codes, _ = _load_codes(folder / _read_current(folder)["built"])
    raw = np.asarray(codes.arrays["vlad"], np.float32)
    by_path = {str(Path(dataset.image_path(n)).resolve()): n for n in dataset.images}
    names = [by_path[index.entry_for_row(r).path] for r in range(index.size)]
    row_of = {n: i for i, n in enumerate(names)}

    def mean_ap(x):
        aps = []
        for q in dataset.queries:
            ranking = [names[i] for i in np.argsort(-(x @ x[row_of[q.image]]), kind="stable")]
            aps.append(query_metrics(q, ranking)["AP"])
        return 100 * float(np.nanmean(aps))

    rows = [(kind, "none (L2 VLAD)", "-", mean_ap(raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)))]
    for dim in dims:
        for power in powers:
            rows.append((kind, dim, power, mean_ap(PCAWhitening(dim=dim, power=power).fit(raw).transform(raw))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--work", default="bench-out/classic")
    parser.add_argument("--kinds", nargs="*", default=KINDS)
    parser.add_argument("--fusions", nargs="*", default=FUSIONS)
    args = parser.parse_args()
    data, work = Path(args.data), Path(args.work)
    load_before = uptime()
    print(f"start: {load_before}", file=sys.stderr, flush=True)
    rows: dict[str, dict] = {}
    size_table = {}
    for name, protocols in SETS.items():
        dataset = load_dataset(data / name)
        index = build(data, name, work, args.kinds)
        size_table[name] = sizes(index)
        for method in ["cnn", *args.kinds, *args.fusions]:
            if any(k not in ["cnn", *kind_names(index)] for k in method.split(":")[0].split("+")):
                continue
            for protocol in protocols:
                summary, cold, warm = evaluate(index, dataset, protocol, method)
                rows.setdefault(method, {})[f"{name}/{protocol}"] = {**summary, "ms_cold": cold, "ms_warm": warm}
                ns = summary.get("N-S", float("nan"))
                print(method, name, protocol, f"mAP {summary['mAP']:.2f}", f"N-S {ns:.2f}",
                      f"{cold:.0f}/{warm:.0f} ms", file=sys.stderr, flush=True)
    load_after = uptime()
    ox_data, ox_index = load_dataset(data / "oxford5k_subset"), matchlens.open_index(work / "oxford5k_subset")
    sweep = [row for kind in ("vlad", "densevlad") if kind in kind_names(ox_index)
             for row in whitening_sweep(ox_index, ox_data, kind)]
    (work / "results.json").write_text(json.dumps({"rows": rows, "sizes": size_table, "load_before": load_before,
                                                   "load_after": load_after, "whitening_sweep": sweep}, indent=1))
    print_table(rows, size_table, load_before, load_after)
    if sweep:
        print("\nVLAD whitening learned on oxford5k_subset's own VLADs (whole-image queries; power 0 = PCA only, "
              "0.5 = full whitening):\n")
        print("| kind | PCA dim | whitening power | Oxford whole mAP |")
        print("|---|---|---|---|")
        for kind, dim, power, value in sweep:
            print(f"| {kind} | {dim} | {power} | {value:.1f} |")


def print_table(rows: dict, size_table: dict, load_before: str, load_after: str) -> None:
    ox = size_table["oxford5k_subset"]
    print(f"\nmAP in %; UKBench N-S in 0-4; bytes/image = what the index stores per image for that kind on "
          f"oxford5k_subset (in brackets: fixed size of codebooks and whitening); ms/query on oxford5k_subset whole-image queries: "
          f"cold = with the query's feature extraction, warm = features memoised (search + fusion only).\n"
          f"load: {load_before} -> {load_after}\n")
    print("| method | Oxford whole (114 q) | Oxford cropped (10 q) | UKBench mAP | UKBench N-S | bytes/image | "
          "ms/query cold | ms/query warm |")
    print("|---|---|---|---|---|---|---|---|")
    for method, cells in rows.items():
        def get(key, metric, cells=cells):  # bound now (it is only called in this iteration anyway)
            value = cells.get(key, {}).get(metric)
            return "-" if value is None else f"{value:.2f}" if metric == "N-S" else f"{value:.1f}"
        kinds = method.split(":")[0].split("+")
        size = sum(ox.get(k, {}).get("per_image", 0) for k in kinds)
        model = sum(ox.get(k, {}).get("model", 0) for k in kinds)
        size_text = f"{size / 1024:.1f} KiB" + (f" (+{model / 2**20:.1f} MiB)" if model else "")
        whole = cells.get("oxford5k_subset/full", {})
        print(f"| {method} | {get('oxford5k_subset/full', 'mAP')} | {get('oxford5k_subset/cropped', 'mAP')} | "
              f"{get('ukbench_subset/full', 'mAP')} | {get('ukbench_subset/full', 'N-S')} | {size_text} | "
              f"{whole.get('ms_cold', float('nan')):.0f} | {whole.get('ms_warm', float('nan')):.0f} |")
    lf = ox["local_features"]["per_image"]
    print(f"\nlocal features (RootSIFT, <= 2000 keypoints, uint8) cached per image: {lf / 1024:.0f} KiB "
          "(shared by BoW, VLAD, ASMK and spatial verification; needed only to encode new images).")


if __name__ == "__main__":
    main()
