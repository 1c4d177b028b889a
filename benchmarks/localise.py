"""Visual localisation on real posed photos: a single global descriptor against GHarm late fusion.

The fusion question of the Kapture localisation paper (Humenberger et al. 2020, P1c), answered on
../shared/data/strecha_posed (castle-P19: 13 map images, 6 queries; castle-P30: 20 map, 10 queries;
the split of each scene's split.json). Per scene, built once into --work and reused by later runs:

* the default-preset index over the map images, plus the classic kinds ``densevlad`` and ``asmk``
  with their default parameters, learned on those images (ASMK reduces its 65,536 words to what the
  collection's RootSIFT supports: 1,024 words on castle-P19, 2,048 on castle-P30);
* the map: RootSIFT, mapping pairs from the cnn descriptor (top-10), epipolar-verified matches and
  triangulation with the known poses (``matchlens map``).

Then, for each condition × retrieval × top-k, every query is localised with its true intrinsics
(``matchlens eval-loc``): retrieve the top-k map images, match RootSIFT, PnP + RANSAC (config1).

* conditions: ``clean`` (the photo) and ``night`` (:func:`matchlens.io.degrade.night`: darkened with
  gain 0.3 and gamma 1.8, sodium-light colour cast, noise σ = 8; seed = the query's position in the
  split), made in memory; the map stays the daylight one;
* retrievals: ``cnn`` (the index's global descriptor), ``cnn+densevlad:ghm`` and ``cnn+asmk:ghm``
  (generalised harmonic mean of min-max normalised scores), and the single kinds ``densevlad`` and
  ``asmk``;
* a k at or above the map's image count matches every map image whatever the retrieval, so those
  rows are computed once per condition and shown for every retrieval (marked ``*``).

Per row: the share of queries within (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°) (a failure is outside
all), median errors (inf when more than half fail), queries localised, how often the map camera
nearest the query (camera centre distance) is among the top-k retrieved, and wall ms per query
(feature extraction, retrieval, matching and PnP; map features preloaded, encoders warmed up). One
baseline row per condition and retrieval gives the pose of the top-1 retrieved map image instead
(its nearest column: the top-1 is the nearest map camera). Per-query results (poses, errors, failure
reasons, retrieved images) go to WORK/SCENE/results.json.

    python benchmarks/localise.py [--scenes castle-P19 castle-P30] [--work bench-out/localise]
                                  [--k 5 10 20] [--conditions clean night] [--retrievals ...] [--markdown]
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
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image

import matchlens
from matchlens.classic import encode_kind, kind_names
from matchlens.cli import progress_factory
from matchlens.extract.hardware import cpu_threads
from matchlens.io.degrade import degrade
from matchlens.io.images import load_image
from matchlens.localize.cameras import PosedCamera, read_cameras_json
from matchlens.localize.evaluation import LocEvaluation, evaluate_localization
from matchlens.localize.localizer import Localizer
from matchlens.localize.mapping import MapSettings, build_map
from matchlens.localize.mapstore import SceneMap, load_map

ROOT = Path(__file__).resolve().parents[1]
SCENES = ("castle-P19", "castle-P30")
KINDS = ("densevlad", "asmk")
RETRIEVALS = ("cnn", "cnn+densevlad:ghm", "cnn+asmk:ghm", "densevlad", "asmk")
CONDITIONS = ("clean", "night")
THRESHOLDS = ("0.25m,2.0deg", "0.5m,5.0deg", "5.0m,10.0deg")
HEADER = ("scene", "condition", "retrieval", "k", "% (0.25 m, 2°)", "% (0.5 m, 5°)", "% (5 m, 10°)",
          "median pos (m)", "median rot (°)", "localised", "nearest in top-k (%)", "ms/query")


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Scene:
    """One prepared scene: its index and map, the ground truth and the query images."""

    name: str
    index: matchlens.Index
    map: SceneMap
    truth: dict[str, PosedCamera]
    queries: list[tuple[str, Image.Image]]


def open_or_build_index(folder: Path, paths: list[str]) -> matchlens.Index:
    """The default-preset index of the map images (reused when present) with the classic kinds."""
    index = matchlens.open_index(folder) if folder.exists() else matchlens.build_index(paths, folder)
    present = set(kind_names(index))
    for kind in KINDS:
        if kind not in present:
            log(f"{folder}: encoding {kind} (default parameters)")
            with progress_factory() as progress:
                encode_kind(index, kind, progress=progress)
    return matchlens.open_index(folder)


def open_or_build_map(folder: Path, index: matchlens.Index, images: Path, truth: dict[str, PosedCamera],
                      names: list[str], contrast: str) -> SceneMap:
    """The scene's map (pairs from cnn, top-10; SIFT after ``contrast``), built once."""
    if (folder / "manifest.json").is_file():
        return load_map(folder)
    log(f"building the map {folder}")
    with progress_factory() as progress:
        return build_map(index, images, truth, folder, MapSettings(k=10, contrast=contrast), names=names, replace=True,
                         progress=progress)


