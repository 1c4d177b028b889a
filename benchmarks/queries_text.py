"""Text ↔ image retrieval on the generated CSS-like scenes: the joint embedding, + CAMP, + CAAN
and their ablations, R@1/5/10 both ways, on test scenes with held-out (shape, colour) pairs.

The scenes (64 px) are indexed with the embedded backbone at 128 px (``PipelineSpec(max_side=128)``);
the joint embedding maps text into that index's own descriptor space, CAMP / CAAN re-score its
top ``--k`` from region features ROI-pooled on the same backbone's map (R-MAC grid, or the COCO
boxes with ``--regions boxes``). Models are trained on the train split's captions only; a text's
correct images are the test scenes with the same content (same caption), and vice versa.

    python benchmarks/queries_text.py [--train-refs 200] [--test-refs 100] [--encoders bigru,sentence]
                                      [--k 20] [--work DIR] [--quick]

Training times are CPU minutes on one thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import matchlens
from matchlens.errors import MatchlensError
from matchlens.queries.scenes import SceneConfig, generate, write_collection
from matchlens.queries.text_data import Captions, RegionFeatures, read_captions
from matchlens.queries.text_model import TextModel
from matchlens.queries.text_rerank import CrossModel, fused, rescore
from matchlens.queries.text_train import make_cross
from matchlens.queries.joint import train_joint

KS = (1, 5, 10)
Row = dict[str, Any]


def recall_at(ranked_correct: list[np.ndarray]) -> dict[int, float]:
    """R@K (%) over queries from each query's correctness in ranked order."""
    return {k: 100.0 * float(np.mean([bool(c[:k].any()) for c in ranked_correct])) for k in KS}


def joint_scores(model: TextModel, texts: list[str], rows: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(texts × rows) joint-embedding scores."""
    return (model.text_embeddings(texts) @ model.image_embeddings(vectors[rows]).T).numpy()


Recalls = tuple[dict[int, float], dict[int, float]]


def evaluate(model: TextModel, test: Captions, vectors: np.ndarray, k: int,
             cross: tuple[CrossModel, RegionFeatures] | None, weights: tuple[float, ...] = (0.0,)) -> list[Recalls]:
    """(text→image R@K, image→text R@K) per fusion weight; with ``cross``, the top ``k`` of the joint
    ranking re-scored by it (weight 0: its score alone; w: + w × the joint score, standardised)."""
    texts = list(dict.fromkeys(test.texts))           # unique test captions (the text gallery)
    rows = np.unique(test.rows)                        # test images
    caption_of = {int(r): t for t, r in zip(test.texts, test.rows)}
    truth = np.array([[caption_of[int(r)] == t for r in rows] for t in texts])  # (T, I)
    scores = joint_scores(model, texts, rows, vectors)
    t2i: list[list[np.ndarray]] = [[] for _ in weights]
    i2t: list[list[np.ndarray]] = [[] for _ in weights]
    for ti in range(len(texts)):
        order = np.argsort(-scores[ti], kind="stable")
        new = rescore(cross[0], model, cross[1], [texts[ti]], rows[order[:k]])[0] if cross else None
        for w, out in zip(weights, t2i):
            out.append(truth[ti, _reordered(order, k, new, scores[ti, order[:k]], w)])
    for ii in range(len(rows)):
        order = np.argsort(-scores[:, ii], kind="stable")
        new = rescore(cross[0], model, cross[1], [texts[j] for j in order[:k]], rows[ii:ii + 1])[:, 0] if cross else None
        for w, out in zip(weights, i2t):
            out.append(truth[_reordered(order, k, new, scores[order[:k], ii], w), ii])
    return [(recall_at(a), recall_at(b)) for a, b in zip(t2i, i2t)]


def _reordered(order: np.ndarray, k: int, cross: np.ndarray | None, joint: np.ndarray, weight: float) -> np.ndarray:
    if cross is None:
        return order
    head = order[:k]
    return np.concatenate([head[np.argsort(-fused(cross, joint, weight), kind="stable")], order[k:]])


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.process_time()
    out = fn()
    return out, (time.process_time() - start) / 60


def run(args: argparse.Namespace) -> Iterator[Row]:
    """The table's rows as they are measured."""
    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="matchlens-text-"))
    config = SceneConfig(seed=args.seed, train_references=args.train_refs, test_references=args.test_refs)
    if not (work / "scenes" / "scenes.json").is_file():
        write_collection(generate(config), work / "scenes")
    index_dir = work / "index"
    try:
        index = matchlens.open_index(index_dir)
    except MatchlensError:
        index = matchlens.build_index(work / "scenes" / "images", index_dir, spec=matchlens.PipelineSpec(max_side=128))
    train = read_captions(work / "scenes" / "captions.csv", index, split="train")
    test = read_captions(work / "scenes" / "captions.csv", index, split="test")
    vectors = np.asarray(index.vectors(), np.float32)
    print(f"scenes: {len(train)} train / {len(test)} test captions (test: held-out shape-colour pairs); "
          f"index {index.spec.describe()}, {index.size} images", file=sys.stderr)
    regions = RegionFeatures(index, args.regions, work / "scenes" / "annotations.json" if args.regions == "boxes" else None,
                             side=args.side)
    _, region_minutes = timed(lambda: regions.warm(np.arange(index.size)))
    print(f"region features ({args.regions}, side {args.side}): {region_minutes:.1f} CPU min", file=sys.stderr)
    for encoder in args.encoders.split(","):
        model, minutes = timed(lambda name=encoder: train_joint(index, train, encoder=name, epochs=args.joint_epochs))
        yield _row(f"joint ({encoder})", evaluate(model, test, vectors, args.k, None)[0], minutes)
        if encoder != args.encoders.split(",")[0]:
            continue  # the re-rankers on the first encoder only
        for label, name, gate, hardest in (("+ CAMP", "camp", True, True), ("+ CAMP, no gate", "camp", False, True),
                                           ("+ CAMP, BCE w/o hardest", "camp", True, False),
                                           ("+ CAAN", "caan", True, True), ("+ CAAN, hinge w/o hardest", "caan", True, False)):
            cross, seconds = make_cross(name, model, regions, train, gate, hardest, args.cross_epochs, hidden=args.hidden)
            alone, with_joint = evaluate(model, test, vectors, args.k, (cross, regions), (0.0, args.joint_weight))
            yield _row(f"{label} (k={args.k})", alone, seconds / 60)
            yield _row(f"{label} (k={args.k}) + joint score (w={args.joint_weight:g})", with_joint, seconds / 60)


