"""Batch search vs one process per query: the queries of a gt.json set through the CLI.

    python benchmarks/batch.py [--data ../shared/data/oxford5k_subset] [--index bench-out/oxford5k_subset]
                               [--limit N] [--rerank CHAIN]

"per process" runs ``matchlens search INDEX QUERY -k K --json`` once per query (a new process
each: imports, model session, index); "batch" runs ``matchlens search INDEX --queries LIST -k K``
once (one model load, one JSON line per query). Both rank by the same pipeline, so the script
also checks that every query's results are identical. The index is built with the default
preset when missing. Prints a markdown table and the machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("matchlens"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "oxford5k_subset")
    parser.add_argument("--index", type=Path, default=ROOT / "bench-out" / "oxford5k_subset")
    parser.add_argument("--limit", type=int, default=None, help="Use the first N queries (default: all).")
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--rerank", default=None)
    args = parser.parse_args()
    gt = json.loads((args.data / "gt.json").read_text())
    names = list(dict.fromkeys(q["image"] for q in gt["queries"]))[: args.limit]
    queries = [str((args.data / "images" / n).resolve()) for n in names]
    if not (args.index / "CURRENT").exists():
        listing = Path(tempfile.mkstemp(suffix=".txt")[1])
        listing.write_text("\n".join(str((args.data / "images" / n).resolve()) for n in gt["images"]))
        subprocess.run([EXE, "index", str(listing), "-i", str(args.index), "-q"], check=True)
    extra = ["--rerank", args.rerank] if args.rerank else []
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "queries.txt"
        listing.write_text("\n".join(queries) + "\n")
        start = time.perf_counter()
        batch = subprocess.run([EXE, "search", str(args.index), "--queries", str(listing), "-k", str(args.k), "-q",
                                *extra], capture_output=True, text=True, check=True).stdout
        batch_s = time.perf_counter() - start
    lines = [json.loads(line) for line in batch.splitlines()]
    start = time.perf_counter()
    single = [json.loads(subprocess.run([EXE, "search", str(args.index), q, "-k", str(args.k), "--json", *extra],
                                        capture_output=True, text=True, check=True).stdout) for q in queries]
    single_s = time.perf_counter() - start
    same = sum([r["id"] for r in line["results"]] == [r["id"] for r in one] for line, one in zip(lines, single))
    steps = {key: sum(line["timings_ms"].get(key, 0.0) for line in lines) / 1000
             for key in ("load_model", "decode", "extract", "search", "rerank")}
    print(f"{len(queries)} queries of {args.data.name}, index {args.index}, k={args.k}"
          + (f", rerank {args.rerank}" if args.rerank else "") + f"; load {os.getloadavg()[0]:.2f}")
    print("\n| mode | wall s | s/query | identical rankings |\n|---|---:|---:|---:|")
    print(f"| one process per query | {single_s:.1f} | {single_s / len(queries):.2f} | |")
    print(f"| batch (`--queries`, one model load) | {batch_s:.1f} | {batch_s / len(queries):.3f} | "
          f"{same}/{len(queries)} |")
    print(f"\nspeed-up {single_s / batch_s:.1f}x; batch time by step (s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))


if __name__ == "__main__":
    main()
