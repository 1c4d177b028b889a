"""Readers against a committing writer: R reader processes open the index, search it and read its
descriptors in a loop while one writer publishes M generations (database-side augmentation
switched on and off, which rewrites every vector). Prints reads, failures and the generations
left on disk; a failure is any exception a reader sees.

    python benchmarks/readers.py [--readers 8] [--commits 200] [--work bench-out/readers]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

import matchlens
from matchlens.config import PipelineSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import make_scene  # noqa: E402  (the suite's generated scenes)


def build(work: Path) -> Path:
    """A 10-scene index at 128 px (fast to write, real files)."""
    shutil.rmtree(work, ignore_errors=True)
    (work / "scenes").mkdir(parents=True)
    for i in range(10):
        make_scene(i).save(work / "scenes" / f"{i}.jpg")
    root = work / "index"
    matchlens.build_index(work / "scenes", root, spec=PipelineSpec(max_side=128)).store.close()
    return root


def reader(root: str, stop, results) -> None:
    """Open, search, read descriptors, close — until ``stop``; report (reads, failures)."""
    reads, failures = 0, []
    while not stop.is_set():
        try:
            index = matchlens.open_index(root)
            query = np.asarray(index.vectors()[0], dtype=np.float32)
            index.search_vectors(query[None, :], 3)
            float(np.asarray(index.store.descriptors()).sum())
            index.store.close()
            reads += 1
        except Exception as exc:  # noqa: BLE001 - every failure is what this benchmark counts
            failures.append(f"{type(exc).__name__}: {exc}")
    results.put((reads, failures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--work", default="bench-out/readers")
    args = parser.parse_args()
    root = build(Path(args.work))
    ctx = multiprocessing.get_context("fork")
    results, stop = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=reader, args=(str(root), stop, results)) for _ in range(args.readers)]
    for proc in procs:
        proc.start()
    start = time.perf_counter()
    index = matchlens.open_index(root)
    for i in range(args.commits):
        index.store.close()
        index, _ = index.set_dba({"k": 2} if i % 2 == 0 else None)
    seconds = time.perf_counter() - start
    stop.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join()
    index.store.close()
    failures = [f for _, found in outcomes for f in found]
    print("| readers | commits | seconds | reads | failures | generations left |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.readers} | {args.commits} | {seconds:.0f} | {sum(r for r, _ in outcomes)} | {len(failures)} "
          f"| {len(list(root.glob('gen-*')))} |")
    for failure in failures[:5]:
        print("  ", failure)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
