"""P4's grid for any list of backbones/checkpoints: global search, +AQE, +DBA, +diffusion and
+DBA+AQE+diffusion, at PCA-whitening dimensions 32 … 2048 (as far as the descriptor and the
collection allow), with and without BatchNorm statistics re-estimated on the collection (``pooled``: the
statistics of all the images' activations, the library's default; ``per-pass``: PyTorch's average
of one-image passes, which leaves the variance between images out).

Each model (``LABEL=BACKBONE[@WEIGHTS]``; WEIGHTS may name a self-supervised layout, ``FILE#moco``,
see :mod:`matchlens.models.checkpoints`) runs the ``--preset`` pipeline (default: the library's,
R-MAC, 3 scales, 640 px) with the extractor ``matchlens index`` uses; BN re-estimation is the
``matchlens index --bn-recalibrate N`` code (:mod:`matchlens.train.bn_recalibrate`). The
whitening is PCAw with ``--power`` 0.5 as in P4 (matchlens' own presets use 0.25), learned
(``--pca-source others``) on the images outside the held-out landmarks, the same
images the fine-tunes train on (:func:`matchlens.train.positives.holdout_images` leaves out every
query, positive and junk image of a held-out landmark), so neither the queries nor their answers
shape the whitening; ``--pca-source collection`` learns it on all the searched images (no labels,
as ``--whitening-source collection``; the earlier runs). The ensemble's PCA follows the same
choice. Caveat of ``others`` (measured, docs/contrastive.md): the distractors are then the PCA's
own rows and the held-out images the only out-of-sample ones; full whitening with about as many
images as dimensions spreads its own rows apart and leaves out-of-sample vectors close, so "being
held out" itself becomes a signal (random descriptors reach 40 mAP at 512-d + diffusion, Lite0's
global mAP rises with the dimension where ``collection``'s falls). ``--pca-source split`` (the default) avoids it (controls: ``benchmarks/p4grid_controls.py``): the images outside the held-out
landmarks are halved (alternately, in dataset order), PCA learns on one half and the search runs
in the held-out images plus the other half only (about 554 images: every searched image is
out-of-sample), both ways round, mAP averaged; ``split-self`` searches the same halves with PCA
learned on the searched images themselves (its transductive counterpart). The re-rankers
are the library's (``aqe``, DBA's ``dba_vectors``, ``diffusion``) at their default parameters,
run on in-memory vectors. mAP (revisitop AP, the query image and the junk ignored) is over the
whole-image queries of the ``--holdout`` landmarks of ../shared/data/oxford5k_subset, searched
in all its 1,009 images (``split``: in about 554 of them).

``--finetune simclr,moco`` first fine-tunes the embedded backbone with ``matchlens train
--positives selfsup --selfsup METHOD`` on the images of the OTHER landmarks and the distractors
(``--holdout-groups``: the held-out landmarks are never seen), each for the same ``--budget`` of
process CPU seconds on one thread (the run stops itself at the budget and keeps ``last.pt``), and
adds the results as models ``simclr`` and ``moco``. ``--ensemble A+B`` adds the concatenation
of two models' descriptors, then PCA (:class:`matchlens.train.ensemble.Ensemble`).

    python benchmarks/p4grid.py [--data ../shared/data] [--work bench-out/p4grid]
        [--models lite0=tf_efficientnet_lite0 ssl=resnet50@moco_v2.pth.tar#moco ...]
        [--finetune simclr,moco --budget 420] [--ensemble lite0+moco] [--dims 32,64,...]
        [--bn-images 200] [--bn-modes pooled,per-pass] [--holdout radcliffe_camera,all_souls,ashmolean,bodleian] [--threads 1]
        [--preset default] [--max-side 320] [--pca-source others|collection|split|split-self]

Descriptors are cached in --work per model and BN state (delete the folder to measure again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from matchlens.config import spec_from_preset
from matchlens.evaluate.metrics import average_precision
from matchlens.evaluate.protocol import dataset_paths
from matchlens.io.formats import load_dataset

HOLDOUT = ("radcliffe_camera", "all_souls", "ashmolean", "bodleian")
DIMS = (32, 64, 128, 256, 512, 1024, 2048)
COLUMNS = ("global", "+AQE", "+DBA", "+diffusion", "+DBA+AQE+diffusion")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Model:
    label: str
    backbone: str
    weights: str | None = None


def parse_model(text: str) -> Model:
    """``LABEL=BACKBONE[@WEIGHTS]`` (a bare BACKBONE is its own label)."""
    label, _, rest = text.partition("=") if "=" in text else (text, "", text)
    backbone, _, weights = rest.partition("@")
    return Model(label, backbone, str(Path(weights).expanduser().resolve()) if weights else None)


# --- fine-tuning at equal CPU budget ----------------------------------------------------------
def finetune(method: str, data: Path, work: Path, holdout: list[str], budget: float, args) -> Model:
    """The embedded backbone fine-tuned by ``method`` for ``budget`` CPU seconds (cached in --work)."""
    from matchlens.train import TrainConfig, TrainingInterrupted
    from matchlens.train.moco import train_selfsup

    out = work / f"finetune-{method}"
    done = out / "budget.json"
    if done.is_file():
        log(f"{method}: reusing {out} ({json.loads(done.read_text())})")
        return Model(method, "tf_efficientnet_lite0", str(out / "last.pt"))
    config = TrainConfig(data=str(data), out=str(out), positives="selfsup", selfsup=method, holdout_groups=holdout,
                         max_side=args.train_side, crop=args.crop, batch=args.batch, tuples=100000, epochs=1,
                         threads=args.threads, lw=False, queue=args.queue, save_every=0, lr=args.lr)
    start, steps = time.process_time(), [0]

    def stop_at_budget(epoch: int, images: int) -> None:
        steps[0] = images
        if time.process_time() - start >= budget:
            raise KeyboardInterrupt  # the trainer saves last.pt and says how far it got

    wall = time.monotonic()
    try:
        train_selfsup(config, log=log, on_step=stop_at_budget)
    except TrainingInterrupted as stopped:
        log(f"{method}: {stopped}")
    spent = {"cpu_s": round(time.process_time() - start, 1), "wall_s": round(time.monotonic() - wall, 1),
             "images": steps[0], "batch": args.batch, "crop": args.crop, "max_side": args.train_side, "lr": config.learning_rate}
    done.write_text(json.dumps(spent))
    log(f"{method}: {spent}")
    return Model(method, "tf_efficientnet_lite0", str(out / "last.pt"))


# --- descriptors ------------------------------------------------------------------------------
def descriptors(model: Model, bn: str, paths: list[str], work: Path, args) -> np.ndarray:
    """Raw (n, d) descriptors of ``paths`` by ``model``'s pipeline, BN statistics as they are
    (``off``) or re-estimated (``pooled``, the library's default; ``per-pass``), cached."""
    from matchlens.extract import Extractor
    from matchlens.train.bn_recalibrate import recalibrated_spec

    spec = spec_from_preset(args.preset, backbone=model.backbone, weights=model.weights, whitening="none",
                            max_side=args.max_side)
    cache = work / f"{model.label}-bn{bn}-{spec.raw_fingerprint()}-{args.bn_images}.npy"
    if cache.is_file():
        return np.load(cache)
    start = time.monotonic()
    if bn != "off":
        spec = recalibrated_spec(spec, paths, args.bn_images, work / f"bn-{model.label}", pooled=bn == "pooled")
    extractor = Extractor(spec, threads=args.threads)
    out = np.stack([extractor.describe(p) for p in paths]).astype(np.float32)
    np.save(cache, out)
    log(f"{model.label} bn={bn}: {len(paths)} images in {time.monotonic() - start:.0f} s "
        f"({extractor.runtime})")
    return out


# --- the grid of one set of vectors -----------------------------------------------------------
class Memory:
    """The RerankContext of in-memory vectors (exact inner-product search)."""

    def __init__(self, vectors: np.ndarray, generation: str) -> None:
        self._vectors = np.ascontiguousarray(vectors, np.float32)
        self._generation = generation

    @property
    def vectors(self) -> np.ndarray:
        return self._vectors

    @property
    def generation(self) -> str:
        return self._generation

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.asarray(queries, np.float32) @ self._vectors.T
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, rows, axis=1), rows

    def image_path(self, row: int) -> str:
        raise NotImplementedError

    def image_sha256(self, row: int) -> str:
        raise NotImplementedError

    def cache_dir(self, kind: str) -> Path | None:
        return None