def prepare(data: Path, name: str, work: Path, contrast: str) -> Scene:
    """Index, kinds and map of one scene (built once under ``work``), and its query images."""
    root = data / "strecha_posed" / name
    split = json.loads((root / "split.json").read_text())
    truth = read_cameras_json(root / "cameras.json")
    index = open_or_build_index(work / name / "index", [str(root / "images" / n) for n in split["map"]])
    scene_map = open_or_build_map(work / name / f"map-{contrast}", index, root / "images", truth, list(split["map"]),
                                  contrast)
    queries = [(n, load_image(root / "images" / n)) for n in split["queries"]]
    return Scene(name, index, scene_map, truth, queries)


def condition_images(scene: Scene, condition: str) -> list[tuple[str, Image.Image]]:
    """The queries as seen under ``condition`` (``clean`` or a degradation name; seed = query position)."""
    if condition == "clean":
        return scene.queries
    return [(n, degrade(image, condition, seed=i)) for i, (n, image) in enumerate(scene.queries)]


def localizers(scene: Scene, retrievals: list[str]) -> dict[str, Localizer]:
    """One localiser per retrieval, sharing the preloaded map features, each encoder warmed up."""
    shared = {i: scene.map.image_features(i) for i in range(len(scene.map.images))}
    found = {}
    for retrieval in retrievals:
        localizer = Localizer(scene.map, scene.index, fuse=None if retrieval == "cnn" else retrieval)
        localizer._features = shared  # the map's RootSIFT, read from disk once (not part of any timing)
        localizer.searcher.search(scene.queries[0][1], k=1)  # load models and search data
        found[retrieval] = localizer
    return found


def nearest_map_camera(scene: Scene, name: str) -> str:
    """The map image whose camera centre is nearest the query's true centre."""
    centre = scene.truth[name].C
    return min(scene.map.cameras, key=lambda m: float(np.linalg.norm(scene.map.cameras[m].C - centre)))


def run(localizer: Localizer, k: int, queries: list[tuple[str, Image.Image]], scene: Scene) -> tuple[LocEvaluation, float]:
    """(evaluation at top-k, wall ms per query)."""
    localizer.k = k
    clock = time.perf_counter()
    # localize() takes a decoded image as well as a path: the degraded queries never touch the disk
    evaluation = evaluate_localization(localizer, queries, scene.truth, known_intrinsics=True)  # type: ignore[arg-type]
    return evaluation, 1000 * (time.perf_counter() - clock) / len(queries)


def nearest_share(evaluation: LocEvaluation, scene: Scene, top: int) -> float:
    """% of queries whose nearest map camera is among the first ``top`` retrieved images."""
    hits = [nearest_map_camera(scene, o.result.query) in o.result.retrieved[:top] for o in evaluation.outcomes]
    return 100.0 * sum(hits) / len(hits)