def _row(label: str, recalls: Recalls, minutes: float) -> Row:
    return {"model": label, "t2i": recalls[0], "i2t": recalls[1], "minutes": minutes}


def print_table(rows: Iterable[Row]) -> None:
    """A markdown table, one line per row as soon as it is measured."""
    head = "| model | text→image R@1 | R@5 | R@10 | image→text R@1 | R@5 | R@10 | train min |"
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for r in rows:
        cells = [f"{r['t2i'][k]:.1f}" for k in KS] + [f"{r['i2t'][k]:.1f}" for k in KS]
        print(f"| {r['model']} | " + " | ".join(cells) + f" | {r['minutes']:.1f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table (``argv``: the command-line arguments)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-refs", type=int, default=200, help="train reference scenes (x5 images with targets)")
    parser.add_argument("--test-refs", type=int, default=100, help="test reference scenes")
    parser.add_argument("--encoders", default="bigru,sentence", help="text encoders (first: with the re-rankers)")
    parser.add_argument("--k", type=int, default=20, help="shortlist length the re-rankers re-score")
    parser.add_argument("--joint-epochs", type=int, default=30)
    parser.add_argument("--cross-epochs", type=int, default=8)
    parser.add_argument("--joint-weight", type=float, default=1.0, help="the fused rows: + w × joint score")
    parser.add_argument("--hidden", type=int, default=64, help="width of CAMP / CAAN")
    parser.add_argument("--regions", choices=("grid", "boxes"), default="grid")
    parser.add_argument("--side", type=int, default=192, help="longest side of the backbone map for regions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="folder for the scenes and index (kept; reused when present)")
    parser.add_argument("--quick", action="store_true", help="a tiny run (checks the script, numbers mean little)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_refs, args.test_refs, args.joint_epochs, args.cross_epochs = 30, 10, 3, 1
    print_table(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
