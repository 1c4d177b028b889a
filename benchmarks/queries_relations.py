"""Relation queries ⟨subject, predicate, object⟩ on generated CSS-like scenes: Recall@1/25/50/100
of the scene-graph embedding (Schroeder & Tripathi) for the paper's query structures and models.

Scenes come from :mod:`matchlens.queries.scenes` (a 3 x 3 board, 2-4 objects, some nested, so
all 6 predicates occur). A category is size + colour + shape ("large red cube": 48 classes, so
that a class sets its box size, as classes do in photos; ``--classes colour-shape``: 24 classes,
whose layout says nothing of the class); their frequencies are made long-tailed by subsampling objects (class of frequency rank r kept with probability
(r + 1) ** -zipf, scenes left with fewer than two objects dropped), as COCO-Stuff's are. The
Triplet model trains on the box + triplet-mask + superbox losses, the NoTriplet model on the box
loss alone, both from the train scenes' graphs only (no pixels). Queries are the distinct
⟨s, p, o⟩ of the test scenes; the database is the test scenes. A query is recalled at k when
an image holding that relationship is among the top k (S = 1/d to the closest triplet of the
image). Head classes are the 20 % most frequent in training; a query is head when its subject
and object both are, long-tail otherwise. Rows as measured, not as expected.

    python benchmarks/queries_relations.py [--train 6000] [--test 3000] [--epochs 10] [--queries 400]
                                           [--classes size-colour-shape|colour-shape] [--zipf 0.5]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

KS = (1, 25, 50, 100)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=6000, help="train reference scenes generated")
    parser.add_argument("--test", type=int, default=3000, help="test reference scenes generated (the database)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--queries", type=int, default=400, help="distinct test relationships queried (a sample)")
    parser.add_argument("--zipf", type=float, default=0.5, help="long-tail exponent of the class frequencies (0: as generated)")
    parser.add_argument("--classes", choices=("size-colour-shape", "colour-shape"), default="size-colour-shape",
                        help="what a category is: with the size, a class sets its box size (as in photos)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def make_scenes(args: argparse.Namespace) -> tuple[list, list, list[str]]:
    """(train scenes, test scenes, category names); a scene is (boxes in [0, 1], labels)."""
    from matchlens.queries.scenes import COLOURS, SHAPES, SIZES, SceneConfig, generate

    config = SceneConfig(seed=args.seed, train_references=args.train, test_references=args.test,
                         mods_per_reference=0, held_out=())
    generated = generate(config)
    sizes = SIZES if args.classes == "size-colour-shape" else ("",)
    categories = [f"{z} {c} {s}".strip() for s in SHAPES for c in COLOURS for z in sizes]
    rng = np.random.default_rng(args.seed + 1)
    keep = (1.0 + np.arange(len(categories))) ** -args.zipf  # by frequency rank ...
    keep = keep[rng.permutation(len(categories))]              # ... of a random class order

    def scenes(split: str) -> list:
        out = []
        for scene in generated.split(split):
            labels = np.array([categories.index(f"{o.size if len(sizes) > 1 else ''} {o.colour} {o.shape}".strip())
                               for o in scene.objects])
            boxes = np.array([o.box for o in scene.objects], np.float32) / config.image_size
            kept = rng.random(len(labels)) < keep[labels]
            if kept.sum() >= 2:
                out.append((boxes[kept], labels[kept]))
        return out

    return scenes("train"), scenes("test"), categories


def label_triplets(scene) -> set[tuple[int, int, int]]:
    """The ⟨subject class, predicate, object class⟩ a scene holds."""
    from matchlens.queries.relations import scene_triplets

    boxes, labels = scene
    return {(int(labels[s]), p, int(labels[o])) for s, p, o in scene_triplets(boxes.tolist())}


def recalls(rankings: list[np.ndarray], relevant: list[np.ndarray]) -> np.ndarray:
    """(queries, len(KS)) hits: an image of the relationship among the top k."""
    hits = np.zeros((len(rankings), len(KS)))
    for i, (order, rel) in enumerate(zip(rankings, relevant)):
        first = np.flatnonzero(np.isin(order, rel))
        best = first[0] if len(first) else np.inf
        hits[i] = [best < k for k in KS]
    return hits


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print its table and return the rows (part of benchmarks/queries.py)."""
    args = parse_args(argv)
    import torch
    from rich.console import Console
    from rich.table import Table

    from matchlens.queries.rel_search import embed_relations, embed_scenes, relation_scores
    from matchlens.queries.rel_train import TrainSettings, train_relation_model
    from matchlens.queries.relations import Relation, predicate_names

    torch.set_num_threads(args.threads)
    train, test, categories = make_scenes(args)
    counts = np.bincount(np.concatenate([labels for _, labels in train]), minlength=len(categories))
    head = set(np.argsort(-counts, kind="stable")[: max(1, round(0.2 * len(categories)))].tolist())
    held = [label_triplets(s) for s in test]
    distinct = sorted(set().union(*held))
    rng = np.random.default_rng(args.seed + 2)
    queries = [distinct[i] for i in sorted(rng.choice(len(distinct), min(args.queries, len(distinct)), replace=False))]
    relevant = [np.array([j for j, h in enumerate(held) if q in h]) for q in queries]
    names = predicate_names()
    relations = [Relation(categories[s], names[p], categories[o]) for s, p, o in queries]

    models, minutes = {}, {}
    for label, triplet in (("Triplet", True), ("NoTriplet", False)):
        start = time.perf_counter()
        models[label] = train_relation_model(train, categories, TrainSettings(epochs=args.epochs, triplet=triplet,
                                                                              seed=args.seed))
        minutes[label] = (time.perf_counter() - start) / 60

    def ranked(model, structure: str) -> list[np.ndarray]:
        database = embed_scenes(model, test)
        out = []
        for relation in relations:
            scores = relation_scores(embed_relations(model, [relation]), database, structure)
            out.append(np.lexsort((np.arange(len(scores)), -scores)))
        return out

    rows: dict[str, np.ndarray] = {}
    for label, model_name, structure in (("Triplet-s+o", "Triplet", "s+o"), ("Triplet-s+p+o", "Triplet", "s+p+o"),
                                         ("NoTriplet-s+o", "NoTriplet", "s+o"), ("NoTriplet-s+p+o", "NoTriplet", "s+p+o"),
                                         ("Baseline-s", "Triplet", "s"), ("Baseline-o", "Triplet", "o"),
                                         ("Baseline-p", "Triplet", "p")):
        rows[label] = recalls(ranked(models[model_name], structure), relevant)
    rows["Random"] = recalls([rng.permutation(len(test)) for _ in queries], relevant)
    is_head = np.array([q[0] in head and q[2] in head for q in queries])
    best = rows["Triplet-s+o"]
    subsets = {"Head classes (Triplet-s+o)": best[is_head], "Long-tail classes (Triplet-s+o)": best[~is_head]}

    load = os.getloadavg()
    table = Table(title=f"Relation queries on generated scenes: {len(train)} train / {len(test)} test scenes, "
                        f"{len(categories)} classes ({args.classes}, zipf {args.zipf:g}), {len(queries)} queries, {args.epochs} epochs; "
                        f"CPU training min: Triplet {minutes['Triplet']:.1f}, NoTriplet {minutes['NoTriplet']:.1f} "
                        f"(torch threads {args.threads}, load {load[0]:.1f}, measured under shared load)")
    for column in ("model / query", "queries", *(f"R@{k}" for k in KS)):
        table.add_column(column, justify="right" if column != "model / query" else "left")
    results = {}
    for label, hits in {**rows, **subsets}.items():
        mean = hits.mean(axis=0) if len(hits) else np.full(len(KS), np.nan)
        results[label] = dict(zip((f"R@{k}" for k in KS), mean.round(3).tolist()), queries=len(hits))
        table.add_row(label, str(len(hits)), *(f"{v:.2f}" for v in mean))
    Console(width=200).print(table)
    print(f"mean relevant images per query: {np.mean([len(r) for r in relevant]):.1f} of {len(test)}; "
          f"head classes: {', '.join(categories[c] for c in sorted(head))}")
    results["training_minutes"] = minutes
    return results


if __name__ == "__main__":
    main()