def column_maps(vectors: np.ndarray, names: list[str], queries: list, rows_of: dict[str, int], tag: str) -> list[float]:
    """mAP of each column of COLUMNS for these searchable vectors."""
    from matchlens.rerank import QueryInput, Shortlist, parse_chain, run_chain
    from matchlens.rerank.dba import dba_vectors

    dba = dba_vectors(vectors)
    setups = [(vectors, ""), (vectors, "aqe"), (dba, ""), (vectors, "diffusion"), (dba, "aqe,diffusion")]
    maps = []
    for i, (db, chain_text) in enumerate(setups):
        ctx = Memory(db, f"{tag}-{i}")
        chain = parse_chain(chain_text)
        aps = []
        for q in queries:
            qv = vectors[rows_of[q.image]]  # DBA augments the database side only
            scores, rows = ctx.search(qv[None], len(names))
            shortlist = run_chain(chain, QueryInput(vector=qv), Shortlist(rows[0], scores[0]), ctx)
            ranking = [names[r] for r in shortlist.rows]
            aps.append(average_precision(ranking, q.positives, set(q.junk) | {q.image}))
        maps.append(100 * float(np.mean(aps)))
    return maps


def pca(raw: np.ndarray, dim: int | None, power: float, fit_rows: np.ndarray | None = None) -> np.ndarray:
    """PCA-whitened L2 vectors of every row of ``raw``, learned on ``raw[fit_rows]`` (all of
    ``raw`` when None), or ``raw`` itself for dim None."""
    from matchlens.whitening import PCAWhitening

    if dim is None:
        return raw
    learn = raw if fit_rows is None else raw[fit_rows]
    return PCAWhitening(dim=dim, power=power).fit(learn).transform(raw)


