"""Queries beyond a photo on the generated CSS-like scenes (issue 22): TIRG and its baselines, the
text encoders, and (when their scripts are present) text → image and relation queries.

    python benchmarks/queries.py [--part all|tirg|text|relations] [--train-refs 400] [--test-refs 150]
                                 [--epochs 20] [--work DIR] [--quick]

--part tirg (this script). TIRG's CSS protocol on generated scenes (``matchlens.queries.scenes``,
64 px, 2-4 objects, 3 shapes × 8 colours × 2 sizes × 3×3 cells): every reference scene gets
``--mods`` modifications (add / remove / change, TIRG's templates). Train triplets never show the
6 held-out (shape, colour) pairs; every test triplet has one in its reference or its target.
All scenes are indexed with matchlens' default pipeline (preset ``default`` = rmac-ms, embedded
tf_efficientnet_lite0) at 128 px (``--side``; the 640 px default costs ~25× more on one thread).
Composers map the reference's own searchable vector (index descriptor, frozen) and the text into
that space; a test query ranks the test images (its own reference excluded); a hit is any image
with the target's content (TIRG's R@k). Table 1: composers (LSTM text, soft triplet loss, plus
TIRG with the batch-softmax loss); Table 2: TIRG with each text encoder. R@k on held-out test
combinations and R@1 on the train triplets themselves; CPU training minutes on one thread,
measured under shared load.

--part text / relations: ``main()`` of benchmarks/queries_text.py and queries_relations.py (written
with them; their own arguments via --text-args=... / --relations-args=..., e.g. --text-args=--quick).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
Row = dict[str, Any]


def build_set(args: argparse.Namespace, work: Path) -> tuple[Any, Any]:
    """The generated scenes (written to ``work/css``) and their index (``work/index``; reused)."""
    import matchlens
    from matchlens.config import spec_from_preset
    from matchlens.queries.scenes import SceneConfig, generate, read_collection, write_collection

    config = SceneConfig(seed=args.seed, image_size=64, train_references=args.train_refs,
                         test_references=args.test_refs, mods_per_reference=args.mods)
    folder = work / "css"
    if (folder / "scenes.json").is_file() and read_collection(folder).config == config:
        scene_set = read_collection(folder)
    else:
        scene_set = generate(config)
        write_collection(scene_set, folder)
    start = time.perf_counter()
    index = matchlens.build_index(folder / "images", work / "index", spec=spec_from_preset("default", max_side=args.side),
                                  replace=True)
    print(f"scenes: {len(scene_set.scenes)} images ({len(scene_set.triplets_of('train'))} train / "
          f"{len(scene_set.triplets_of('test'))} test triplets); index [{index.spec.describe()}] {index.dim}-D, "
          f"built or checked in {time.perf_counter() - start:.0f} s")
    return scene_set, index


def split_arrays(scene_set: Any, index: Any, split: str) -> dict[str, Any]:
    """Reference vectors, texts, target vectors and ids, the split's gallery and correctness."""
    from matchlens.queries.modify_train import reference_vectors

    row_of = {Path(e.path).stem: int(e.row) for e in index.entries if e.status == "indexed" and e.row is not None}
    triplets = scene_set.triplets_of(split)
    gallery_ids = [s.id for s in scene_set.split(split)]
    column = {sid: i for i, sid in enumerate(gallery_ids)}
    refs = np.array([row_of[t.reference] for t in triplets])
    targets = np.array([row_of[t.target] for t in triplets])
    keys = [scene_set.scenes[s].key() for s in gallery_ids]
    correct = np.array([[k == scene_set.scenes[t.target].key() for k in keys] for t in triplets])
    stored = np.asarray(index.vectors(), np.float32)
    return {"references": reference_vectors(index, refs), "texts": [t.text for t in triplets],
            "targets": stored[targets], "target_ids": targets, "gallery": stored[[row_of[s] for s in gallery_ids]],
            "correct": correct, "exclude": np.array([column[t.reference] for t in triplets])}


