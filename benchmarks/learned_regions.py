"""Rigid vs learned R-MAC regions (Gordo et al., "002") on oxford5k_subset's held-out landmarks.

The embedded Lite0 backbone stays frozen; its feature maps at ``--max-side`` (320) are computed
once. The learned-region head (:mod:`matchlens.pooling.proposals`) is trained without labels on
the images of the OTHER landmarks and the distractors (the ``--holdout`` landmarks are never
seen): candidate pairs are each image's ``--knn`` nearest neighbours by rigid R-MAC, a pair is
positive when RootSIFT + MAGSAC verifies it, and the bounding boxes of its inliers
(:mod:`matchlens.train.inlier_boxes`) are the head's box targets; negatives are the hardest
rigid-R-MAC neighbours outside the positive's verified component. Each variant trains for
``--budget`` process CPU seconds on one thread:

* ``learned (RPN + triplet)``: objectness/box loss on the inlier boxes + triplet loss through the
  soft-masked, GeM-pooled, summed, L2-normalised descriptor;
* ``learned (RPN only)``: the head trained on the boxes alone (Gordo's separate RPN stage);
* ``learned (triplet only)``: no box supervision.

The pairs, boxes, tuples and training loop are the library's (:mod:`matchlens.train.learned_regions`,
what ``matchlens train-regions`` runs). ``--pipeline`` adds the whole user path as rows:
``matchlens index`` (rigid R-MAC, one scale at ``--max-side``, no whitening) → ``train-regions``
on that index without the held-out landmarks' images → ``matchlens index --pooling learned-rmac
--pooling-params head=FILE`` → mAP of that index's stored vectors.

All rows pool the same frozen map: ``rigid R-MAC`` is the library's ``rmac`` pooling (MAC),
``rigid grid, GeM`` the same grid pooled like the learned regions (GeM p=3, hard masks), so
the difference between the last rows is the regions alone. mAP (revisitop AP, the query image
and the junk ignored) is over the whole-image queries of the held-out landmarks, searched in
all 1,009 images (columns as ``benchmarks/p4grid.py``).

    python benchmarks/learned_regions.py [--data ../shared/data] [--work bench-out/learned_regions]
        [--budget 180] [--k 16] [--knn 10] [--holdout radcliffe_camera,all_souls,ashmolean,bodleian]
        [--variants rpn+triplet,rpn,triplet] [--seed 0] [--pipeline]

Feature maps and RootSIFT features are cached in --work (verification reruns, about a minute).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from p4grid import HOLDOUT, COLUMNS, column_maps, log  # benchmarks/ is the script's folder

from matchlens.evaluate.protocol import dataset_paths
from matchlens.io.formats import load_dataset

VARIANTS = {"rpn+triplet": (1.0, True), "rpn": (1.0, False), "triplet": (0.0, True)}


def feature_maps(paths: list[str], side: int, work: Path) -> list:
    """The frozen Lite0 map (C, H, W) of every image at ``side`` px, cached as float16."""
    import torch

    from matchlens.models import load_backbone
    from matchlens.train.model import ImageStore, RetrievalNet

    cache = work / f"fmaps-{side}.pt"
    if cache.is_file():
        return [m.float() for m in torch.load(cache)]
    net = RetrievalNet(load_backbone("tf_efficientnet_lite0")).eval()
    store = ImageStore(side)
    start, maps = time.monotonic(), []
    with torch.no_grad():
        for path in paths:
            x = store.tensor(path).unsqueeze(0).float() / 255.0
            maps.append(net.backbone((x - net.mean) / net.std)[0].half())
    torch.save(maps, cache)
    log(f"feature maps of {len(paths)} images in {time.monotonic() - start:.0f} s")
    return [m.float() for m in maps]


def training_pairs(train: list[int], paths: list[str], rigid: np.ndarray, knn: int, work: Path):
    """Verified kNN pairs among ``train`` (ids into ``paths``) with their inlier boxes (the library's)."""
    from matchlens.train.learned_regions import verified_training_boxes

    start = time.monotonic()
    keys = [hashlib.sha256(Path(paths[i]).read_bytes()).hexdigest() for i in train]
    found, candidates = verified_training_boxes([paths[i] for i in train], keys, rigid[train], knn,
                                                work / "local_features")
    log(f"{len(found.pairs)} of {candidates} kNN pairs verified, {len(found.boxes)} images with boxes "
        f"({time.monotonic() - start:.0f} s)")
    return found


def train_variant(name: str, maps: list, targets: list, tuple_list: list[list[int]], args):
    """The library's :func:`~matchlens.train.learned_regions.train_head` for ``args.budget`` CPU
    seconds; returns the model, the CPU minutes and the epochs started."""
    from matchlens.train.learned_regions import RegionsHeadConfig, train_head

    rpn_weight, use_triplet = VARIANTS[name]
    config = RegionsHeadConfig(k=args.k, epochs=10_000, budget=args.budget, lr=args.lr, rpn_weight=rpn_weight,
                               triplet=use_triplet, seed=args.seed)
    model, losses, seconds = train_head(maps, targets, tuple_list, config)
    log(f"{name}: {len(losses)} epochs, mean loss per epoch {', '.join(f'{v:.4f}' for v in losses)}")
    return model, seconds / 60, len(losses)


def describe_all(maps: list, pool) -> np.ndarray:
    """(n, C) float32 descriptors of every map by ``pool`` (a map → L2-normalised (C,) function)."""
    import torch

    with torch.no_grad():
        return np.stack([pool(m).numpy() for m in maps]).astype(np.float32)


def rigid_rows(maps: list) -> dict[str, np.ndarray]:
    """The rigid-grid descriptors: the library's R-MAC (MAC) and the grid pooled like learned regions."""
    import torch.nn.functional as F

    from matchlens.pooling.functional import rmac
    from matchlens.pooling.proposals import grid_boxes, regional_descriptor

    return {"rigid R-MAC (library rmac, MAC)": describe_all(maps, lambda m: F.normalize(rmac(m[None]), dim=1)[0]),
            "rigid grid, GeM p=3": describe_all(maps, lambda m: regional_descriptor(m, grid_boxes(*m.shape[-2:]), 3.0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("bench-out/learned_regions"))
    parser.add_argument("--max-side", type=int, default=320)
    parser.add_argument("--budget", type=float, default=180.0, help="CPU seconds of training per variant")
    parser.add_argument("--variants", default="rpn+triplet,rpn,triplet")
    parser.add_argument("--k", type=int, default=16, help="learned regions per image (plus the whole map)")
    parser.add_argument("--knn", type=int, default=10)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="the head's initialisation and the tuple order")
    parser.add_argument("--holdout", default=",".join(HOLDOUT))
    parser.add_argument("--pipeline", action="store_true",
                        help="also run the user path: index → train-regions → index --pooling learned-rmac")
    args = parser.parse_args()

    import torch

    from matchlens.train.learned_regions import box_targets, training_tuples
    from matchlens.train.positives import holdout_images

    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args.data / "oxford5k_subset")
    paths, names = dataset_paths(dataset), list(dataset.images)
    rows_of = {n: i for i, n in enumerate(names)}
    holdout = [g for g in args.holdout.split(",") if g]
    queries = [q for q in dataset.queries if q.group in holdout and q.box is None]
    hidden = holdout_images(dataset, set(holdout))
    train = [i for i, n in enumerate(names) if n not in hidden]
    maps = feature_maps(paths, args.max_side, args.work)
    results = {label: (vectors, 0.0, 0) for label, vectors in rigid_rows(maps).items()}
    found = training_pairs(train, paths, results["rigid R-MAC (library rmac, MAC)"][0], args.knn, args.work)
    train_maps = [maps[i] for i in train]
    targets = box_targets(found, train_maps)
    tuple_list = training_tuples(found, results["rigid R-MAC (library rmac, MAC)"][0][train], args.negatives,
                                 args.seed)
    for name in [v for v in args.variants.split(",") if v]:
        model, minutes, steps = train_variant(name, train_maps, targets, tuple_list, args)
        results[f"learned ({name.replace('+', ' + ')})"] = (describe_all(maps, model), minutes, steps)
    if args.pipeline:
        results.update(pipeline_rows(paths, names, hidden, args))
    rows = [(label, column_maps(v, names, queries, rows_of, label), minutes, steps)
            for label, (v, minutes, steps) in results.items()]
    print_table(rows, queries, holdout, found, len(train), args)


def pipeline_rows(paths: list[str], names: list[str], hidden: set[str], args) -> dict[str, tuple]:
    """The user path: rigid index → train-regions (held-out images left out) → learned-rmac index."""
    import matchlens
    from matchlens.config import PipelineSpec
    from matchlens.train.learned_regions import RegionsHeadConfig, train_regions_head

    spec = PipelineSpec(max_side=args.max_side, pooling="rmac", pooling_params={"levels": 3})
    rigid = matchlens.build_index(paths, args.work / "pipeline-rigid", spec=spec)
    hidden_stems = {Path(n).stem for n in hidden}
    rows = [r for r in range(rigid.size) if Path(rigid.entry_for_row(r).path).stem not in hidden_stems]
    head = args.work / f"pipeline-head-{args.seed}.pt"
    config = RegionsHeadConfig(k=args.k, knn=args.knn, negatives=args.negatives, epochs=10_000, budget=args.budget,
                               lr=args.lr, seed=args.seed, max_side=args.max_side)
    report = train_regions_head(rigid, head, config, rows, log=log)
    log(f"pipeline: {len(rows)} training images, {report.pairs} verified pairs, {report.epochs} epochs, "
        f"{report.cpu_seconds:.0f} CPU s")
    learned = matchlens.build_index(paths, args.work / f"pipeline-learned-{args.seed}", spec=spec.replace(
        pooling="learned-rmac", pooling_params={"head": str(head)}))
    out = {}
    for label, idx, trained in (("pipeline: index (rmac)", rigid, False),
                                ("pipeline: train-regions → index (learned-rmac)", learned, True)):
        order = {Path(idx.entry_for_row(r).path).stem: r for r in range(idx.size)}
        vectors = np.asarray(idx.vectors(), np.float32)[[order[Path(n).stem] for n in names]]
        out[label] = (vectors, report.cpu_seconds / 60 if trained else 0.0, report.epochs if trained else 0)
    return out


def print_table(rows, queries, holdout, found, n_train: int, args) -> None:
    from rich.console import Console
    from rich.table import Table

    load = os.getloadavg()
    table = Table(title=f"R-MAC regions on oxford5k_subset: mAP of {len(queries)} whole-image queries of held-out "
                        f"{', '.join(holdout)} (1,009 images); frozen Lite0 at {args.max_side} px; head trained on "
                        f"{n_train} images, {len(found.pairs)} verified pairs, {len(found.boxes)} images with inlier "
                        f"boxes; k={args.k}, seed {args.seed}; load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    for column in ("regions", *COLUMNS, "train CPU min", "epochs"):
        table.add_column(column, justify="right")
    for label, maps, minutes, steps in rows:
        table.add_row(label, *(f"{m:.2f}" for m in maps), f"{minutes:.1f}" if steps else "-", str(steps or "-"))
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