@dataclass(frozen=True)
class Fold:
    """One evaluation of a ``--pca-source`` protocol: the rows PCA learns on, the rows searched."""

    fit: np.ndarray
    search: np.ndarray


PCA_SOURCES = ("others", "collection", "split", "split-self")


def pca_folds(dataset, names: list[str], holdout: list[str], source: str) -> list[Fold]:
    """The folds of ``source`` (see the module docstring); mAP is the mean over the folds."""
    from matchlens.train.positives import holdout_images

    every = np.arange(len(names))
    if source == "collection":
        return [Fold(every, every)]
    hidden = holdout_images(dataset, set(holdout))
    held = np.array([i for i, n in enumerate(names) if n in hidden])
    others = np.array([i for i, n in enumerate(names) if n not in hidden])
    if source == "others":
        return [Fold(others, every)]
    # Halves taken alternately in dataset order: independent of the held-out landmarks' labels.
    halves = (others[0::2], others[1::2])
    searched = [np.sort(np.concatenate([held, half])) for half in halves[::-1]]
    if source == "split":
        return [Fold(halves[0], searched[0]), Fold(halves[1], searched[1])]
    return [Fold(rows, rows) for rows in searched]  # split-self: the same searched sets, PCA on themselves


def fold_maps(transform, names: list[str], queries: list, rows_of: dict[str, int], folds: list[Fold],
              tag: str) -> list[float]:
    """Mean over ``folds`` of :func:`column_maps` of each fold's searched rows, the vectors being
    ``transform(fold.fit)`` (the PCA learned on the fold's rows)."""
    per_fold = []
    for k, fold in enumerate(folds):
        vectors = transform(fold.fit)
        if len(fold.search) == len(names):
            per_fold.append(column_maps(vectors, names, queries, rows_of, f"{tag}-{k}"))
            continue
        sub = [names[i] for i in fold.search]
        per_fold.append(column_maps(vectors[fold.search], sub, queries, {n: i for i, n in enumerate(sub)},
                                    f"{tag}-{k}"))
    return [float(m) for m in np.mean(per_fold, axis=0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("bench-out/p4grid"))
    parser.add_argument("--models", nargs="*", default=["lite0=tf_efficientnet_lite0"])
    parser.add_argument("--finetune", default="", help="comma-separated self-supervised methods: simclr,moco")
    parser.add_argument("--budget", type=float, default=420.0, help="CPU seconds per fine-tune")
    parser.add_argument("--ensemble", nargs="*", default=[], help="A+B: concatenate two models' descriptors, then PCA")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--max-side", type=int, default=None, help="override the preset's input size")
    parser.add_argument("--dims", default=",".join(map(str, DIMS)))
    parser.add_argument("--power", type=float, default=0.5)
    parser.add_argument("--pca-source", choices=PCA_SOURCES, default="split",
                        help="where PCAw is learned and what is searched (module docstring)")
    parser.add_argument("--bn-images", type=int, default=200)
    parser.add_argument("--bn-modes", default="pooled", help="re-estimations to compare: pooled,per-pass")
    parser.add_argument("--holdout", default=",".join(HOLDOUT))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-side", type=int, default=320)
    parser.add_argument("--crop", type=int, default=160)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--queue", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--finetune-only", action="store_true", help="run the fine-tunes, print nothing else")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    started, cpu_started = time.monotonic(), time.process_time()
    root = args.data / "oxford5k_subset"
    args.work.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(root)
    paths = dataset_paths(dataset)
    names = list(dataset.images)
    rows_of = {n: i for i, n in enumerate(names)}
    holdout = [g for g in args.holdout.split(",") if g]
    queries = [q for q in dataset.queries if q.group in holdout and q.box is None]
    folds = pca_folds(dataset, names, holdout, args.pca_source)
    log(f"{args.pca_source}: PCAw learned on " + " / ".join(f"{len(f.fit)}" for f in folds) + ", searched in "
        + " / ".join(f"{len(f.search)}" for f in folds) + f" of {len(names)} images")
    models = [parse_model(m) for m in args.models]
    models += [finetune(m, root, args.work, holdout, args.budget, args) for m in args.finetune.split(",") if m]
    if args.finetune_only:
        return
    rows = []
    for model in models:
        for bn in ["off", *args.bn_modes.split(",")]:
            raw = descriptors(model, bn, paths, args.work, args)
            rows += grid_rows(model.label, bn, raw, names, queries, rows_of, folds, args)
    for pair in args.ensemble:
        rows += ensemble_rows(pair, models, paths, names, queries, rows_of, folds, args)
    print_table(rows, queries, holdout, folds, args)
    log(f"total: {time.monotonic() - started:.0f} s wall, {time.process_time() - cpu_started:.0f} s process CPU")