def run_model(label: str, settings: Any, train: dict, test: dict, space: Any) -> Row:
    """Train one composer and measure it."""
    from matchlens.queries.modify_train import evaluate_composer, train_composer

    start = time.perf_counter()
    model = train_composer(train["references"], train["texts"], train["targets"], train["target_ids"], space,
                           settings)
    minutes = (time.perf_counter() - start) / 60
    held = evaluate_composer(model, test["references"], test["texts"], test["gallery"], test["correct"],
                             test["exclude"])
    seen = evaluate_composer(model, train["references"], train["texts"], train["gallery"], train["correct"],
                             train["exclude"], ks=(1,))
    row = {"model": label, **{f"R@{k}": v for k, v in held.items()}, "train R@1": seen[1], "minutes": round(minutes, 2)}
    print("  " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return row


def part_tirg(args: argparse.Namespace) -> list[list[Row]]:
    """Tables 1 and 2."""
    from matchlens.queries.modify import DescriptorSpace
    from matchlens.queries.modify_train import ComposerSettings
    from matchlens.queries.textenc import minilm_available

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="matchlens-queries-"))
    work.mkdir(parents=True, exist_ok=True)
    scene_set, index = build_set(args, work)
    train, test = split_arrays(scene_set, index, "train"), split_arrays(scene_set, index, "test")
    space = DescriptorSpace.of(index)

    def settings(**kw: Any) -> ComposerSettings:
        base = {"text": "lstm", "epochs": args.epochs, "batch": 32, "lr": 1e-3, "hidden": args.hidden,
                "seed": args.seed}
        return ComposerSettings(**{**base, **kw})

    print("Table 1: composers (LSTM text)")
    table1 = [run_model(f"{name} ({loss})", settings(composer=name, loss=loss), train, test, space)
              for name, loss in (("tirg", "triplet"), ("tirg", "softmax"), ("film", "triplet"),
                                 ("concat", "triplet"), ("image", "triplet"), ("text", "triplet"))]
    print("Table 2: TIRG by text encoder")
    encoders = ["lstm", "bigru"] + (["pieces", "sentence"] if minilm_available() else [])
    # TIRG + LSTM is Table 1's first row (same settings and seed): not trained twice
    table2 = [{**table1[0], "model": "tirg + lstm"}] + [
        run_model(f"tirg + {name}", settings(composer="tirg", text=name), train, test, space) for name in encoders[1:]]
    return [table1, table2]


def print_table(title: str, rows: list[Row]) -> None:
    """A markdown table of ``rows``."""
    if not rows:
        return
    keys = list(rows[0])
    print(f"\n{title}\n")
    print("| " + " | ".join(keys) + " |")
    print("|" + "|".join("---" for _ in keys) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


def run_other(name: str, extra: str) -> None:
    """``main()`` of benchmarks/<name>.py when that script exists."""
    path = HERE / f"{name}.py"
    if not path.is_file():
        print(f"\n({name}.py is not here: its part is skipped)")
        return
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(f"\n== {name} ==", flush=True)
    module.main(shlex.split(extra))


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="all", choices=("all", "tirg", "text", "relations"))
    parser.add_argument("--train-refs", type=int, default=400, help="train reference scenes")
    parser.add_argument("--test-refs", type=int, default=150, help="test reference scenes")
    parser.add_argument("--mods", type=int, default=4, help="modifications (target scenes) per reference")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs per composer")
    parser.add_argument("--hidden", type=int, default=512, help="composer hidden width")
    parser.add_argument("--side", type=int, default=128, help="longest side the index's pipeline describes at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="folder for the scenes and index (kept; reused when present)")
    parser.add_argument("--quick", action="store_true", help="a tiny run (checks the script; numbers mean little)")
    parser.add_argument("--text-args", default="", help="arguments for benchmarks/queries_text.py")
    parser.add_argument("--relations-args", default="", help="arguments for benchmarks/queries_relations.py")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_refs, args.test_refs, args.epochs = 24, 8, 2
    torch.set_num_threads(1)
    if args.part in ("all", "tirg"):
        tables = part_tirg(args)
        print_table("Table 1 — composers on held-out combinations (LSTM text; R@k %, CPU minutes)", tables[0])
        print_table("Table 2 — TIRG by text encoder (R@k %, CPU minutes)", tables[1])
    if args.part in ("all", "text"):
        run_other("queries_text", args.text_args)
    if args.part in ("all", "relations"):
        run_other("queries_relations", args.relations_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
