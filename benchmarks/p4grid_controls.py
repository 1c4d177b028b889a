"""Controls for where p4grid's PCA is learned (``--pca-source``): does the choice of PCA rows
alone give the held-out images away?

* ``--control random``: p4grid's columns on RANDOM unit descriptors (no image information); any
  mAP above chance (about 3.8 on 1,009 images, 6.9 on the 554 of ``split``) is what the PCA rows
  give away.
* ``--control pseudo``: p4grid's cached REAL descriptors of one model (``--label``, ``--bn``), with
  each held-out query's positives replaced by as many held-out images of the OTHER held-out
  landmarks (its own landmark's images become junk). Such a pseudo-positive shares nothing with
  the query but membership of the held-out set.

    python benchmarks/p4grid_controls.py --control random [--width 1280] [--seeds 0,1]
    python benchmarks/p4grid_controls.py --control pseudo --work bench-out/p4grid-default --label lite0 --bn off

Each line: control, seed/draw, PCA source, raw or PCAw, dimension, then p4grid's COLUMNS.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import p4grid  # benchmarks/ is the script's folder

from matchlens.io.formats import load_dataset
from matchlens.train.positives import holdout_images

SOURCES = ("collection", "others", "split", "split-self")


def pseudo_queries(dataset, queries: list, holdout: list[str], draw: int) -> list:
    """Each query with positives drawn from the other held-out landmarks' images."""
    own = {g: holdout_images(dataset, {g}) for g in holdout}
    rng = np.random.default_rng(draw)
    fake = []
    for q in queries:
        others = sorted(set().union(*(own[g] for g in holdout if g != q.group)) - own[q.group])
        pick = set(rng.choice(others, size=min(len(q.positives), len(others)), replace=False))
        fake.append(SimpleNamespace(image=q.image, positives=pick, junk=own[q.group] - {q.image}))
    return fake


def print_rows(tag: str, raw: np.ndarray, dataset, names: list[str], queries: list, holdout: list[str],
               dims: str) -> None:
    rows_of = {n: i for i, n in enumerate(names)}
    for source in SOURCES:
        fit = p4grid.pca_folds(dataset, names, holdout, source)
        grid_args = argparse.Namespace(dims=dims, power=0.5)
        for r in p4grid.grid_rows(f"{tag}-{source}", "off", raw, names, queries, rows_of, fit, grid_args):
            print(f"{tag} {source:11s} {'PCAw' if r['pca'] else 'raw '} {r['dim']:5d} "
                  + " ".join(f"{m:6.2f}" for m in r["maps"]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control", choices=("random", "pseudo"), required=True)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--dims", default="32,64,128,256,512")
    parser.add_argument("--width", type=int, default=1280, help="random: descriptor width")
    parser.add_argument("--seeds", default="0", help="random: seeds; pseudo: draws of the pseudo-positives")
    parser.add_argument("--work", type=Path, default=Path("bench-out/p4grid-default"), help="pseudo: p4grid's --work")
    parser.add_argument("--label", default="lite0", help="pseudo: the model's label in p4grid")
    parser.add_argument("--bn", default="off", help="pseudo: off | pooled | per-pass")
    args = parser.parse_args()

    dataset = load_dataset(args.data / "oxford5k_subset")
    names, holdout = list(dataset.images), list(p4grid.HOLDOUT)
    queries = [q for q in dataset.queries if q.group in holdout and q.box is None]
    for seed in (int(s) for s in args.seeds.split(",")):
        if args.control == "random":
            raw = np.random.default_rng(seed).standard_normal((len(names), args.width)).astype(np.float32)
            raw /= np.linalg.norm(raw, axis=1, keepdims=True)
            print_rows(f"random{args.width}-seed{seed}", raw, dataset, names, queries, holdout, args.dims)
        else:
            cached = sorted(args.work.glob(f"{args.label}-bn{args.bn}-*.npy"))
            if not cached:
                raise SystemExit(f"no cached descriptors {args.label}-bn{args.bn}-*.npy in {args.work}: run p4grid.py first")
            raw = np.load(cached[0])
            fake = pseudo_queries(dataset, queries, holdout, seed)
            print_rows(f"pseudo-draw{seed}-{args.label}-bn{args.bn}", raw, dataset, names, fake, holdout, args.dims)


if __name__ == "__main__":
    main()
