"""What re-ranking buys: mAP change and added ms/query of each reranker and of useful chains.

On ../shared/data/oxford5k_subset (the 10 official queries cropped to their boxes, and all 114
whole-image queries) and ukbench_subset, with the default pipeline. Indexes are built once into
--work (reused by later runs). The added latency is measured on the collection itself and, for
the query-time part, with 100,000 extra distractor vectors appended (generated from the real
descriptors: random sparse mixtures of collection vectors plus noise, L2-normalised, so they
look like descriptors rather than isotropic noise).

    python benchmarks/rerank.py [--work bench-out] [--data ../shared/data] [--chains CHAIN ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

import matchlens
from matchlens.evaluate.protocol import evaluate_index
from matchlens.io.formats import load_gt_json
from matchlens.rerank import QueryInput, Shortlist, chain_depth, parse_chain, run_chain

CHAINS = [
    "", "aqe:k=2", "alpha_qe:k=10,alpha=3", "kr:k=100", "diffusion:k=1000",
    "diffusion:k=1000,knn=20,query_knn=5", "sv:k=100", "sv:k=100,alpha_qe:k=10",
    "dba", "dba+alpha_qe:k=10,alpha=3", "dba+sv:k=100,alpha_qe:k=10,alpha=3",
]
DBA = {"k": 3}


def build(data: Path, name: str, work: Path) -> matchlens.Index:
    """The default-preset index of a shared set (built once, then reused)."""
    dataset = load_gt_json(data / name)
    return matchlens.build_index([str(dataset.image_path(n)) for n in dataset.images], work / name)


def with_dba(index: matchlens.Index, on: bool) -> matchlens.Index:
    """The same index with database-side augmentation switched on or off (a new generation)."""
    if bool(index.manifest.get("dba")) == on:
        return index
    new = index.set_dba(DBA if on else None)[0]
    new.pipeline.encoder._memo = index.pipeline.encoder._memo  # query vectors do not depend on DBA: keep the memo
    return new


def evaluate(index, dataset, protocol: str, chain: str) -> tuple[float, float]:
    """(mAP %, mean ms per query of the whole rank() call)."""
    t0 = time.perf_counter()
    evaluation = evaluate_index(index.pipeline, dataset, protocol, rerank=chain or None)
    ms = 1000 * (time.perf_counter() - t0) / max(1, len(evaluation.outcomes))
    return evaluation.summary["mAP"], ms


class BigContext:
    """A rerank context over the collection plus synthetic distractors (query-time cost only)."""

    def __init__(self, index: matchlens.Index, extra: int, seed: int = 0) -> None:
        import faiss

        real = np.ascontiguousarray(index.vectors(), dtype=np.float32)
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, len(real), size=(extra, 3))
        mix = real[picks].sum(axis=1) + 0.05 * rng.standard_normal((extra, real.shape[1])).astype(np.float32)
        fake = mix / np.linalg.norm(mix, axis=1, keepdims=True)
        self.vectors = np.concatenate([real, fake.astype(np.float32)])
        self._index = faiss.IndexFlatIP(self.vectors.shape[1])
        self._index.add(self.vectors)
        self.inner = index
        self.generation = f"{index.generation}-plus{extra}"
        self._cache = index.root / "cache"

    def search(self, vectors, k):
        return self._index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def image_path(self, row):
        return self.inner.entry_for_row(row % self.inner.size).path

    def image_sha256(self, row):
        return self.inner.entry_for_row(row % self.inner.size).sha256

    def cache_dir(self, kind):
        folder = self._cache / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def big_latency(ctx: BigContext, index, dataset, chain: str, queries: int = 20) -> float:
    """Median ms per query of search + chain over the enlarged collection (vectors memoised)."""
    steps = parse_chain(chain)
    times = []
    for q in dataset.queries[:queries]:
        image, vec = index.encode_query(dataset.image_path(q.image), keep_image=any(s.needs_image for s in steps))
        t0 = time.perf_counter()
        scores, rows = ctx.search(vec[None, :], max(100, chain_depth(steps)))
        run_chain(steps, QueryInput(vec, image, None), Shortlist(rows[0], scores[0]), ctx)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--work", default="bench-out")
    parser.add_argument("--chains", nargs="*", default=CHAINS)
    parser.add_argument("--distractors", type=int, default=100_000)
    args = parser.parse_args()
    data, work = Path(args.data), Path(args.work)
    names = ("oxford5k_subset", "ukbench_subset")
    datasets = {name: load_gt_json(data / name) for name in names}
    indexes = {name: with_dba(build(data, name, work), False) for name in names}  # updated as DBA toggles
    big = BigContext(indexes["oxford5k_subset"], args.distractors) if args.distractors else None
    for name in names:  # warm-up: extract every query once, so ms/query measures search + re-ranking
        for protocol in (("full", "cropped") if name == "oxford5k_subset" else ("full",)):
            evaluate(indexes[name], datasets[name], protocol, "")
    rows = []
    for spec in args.chains:
        dba, _, chain = spec.partition("+") if spec.startswith("dba") else ("", "", spec)
        line = {"chain": spec or "(none: global search)"}
        for name in names:
            indexes[name] = with_dba(indexes[name], bool(dba))
            for protocol in (("full", "cropped") if name == "oxford5k_subset" else ("full",)):
                line[f"{name}/{protocol}"], line[f"ms/{name}/{protocol}"] = evaluate(
                    indexes[name], datasets[name], protocol, chain)
        line["ms_big"] = float("nan")
        if big is not None and not dba:
            line["ms_big"] = big_latency(big, indexes["oxford5k_subset"], datasets["oxford5k_subset"], chain)
        rows.append(line)
        print(line, file=sys.stderr, flush=True)
    ox_index = indexes["oxford5k_subset"]
    base = rows[0]
    print(f"\ndefault pipeline ({ox_index.spec.describe()}); mAP in %, change against the global search in "
          "brackets; ms/query = the whole query (extraction memoised, so search + re-ranking) on oxford5k_subset "
          f"({ox_index.size} images, whole-image queries); +100k = search + re-ranking with {args.distractors:,} "
          "extra distractor vectors (median of 20 queries)\n")
    print("| chain | Oxford whole (114 q) | Oxford cropped (10 q) | UKBench mAP | ms/query (1k) | ms/query (+100k) |")
    print("|---|---|---|---|---|---|")
    for line in rows:
        cells = [_delta(line, base, key) for key in ("oxford5k_subset/full", "oxford5k_subset/cropped", "ukbench_subset/full")]
        big_ms = "-" if np.isnan(line["ms_big"]) else f"{line['ms_big']:.0f}"
        print(f"| {line['chain']} | {' | '.join(cells)} | {line['ms/oxford5k_subset/full']:.0f} | {big_ms} |")
    for name in names:
        with_dba(indexes[name], False)


def _delta(line: dict, base: dict, key: str) -> str:
    if line is base:
        return f"{line[key]:.1f}"
    return f"{line[key]:.1f} ({line[key] - base[key]:+.1f})"


if __name__ == "__main__":
    main()
