"""Long-tailed recognition benchmark: BBN (P1k) against its baselines, the recognizer against the
retrieval-only kNN vote on landmarks, and SICoT (P1l) titles against visual only.

    python benchmarks/longtail.py [--quick] [--parts a,b,c] [--index bench-out/oxford5k_subset]

Frozen / trained: the EfficientNet-Lite0 trunk (everything before the last stage) is frozen and
its feature maps are computed once per image; the last stage (one copy, two for BBN), the
classifier(s) and the title stream are trained, SGD + cosine, as ``matchlens train-recognizer``
does on a CPU (the same ``matchlens.recognize.fit`` code). Per-class top-1 is averaged over the
head / medium / tail classes and over all classes (balanced test sets: overall = mean per class).

(a) scikit-learn's bundled digits (1,797 real 8×8 scans of handwritten digits, 10 classes),
upsampled to 112 px. Per class, half the images form a pool and half the balanced test set; the
training set keeps n_i = 90·r^(−i/9) pool images of digit i (imbalance r = 10, 50, 100: digit 0
is the head, digit 9 the tail). Head = digits 0-2, medium 3-6, tail 7-9. CE, RS, RW, BBN; mean
of ``--seeds`` runs (different pools, subsets and initialisations).

(b) ../shared/data/oxford5k_subset: the 9 landmarks with positives (45 down to 2 images; 114
images). Leave-landmark-images-out, 2 folds: each landmark's images alternate between the folds;
a fold's images are the queries, the other fold's are the labelled images (both landmarks with 2
images keep 1 labelled image). Recognizers (ce, rs, bbn; 224 px) against the kNN vote over the
labelled images' index descriptors (the default-preset index at --index, read-only; whole-image
queries, so the stored descriptor is the query descriptor; k = 1 and 5). Head = landmarks with
≥ 14 images, medium 4-8, tail 2.

(c) SICoT on (a) at imbalance 100 and 50: generated noisy titles for the *training* images only
(the class word — one of three synonyms — with probability 0.7, otherwise a wrong class's word;
plus 2-4 filler words in random order, e.g. "quality nought official original"); word vectors from
the MiniLM word-piece table; λ = 1. Visual only (CE) vs SICoT (CE + λ·CE(max-mixed)); the test
images have no titles.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from matchlens.models import load_backbone  # noqa: E402
from matchlens.recognize import RecognitionNet, Recognizer, fit, image_batch, knn_predict, trunk_features  # noqa: E402
from matchlens.recognize.fit import Titles  # noqa: E402
from matchlens.recognize.sicot import TitleStream, encode_titles  # noqa: E402

METHODS = ("ce", "rs", "rw", "bbn")
WORDS = {0: ["zero", "nought", "nil"], 1: ["one", "single", "ace"], 2: ["two", "pair", "double"],
         3: ["three", "triple", "trio"], 4: ["four", "quad", "quartet"], 5: ["five", "quintet", "fifth"],
         6: ["six", "sextet", "sixth"], 7: ["seven", "septet", "seventh"], 8: ["eight", "octet", "eighth"],
         9: ["nine", "ninth", "nonet"]}
FILLER = ["free", "shipping", "new", "sale", "hot", "original", "quality", "2024", "official", "discount", "best", "gift"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer epochs, imbalance 100 only.")
    parser.add_argument("--parts", default="a,b,c")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "oxford5k_subset")
    parser.add_argument("--index", type=Path, default=ROOT / "bench-out" / "oxford5k_subset")
    parser.add_argument("--json", type=Path, help="Also write every number here.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.seeds, args.epochs = 1, 8
    backbone = load_backbone("tf_efficientnet_lite0")
    report: dict = {}
    parts = set(args.parts.split(","))
    digits = _digits(backbone) if parts & {"a", "c"} else None
    if "a" in parts:
        report["a"] = part_a(backbone, digits, (100,) if args.quick else (10, 50, 100), args.seeds, args.epochs)
    if "b" in parts:
        report["b"] = part_b(backbone, args.data, args.index, args.epochs + 10)
    if "c" in parts:
        report["c"] = part_c(backbone, digits, (100,) if args.quick else (100, 50), args.seeds, args.epochs)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


# --- (a) ---------------------------------------------------------------------------------------

def _digits(backbone):
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images * 255 / 16).astype(np.uint8)
    start = time.monotonic()
    net = RecognitionNet(backbone, 10)
    maps = trunk_features(net, image_batch(list(images), 112))
    print(f"digits: {len(images)} images, frozen-trunk maps {tuple(maps.shape[1:])} in {time.monotonic() - start:.0f} s",
          flush=True)
    return maps, data.target.astype(np.int64)


def _longtail_split(labels: np.ndarray, ratio: int, seed: int, n_max: int = 90):
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(10):
        rows = rng.permutation(np.where(labels == c)[0])
        keep = max(1, round(n_max * ratio ** (-c / 9)))
        train.append(rows[:keep])
        test.append(rows[n_max:])
    return np.concatenate(train), np.concatenate(test)


def _per_class(predicted: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    return np.array([np.mean(predicted[truth == c] == c) for c in range(classes)])


def _groups(acc: np.ndarray, head: list[int], medium: list[int], tail: list[int]) -> dict:
    return {"head": float(acc[head].mean()), "medium": float(acc[medium].mean()), "tail": float(acc[tail].mean()),
            "all": float(acc.mean())}


def _train_eval(backbone, method, maps, labels, train, test, classes, epochs, seed, titles=None):
    torch.manual_seed(seed)  # the classifiers' initialisation: equal for equal seeds across parts
    net = RecognitionNet(backbone, classes, 2 if method == "bbn" else 1)
    fit(net, method, maps[train], labels[train], epochs=epochs, batch=32, lr=0.01, seed=seed, titles=titles)
    rec = Recognizer(net, [str(c) for c in range(classes)], backbone.name, backbone.weights_id, method, 0, False)
    return rec.predict_maps(maps[test]).argmax(1).numpy()


def part_a(backbone, digits, ratios, seeds, epochs) -> dict:
    maps, labels = digits
    out: dict = {}
    for ratio in ratios:
        for method in METHODS:
            start, runs = time.monotonic(), []
            for seed in range(seeds):
                train, test = _longtail_split(labels, ratio, seed)
                predicted = _train_eval(backbone, method, maps, labels, train, test, 10, epochs, seed)
                runs.append(_per_class(predicted, labels[test], 10))
            out[f"{ratio}/{method}"] = _groups(np.mean(runs, 0), [0, 1, 2], [3, 4, 5, 6], [7, 8, 9]) | {
                "seconds": (time.monotonic() - start) / seeds}
            _row(f"(a) digits r={ratio}", method, out[f"{ratio}/{method}"])
    _table("(a) long-tailed digits (sklearn), per-class top-1 %", out)
    return out


# --- (b) ---------------------------------------------------------------------------------------

def part_b(backbone, data: Path, index_dir: Path, epochs: int) -> dict:
    gt = json.loads((data / "gt.json").read_text())
    groups = {g: sorted(names) for g, names in gt["groups"].items() if len(names) >= 2}
    classes = sorted(groups, key=lambda g: -len(groups[g]))
    names = [n for g in classes for n in groups[g]]
    labels = np.array([classes.index(g) for g in classes for _ in groups[g]])
    fold = np.concatenate([np.arange(len(groups[g])) % 2 for g in classes])
    sizes = np.array([len(groups[g]) for g in classes])
    head, medium, tail = (list(np.where(sizes >= 14)[0]), list(np.where((sizes >= 4) & (sizes < 14))[0]),
                          list(np.where(sizes < 4)[0]))
    print(f"(b) {len(classes)} landmarks, {len(names)} images: " + ", ".join(f"{g} {len(groups[g])}" for g in classes),
          flush=True)
    net = RecognitionNet(backbone, len(classes))
    start = time.monotonic()
    maps = trunk_features(net, image_batch([str(data / "images" / n) for n in names], 224))
    print(f"(b) frozen-trunk maps {tuple(maps.shape[1:])} in {time.monotonic() - start:.0f} s", flush=True)
    vectors = _index_vectors(index_dir, data, names)
    out: dict = {}
    rows: dict[str, list] = {}
    for name in ("ce", "rs", "bbn", "knn k=1", "knn k=5"):
        predicted = np.zeros(len(names), np.int64)
        for f in (0, 1):
            train, test = np.where(fold != f)[0], np.where(fold == f)[0]
            if name.startswith("knn"):
                k = int(name.split("=")[1])
                votes = knn_predict(vectors[test] @ vectors[train].T, labels[train], [str(c) for c in range(len(classes))], k)
                predicted[test] = [int(v.label) for v in votes]
            else:
                predicted[test] = _train_eval(backbone, name, maps, labels, train, test, len(classes), epochs, 0)
        rows[name] = list(predicted)
        out[name] = _groups(_per_class(predicted, labels, len(classes)), head, medium, tail) | {
            "images": float(np.mean(predicted == labels))}
        _row("(b) oxford", name, out[name])
    _table("(b) oxford5k_subset landmark identification, 2-fold leave-images-out, per-class top-1 %", out,
           extra="images")
    return out


def _index_vectors(index_dir: Path, data: Path, names: list[str]) -> np.ndarray:
    from matchlens.api import build_index, open_index

    if not index_dir.exists():
        print(f"(b) no index at {index_dir}: building one over the {len(names)} landmark images", flush=True)
        build_index([str(data / "images" / n) for n in names], index_dir)
    idx = open_index(index_dir)
    rows = {Path(idx.entry_for_row(r).path).name: r for r in range(idx.size)}
    vectors = np.asarray(idx.vectors())[[rows[n] for n in names]].astype(np.float32)
    print(f"(b) kNN: the stored descriptors of the index {idx.root} ({idx.size} images)", flush=True)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# --- (c) ---------------------------------------------------------------------------------------

def noisy_title(label: int, rng: np.random.Generator, correct: float = 0.7) -> str:
    """A generated product-style title: the class word (or a wrong class's) among filler words."""
    word_class = label if rng.random() < correct else int(rng.choice([c for c in range(10) if c != label]))
    words = [str(rng.choice(WORDS[word_class]))] + list(rng.choice(FILLER, int(rng.integers(2, 5)), replace=False))
    return " ".join(rng.permutation(words))


def part_c(backbone, digits, ratios, seeds, epochs) -> dict:
    maps, labels = digits
    out: dict = {}
    for ratio in ratios:
        for name in ("visual only (ce)", "SICoT (ce + titles)"):
            runs = []
            for seed in range(seeds):
                train, test = _longtail_split(labels, ratio, seed)
                titles = None
                if name.startswith("SICoT"):
                    rng = np.random.default_rng(100 + seed)
                    text = [noisy_title(int(labels[i]), rng) for i in train]
                    ids, mask, table, frozen = encode_titles(text, "minilm")
                    # fit draws rows of maps[train], so the titles are in the order of train
                    titles = Titles(ids, mask, TitleStream(table, frozen, 1280, lam=1.0))
                    if seed == 0:
                        print(f"(c) example titles: {text[:3]}", flush=True)
                predicted = _train_eval(backbone, "ce", maps, labels, train, test, 10, epochs, seed, titles)
                runs.append(_per_class(predicted, labels[test], 10))
            out[f"{ratio}/{name}"] = _groups(np.mean(runs, 0), [0, 1, 2], [3, 4, 5, 6], [7, 8, 9])
            _row(f"(c) digits r={ratio}", name, out[f"{ratio}/{name}"])
    _table("(c) SICoT, noisy generated titles in training only, per-class top-1 %", out)
    return out


# --- printing ----------------------------------------------------------------------------------

def _row(part: str, name: str, values: dict) -> None:
    print(f"{part} {name}: " + ", ".join(f"{k} {100 * v:.1f}" if k != "seconds" else f"{v:.0f} s"
                                         for k, v in values.items()), flush=True)


def _table(title: str, rows: dict, extra: str | None = None) -> None:
    cols = ["head", "medium", "tail", "all"] + ([extra] if extra else [])
    print(f"\n{title}\n| setting | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{100 * values[c]:.1f}" for c in cols) + " |")
    print(flush=True)


if __name__ == "__main__":
    main()
