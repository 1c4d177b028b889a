"""Indexing throughput: images/s of `matchlens index` end to end, single and multi-scale.

Runs the real command-line tool (a fresh index each time) on the first N images of
../shared/data/oxford5k_subset and prints a table. Also times one query end to end
(decode + extract + search) on the index it built.

    python benchmarks/extract.py [--limit 200] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONFIGS = {"single-scale (gem)": ["--preset", "gem"], "multi-scale (gem-ms)": ["--preset", "gem-ms"]}


def run_index(images: list[Path], extra: list[str], workdir: Path) -> tuple[float, Path]:
    """Seconds taken by `matchlens index` on ``images`` (its own start-up included) and the index path."""
    listing = workdir / "list.txt"
    listing.write_text("\n".join(str(p) for p in images))
    index_dir = workdir / f"index-{len(list(workdir.iterdir()))}"
    t0 = time.perf_counter()
    subprocess.run([_matchlens(), "index", str(listing), "--index", str(index_dir), "-q", *extra], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, index_dir


def query_latency(index_dir: Path, query: Path, repeats: int = 10) -> float:
    """Median ms of decode + extract + search for one query, model already loaded (a server's view)."""
    import statistics

    import matchlens

    index = matchlens.open_index(index_dir)
    index.search(query, k=10)  # warm-up: loads the model and the vectors
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        index.search(query.read_bytes(), k=10)  # bytes: read + decode + extract + search, no memo
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def _matchlens() -> str:
    candidate = Path(sys.executable).with_name("matchlens")
    return str(candidate) if candidate.exists() else "matchlens"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()
    images = sorted((Path(args.data) / "oxford5k_subset" / "images").glob("*.jpg"))[: args.limit]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in CONFIGS.items():
            seconds, index_dir = run_index(images, extra, Path(tmp))
            latency = query_latency(index_dir, images[0])
            rows.append((label, len(images), seconds, len(images) / seconds, latency))
    print(f"\n`matchlens index` on {len(images)} oxford5k_subset images (640 px), {os.cpu_count()} CPU cores, "
          "PyTorch eager on CPU, process start-up included\n")
    print("| pipeline | images | seconds | images/s | query ms (decode+extract+search) |")
    print("|---|---|---|---|---|")
    for label, n, seconds, rate, latency in rows:
        print(f"| {label} | {n} | {seconds:.1f} | {rate:.1f} | {latency:.0f} |")


if __name__ == "__main__":
    main()