def grid_rows(label: str, bn: str, raw: np.ndarray, names, queries, rows_of, folds: list[Fold],
              args) -> list[dict]:
    """One row per PCA dimension (and the raw descriptor) of one model and BN state."""
    limit = min(raw.shape[1], min(len(f.fit) for f in folds) - 1)  # PCA's rank
    dims: list[int | None] = [None] + [d for d in (int(x) for x in args.dims.split(",")) if d <= limit]
    out = []
    for dim in dims:
        maps = fold_maps(lambda fit, dim=dim: pca(raw, dim, args.power, fit), names, queries, rows_of, folds,
                         f"{label}-{bn}-{dim}")
        out.append({"model": label, "bn": bn, "dim": dim or raw.shape[1],
                    "pca": dim is not None, "maps": maps})
        log(f"{label} bn={bn} dim={dim}: " + " ".join(f"{m:.1f}" for m in maps))
    return out


def ensemble_rows(pair: str, models: list[Model], paths, names, queries, rows_of, folds: list[Fold],
                  args) -> list[dict]:
    """Rows of the concatenation of two models' descriptors (BN re-estimated off), then PCA."""
    from matchlens.ensemble import Ensemble, concatenate

    by_label = {m.label: m for m in models}
    parts = [descriptors(by_label[label], "off", paths, args.work, args) for label in pair.split("+")]
    width = sum(p.shape[1] for p in parts)
    limit = min(width, min(len(f.fit) for f in folds) - 1)
    out = []
    for dim in [None] + [d for d in (int(x) for x in args.dims.split(",")) if d <= limit]:
        def transform(fit: np.ndarray, dim: int | None = dim) -> np.ndarray:
            if dim is None:
                return concatenate(parts)
            return Ensemble(dim, args.power).fit([p[fit] for p in parts]).transform(parts)

        maps = fold_maps(transform, names, queries, rows_of, folds, f"{pair}-{dim}")
        out.append({"model": pair, "bn": "off", "dim": dim or width, "pca": dim is not None, "maps": maps})
        log(f"{pair} dim={dim}: " + " ".join(f"{m:.1f}" for m in maps))
    return out


def print_table(rows: list[dict], queries: list, holdout: list[str], folds: list[Fold], args) -> None:
    from rich.console import Console
    from rich.table import Table

    load = os.getloadavg()
    n_fit, n_search = len(folds[0].fit), len(folds[0].search)
    learned = {"others": f"learned on the {n_fit} images outside the held-out landmarks (biased for the "
                         "held-out images, the only out-of-sample ones: see the docstring)",
               "collection": f"learned on the searched images themselves ({n_fit}, held-out landmarks included)",
               "split": f"learned on one half ({n_fit}) of the images outside the held-out landmarks, searched: "
                        "the held-out images and the other half; mean of both halves",
               "split-self": f"learned on the searched images themselves ({n_fit}: the held-out images and one half "
                             "of the others; mean of both halves)"}[args.pca_source]
    table = Table(title=f"P4 grid on oxford5k_subset: mAP of {len(queries)} whole-image queries of held-out "
                        f"{', '.join(holdout)} ({n_search} images searched), preset {args.preset}"
                        f"{f' at {args.max_side} px' if args.max_side else ''}, PCAw power {args.power} {learned}, "
                        f"BN re-estimated on {args.bn_images} images; load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    for column in ("model", "BN re-est.", "dim", *COLUMNS):
        table.add_column(column, justify="right")
    for r in rows:
        dim = f"PCAw {r['dim']}" if r["pca"] else f"raw {r['dim']}"
        table.add_row(r["model"], r["bn"], dim, *(f"{m:.2f}" for m in r["maps"]))
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