def row(scene: Scene, condition: str, retrieval: str, k: str, summary: dict[str, float], nearest: float,
        ms: float | None) -> dict[str, Any]:
    """One table row as a dict (numbers kept for JSON)."""
    return {"scene": scene.name, "condition": condition, "retrieval": retrieval, "k": k,
            **{t: summary[t] for t in THRESHOLDS}, "median_position": summary["median_position"],
            "median_rotation": summary["median_rotation"], "localised": int(summary["localised"]),
            "queries": int(summary["queries"]), "nearest": nearest, "ms": ms}


def evaluate_scene(scene: Scene, conditions: list[str], retrievals: list[str], ks: list[int]
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The table rows of one scene and its per-query results."""
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    found = localizers(scene, retrievals)
    size = len(scene.map.images)
    for condition in conditions:
        queries = condition_images(scene, condition)
        every: tuple[LocEvaluation, float] | None = None  # the run with k >= map size (same for all retrievals)
        for retrieval in retrievals:
            for k in ks:
                if k >= size and k != ks[0] and every is not None:
                    evaluation, ms = every
                else:
                    log(f"{scene.name} {condition} {retrieval} k={k}")
                    evaluation, ms = run(found[retrieval], k, queries, scene)
                    every = (evaluation, ms) if k >= size else every
                label = f"{k}*" if k >= size else str(k)
                rows.append(row(scene, condition, retrieval, label, evaluation.summary["matchlens"],
                                nearest_share(evaluation, scene, k), ms))
                details[f"{condition}/{retrieval}/k={k}"] = evaluation.to_dict()
                if k == ks[0]:
                    base = row(scene, condition, f"top-1 retrieved pose ({retrieval})", "1",
                               evaluation.summary["top-1 retrieved pose"], nearest_share(evaluation, scene, 1), None)
            rows.append(base)
    return rows, details


def fmt(value: float | None, digits: int) -> str:
    """A number, ``inf`` or ``-``."""
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def cells(r: dict[str, Any]) -> list[str]:
    """The printed cells of one row."""
    return [r["scene"], r["condition"], r["retrieval"], r["k"], *(fmt(r[t], 0) for t in THRESHOLDS),
            fmt(r["median_position"], 3), fmt(r["median_rotation"], 2), f"{r['localised']}/{r['queries']}",
            fmt(r["nearest"], 0), fmt(r["ms"], 0)]


def print_table(rows: list[dict[str, Any]], markdown: bool) -> None:
    """The rows as a markdown table or an aligned text table."""
    table = [list(HEADER)] + [cells(r) for r in rows]
    if markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---|" * len(HEADER))
        for line in table[1:]:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    for line in table:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--work", default="bench-out/localise")
    parser.add_argument("--scenes", nargs="+", default=list(SCENES))
    parser.add_argument("--k", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS),
                        help="clean and/or degradation names of matchlens.io.degrade (night, low_light, ...)")
    parser.add_argument("--retrievals", nargs="+", default=list(RETRIEVALS))
    parser.add_argument("--markdown", action="store_true", help="print README-ready markdown tables")
    parser.add_argument("--contrast", default="clahe", help="grayscale normalisation before SIFT (map and queries)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    data, work, ks = Path(args.data), Path(args.work), sorted(set(args.k))
    for name in args.scenes:
        scene = prepare(data, name, work, args.contrast)
        rows, details = evaluate_scene(scene, args.conditions, args.retrievals, ks)
        (work / name / f"results-{args.contrast}.json").write_text(json.dumps({"rows": rows, "queries": details}, indent=1))
        print(f"\n{name} (contrast {args.contrast}): {len(scene.map.images)} map images, {len(scene.queries)} queries, "
              f"{scene.map.manifest['counts']['points']:,} map points; * k >= map size: every retrieval "
              "matches all map images (computed once per condition)\n")
        print_table(rows, args.markdown)
    print(f"\n{cpu_threads()} cores; wall time {time.perf_counter() - started:.0f} s; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
