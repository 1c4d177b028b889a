"""Scale benchmark: vector backends at N (default 1,000,000) descriptors of the default pipeline.

Data. The real descriptors of ../shared/data/oxford5k_subset (default preset rmac-ms, 1280-d) are
computed once (or read from an existing default-preset index of that folder) and cached under
--work. A Gaussian mixture is fitted to their PCA spectrum: k-means "places" of about 16 images,
whose per-component between-place and within-place variances give a two-level model (place
centre ~ N(mean, B), image ~ N(centre, W) in the PCA basis), then clipped at 0 (the real
descriptors are non-negative) and L2-normalised. (Isotropic random vectors would be far harder than real
data and mislead.) N - 1009 vectors are drawn from it and all 1009 real images are planted at
random rows; the 114 whole-image queries are real images of the set (their positives are the other
queries of their landmark), so, as in revisitop, each query's own row is ignored: recall counts
the true neighbours other than itself, and AP treats it as junk. The generated base is a
memory-mapped .npy under --work, reused by later runs.

Measured per backend (through the same backend classes and exact re-ranking the index uses):
build time (training + adding), bytes/vector, ms/query with 1 and 2 threads, single queries and
one batch of all queries, recall@1/10/100 against exact search, and mAP@100 of the 114 queries on
the planted Oxford images; a recall-vs-latency sweep and plot; build-time linearity (N/4, N/2,
N); and the diffusion graph built from the approximate index (offline, stored, then queried).

    python benchmarks/scale.py                      # N = 1,000,000 (about an hour on 2 cores)
    python benchmarks/scale.py --n 100000           # minutes
    python benchmarks/scale.py --n 1000000 --hnsw-n 250000 --milvus-n 250000 --diffusion-n 1000000

HNSW and Milvus Lite can be measured on a prefix of the base (--hnsw-n, --milvus-n) where a
full build does not fit the time; their rows then say at which N they were measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PLACE_SIZE = 16      # images per synthetic "place" (the real set: 1009 images in ~64 k-means places)
K = 100              # depth of every search: recall@1/10/100 come from one call
SWEEP_K = K          # depth of the recall@10-vs-latency sweeps (--sweep-k 10: what a top-10 search costs)



# --- real descriptors ----------------------------------------------------------------------------

def real_descriptors(data: Path, work: Path, source: Path | None) -> dict:
    """Names, raw descriptors and queries of oxford5k_subset with the default preset (cached)."""
    cache = work / "oxford5k_subset-default.npz"
    if cache.exists():
        saved = np.load(cache, allow_pickle=False)
        return {"names": list(saved["names"]), "vectors": saved["vectors"]}
    import matchlens
    from matchlens.config import spec_from_preset
    from matchlens.io.formats import load_gt_json

    dataset = load_gt_json(data / "oxford5k_subset")
    paths = [str(dataset.image_path(n)) for n in dataset.images]
    default = spec_from_preset("default").describe()
    candidates = [p for p in (source, ROOT / "bench-out" / "oxford5k_subset") if p is not None]
    index = next((matchlens.open_index(p) for p in candidates if _is_default_index(p, default)), None)
    if index is None:
        print(f"computing the default-preset descriptors of {len(paths)} images (minutes) ...", flush=True)
        index = matchlens.build_index(paths, work / "oxford5k_subset")
    raw = index.store.descriptors()  # raw: unaffected by DBA
    by_name = {Path(e.path).name: np.asarray(raw[e.row]) for e in index.entries if e.row is not None}
    names = [n for n in dataset.images if n in by_name]
    vectors = np.stack([by_name[n] for n in names]).astype(np.float32)
    np.savez(cache, names=np.array(names), vectors=vectors)
    return {"names": names, "vectors": vectors}


def _is_default_index(path: Path, default: str) -> bool:
    import matchlens

    try:
        index = matchlens.open_index(path)
    except Exception:
        return False
    return index.spec.describe() == default and index.manifest.get("whitening_state") == "none"


# --- the generator -------------------------------------------------------------------------------

@dataclass
class Mixture:
    """Two-level Gaussian mixture in the PCA basis of real descriptors."""

    mean: np.ndarray      # (d,)
    basis: np.ndarray     # (r, d) principal directions
    between: np.ndarray   # (r,) variance of place centres per component
    within: np.ndarray    # (r,) variance of images around their place per component

    @classmethod
    def fit(cls, x: np.ndarray, places: int, seed: int = 0) -> "Mixture":
        import faiss

        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        keep = s > s[0] * 1e-4
        basis = vt[keep]
        z = ((x - mean) @ basis.T).astype(np.float32)
        km = faiss.Kmeans(z.shape[1], places, niter=25, seed=seed)
        km.train(z)
        _, assign = km.index.search(z, 1)
        centres = km.centroids[assign[:, 0]]
        within = ((z - centres) ** 2).mean(0)
        between = np.maximum(z.var(0) - within, 0.0)
        return cls(mean, basis, between, within)

    def centres(self, places: int, rng: np.random.Generator) -> np.ndarray:
        """Random place centres (PCA coordinates)."""
        return rng.standard_normal((places, len(self.between)), dtype=np.float32) * np.sqrt(self.between)

    def draw(self, centres: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` L2-normalised, non-negative vectors, each around a random one of ``centres``."""
        z = centres[rng.integers(0, len(centres), n)]
        z = z + rng.standard_normal((n, len(self.within)), dtype=np.float32) * np.sqrt(self.within)
        x = np.maximum(self.mean + z @ self.basis, 0.0)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` vectors from ``n / PLACE_SIZE`` fresh places."""
        return self.draw(self.centres(max(1, n // PLACE_SIZE), rng), n, rng)


def make_base(n: int, real: dict, work: Path, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The (n, d) memory-mapped base (generated + planted real images) and the planted rows by name."""
    path = work / f"base-{n}-seed{seed}.npy"
    planted_names = list(real["names"])
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=len(planted_names), replace=False))
    planted = dict(zip(planted_names, rows.tolist()))
    if path.exists():
        return np.load(path, mmap_mode="r"), planted
    x = real["vectors"]
    mixture = Mixture.fit(x, max(2, len(x) // PLACE_SIZE), seed)
    base = np.lib.format.open_memmap(work / f".{path.name}.part", mode="w+", dtype=np.float32, shape=(n, x.shape[1]))
    centres = mixture.centres(max(1, n // PLACE_SIZE), rng)
    for start in range(0, n, 50_000):
        stop = min(n, start + 50_000)
        base[start:stop] = mixture.draw(centres, stop - start, rng)
    by_name = dict(zip(real["names"], x))
    for name, row in planted.items():
        base[row] = by_name[name]
    base.flush()
    del base
    os.replace(work / f".{path.name}.part", path)
    return np.load(path, mmap_mode="r"), planted


def realism(real: np.ndarray, mixture_sample: np.ndarray) -> dict:
    """Nearest-neighbour similarity and spectrum of real vs generated sets of equal size."""
    def nn(a, b, same):
        s = a @ b.T
        if same:
            np.fill_diagonal(s, -1)
        return float(np.median(s.max(1)))

    def top_var(a, k=10):
        s = np.linalg.svd(a - a.mean(0), compute_uv=False) ** 2
        return float(s[:k].sum() / s.sum())

    return {"nn_sim_real": nn(real, real, True), "nn_sim_generated": nn(mixture_sample, mixture_sample, True),
            "nn_sim_real_to_generated": nn(real, mixture_sample, False),
            "top10_variance_real": top_var(real), "top10_variance_generated": top_var(mixture_sample),
            "mean_sim_real": float((real @ real.T).mean()), "mean_sim_generated": float((mixture_sample @ mixture_sample.T).mean())}


# --- ground truth and metrics ----------------------------------------------------------------------


@dataclass
class Bench:
    """One database size: the base, its planted rows, the queries and their exact neighbours."""

    n: int
    base: np.ndarray                 # (n, d) memory-mapped
    queries: np.ndarray              # (q, d) the real query descriptors
    query_names: list[str]
    own: np.ndarray                  # each query's own row in ``base``
    row_name: dict[int, str]         # planted rows -> image names
    gt: dict                         # query name -> (positives, junk incl. itself)
    truth: np.ndarray                # (q, K) exact neighbours other than the query itself

    @classmethod
    def make(cls, n: int, real: dict, query_names: list[str], gt: dict, work: Path, seed: int) -> "Bench":
        start = time.perf_counter()
        base, planted = make_base(n, real, work, seed)
        by_name = dict(zip(real["names"], real["vectors"]))
        queries = np.stack([by_name[q] for q in query_names]).astype(np.float32)
        own = np.array([planted[q] for q in query_names], dtype=np.int64)
        truth = without_self(exact_topk(base, queries, K + 1, work, f"{n}-seed{seed}"), own, K)
        print(f"base: {n:,} x {base.shape[1]} ({len(planted)} real images planted, {len(queries)} real queries); "
              f"ready in {time.perf_counter() - start:.0f} s", flush=True)
        return cls(n, base, queries, query_names, own, {r: q for q, r in planted.items()}, gt, truth)

    def score(self, rows: np.ndarray) -> dict:
        """Recall@1/10/100 against exact and mAP@100, of rankings with K + 1 entries."""
        rows = without_self(rows, self.own, K)
        return {"r1": recall_at(rows, self.truth, 1), "r10": recall_at(rows, self.truth, 10),
                "r100": recall_at(rows, self.truth, 100), "map100": map_at(rows, self.query_names, self.gt, self.row_name)}


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, work: Path, tag: str) -> np.ndarray:
    """Exact top-k rows by inner product (blocked over the memory-mapped base; cached)."""
    path = work / f"gt-{tag}-k{k}.npy"
    if path.exists():
        return np.load(path)
    best_r = _streamed_exact(base, queries, k)[1]
    np.save(path, best_r)
    return best_r


def without_self(rows: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each ranking without the query's own row, cut to ``k`` (padded with -1)."""
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i, (ranking, me) in enumerate(zip(rows, own)):
        kept = ranking[ranking != me][:k]
        out[i, :len(kept)] = kept
    return out


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """|top-k found ∩ top-k exact| / k, averaged over queries."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def map_at(found: np.ndarray, query_names: list[str], gt: dict, row_name: dict) -> float:
    """mAP (%) of the rankings (top-K), revisitop AP: junk and the query itself ignored."""
    from matchlens.evaluate.metrics import average_precision, mean_average_precision

    aps = []
    for ranking, name in zip(found, query_names):
        positives, junk = gt[name]
        named = [row_name.get(int(r), f"#{int(r)}") for r in ranking if r >= 0]
        aps.append(average_precision(named, positives, junk))
    return 100 * mean_average_precision(aps)


# --- timing -----------------------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the table."""

    backend: str
    params: str
    n: int
    build_s: float
    bytes_per_vector: float          # what must be in RAM to search (codes + ids + lists/graph)
    disk_bytes_per_vector: float     # the index file (+ raw vectors where they are read for re-ranking)
    ms_single_1t: float = float("nan")
    ms_single_2t: float = float("nan")
    ms_batch_1t: float = float("nan")
    ms_batch_2t: float = float("nan")
    r1: float = float("nan")
    r10: float = float("nan")
    r100: float = float("nan")
    map100: float = float("nan")
    note: str = ""
    sweep: list = field(default_factory=list)


def set_threads(n: int) -> None:
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(n)
    threadpool_limits(n)


def time_search(search, queries: np.ndarray, k: int, threads: int, single: bool, repeat: int = 1) -> tuple[float, np.ndarray]:
    """(best ms per query over ``repeat`` runs, rows) of ``search``, one query at a time or one batch."""
    set_threads(threads)
    best = float("inf")
    rows = None
    for _ in range(repeat):
        start = time.perf_counter()
        if single:
            rows = np.concatenate([search(q[None], k)[1] for q in queries])
        else:
            rows = search(queries, k)[1]
        best = min(best, (time.perf_counter() - start) * 1000 / len(queries))
    return best, rows


def measure(row: Row, search, bench: Bench, threads: list[int]) -> Row:
    """Fill latency, recall and mAP of ``row``: k = K + 1, so K remain without the query itself."""
    search(bench.queries[:4], K + 1)  # warm up (loads lists, pages)
    for t in threads:
        ms1, _ = time_search(search, bench.queries, K + 1, t, single=True)
        msb, rows = time_search(search, bench.queries, K + 1, t, single=False, repeat=2)
        setattr(row, f"ms_single_{t}t", ms1)
        setattr(row, f"ms_batch_{t}t", msb)
    for key, value in bench.score(rows).items():
        setattr(row, key, value)
    return row


def sweep(searcher, backend, bench: Bench, key: str, values: list, threads: int, **fixed) -> list[dict]:
    """Recall@10 and ms/query (at depth k = SWEEP_K, K by default so refine means the same shortlist
    as in the table; batched and single) for each value of one search parameter."""
    points = []
    saved = dict(backend.params)
    for value in values:
        backend.configure(**{key: value}, **fixed)
        ms, rows = time_search(searcher.search, bench.queries, SWEEP_K + 1, threads, single=False, repeat=2)
        ms1, _ = time_search(searcher.search, bench.queries, SWEEP_K + 1, threads, single=True)
        recall = recall_at(without_self(rows, bench.own, 10), bench.truth, 10)
        points.append({key: value, **fixed, "ms_batch": ms, "ms_single": ms1, "recall10": recall})
    backend.configure(**{k: saved[k] for k in [key, *fixed]})
    return points


# --- backends ---------------------------------------------------------------------------------------

def build_faiss(factory: str, base: np.ndarray, work: Path, threads: int, **params):
    """(searcher, backend, state, build seconds, folder) through matchlens' FAISS backend."""
    from matchlens.index.backends import Searcher, WriteJob, make_backend

    backend = make_backend("faiss", factory, **params)
    folder = Path(tempfile.mkdtemp(prefix="scale-", dir=work))
    set_threads(threads)
    start = time.perf_counter()
    state = backend.write(WriteJob(root=folder, tmp=folder, vectors=base, ids=np.arange(len(base)), progress=_progress))
    seconds = time.perf_counter() - start
    candidates = backend.open(folder, folder, state)
    return Searcher(backend, candidates, np.arange(len(base)), base), backend, state, seconds, folder


def flat_row(bench: Bench, threads: list[int]) -> Row:
    """Exact search as the index does it (IndexFlatIP in RAM), or streamed from the memory-mapped
    file when a second copy of the vectors does not fit in the free memory."""
    import faiss
    import psutil

    set_threads(max(threads))
    d = bench.base.shape[1]
    if psutil.virtual_memory().available < 1.5 * bench.base.nbytes:
        row = Row("numpy", "exact, streamed from vectors.npy", bench.n, 0.0, 0, 4 * d,
                  note="not enough free memory for IndexFlatIP's copy: blocked matmul over the memory-mapped file")
        measure(row, lambda q, k: _streamed_exact(bench.base, q, k), bench, threads)
        return row
    start = time.perf_counter()
    index = faiss.IndexFlatIP(d)
    for s in range(0, bench.n, 65536):
        index.add(np.ascontiguousarray(bench.base[s:s + 65536]))
    seconds = time.perf_counter() - start
    row = Row("faiss", "Flat (exact; the default)", bench.n, seconds, 4 * d, 4 * d,
              note="IndexFlatIP over vectors.npy copied into RAM")
    measure(row, index.search, bench, threads)
    del index
    return row


def _streamed_exact(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_r = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(base), 131072):
        s = queries @ np.asarray(base[start:start + 131072]).T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_r = np.concatenate([best_r, top + start], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_r, order, 1)
    return best_s, best_r


def ann_row(factory: str, bench: Bench, threads: list[int], work: Path, sweeps: list[tuple], **params):
    """Build a FAISS backend, measure it at its default parameters, then sweep its search knobs."""
    searcher, backend, state, seconds, folder = build_faiss(factory, bench.base, work, max(threads), **params)
    size = (folder / "ann.faiss").stat().st_size
    refine = backend.refine_factor()
    disk = size / bench.n + (4 * bench.base.shape[1] if refine > 1 else 0)
    note = f"codes {state['code_bytes']} B/vector"
    if state["trained_on"]:
        note += f"; trained on {state['trained_on']:,} in {state['train_seconds']:.0f} s"
    if refine > 1:
        note += f"; shortlist of {refine}k re-ranked exactly from vectors.npy (memory-mapped, 5,120 B/vector on disk)"
    row = Row("faiss", backend.describe().removeprefix("faiss "), bench.n, seconds, size / bench.n, disk, note=note)
    measure(row, searcher.search, bench, threads)
    for key, values, fixed in sweeps:
        row.sweep += sweep(searcher, backend, bench, key, values, max(threads), **fixed)
    return row, searcher, backend, folder


def milvus_row(factory: str, bench: Bench, threads: list[int], work: Path, key: str, values: list) -> Row:
    """Milvus Lite (a fresh .db under --work) through matchlens' Milvus backend."""
    import shutil

    from matchlens.index.backends import Searcher, WriteJob, make_backend

    folder = Path(tempfile.mkdtemp(prefix="scale-milvus-", dir=work))
    backend = make_backend("milvus", factory, uri=str(folder / "bench.db"))
    set_threads(max(threads))
    start = time.perf_counter()
    state = backend.write(WriteJob(root=folder, tmp=folder, vectors=bench.base, ids=np.arange(bench.n), progress=_progress))
    candidates = backend.open(folder, folder, state)  # loads the collection (builds what is pending)
    seconds = time.perf_counter() - start
    searcher = Searcher(backend, candidates, np.arange(bench.n), bench.base)
    row = Row("milvus-lite", backend.describe().removeprefix("milvus ").split(" at ")[0], bench.n, seconds,
              float("nan"), _du(folder / "bench.db") / bench.n,
              note="Milvus Lite in-process (gRPC on 127.0.0.1); its RAM is not separable from this process")
    measure(row, searcher.search, bench, threads)
    row.sweep = sweep(searcher, backend, bench, key, values, max(threads))
    backend.client(folder).drop_collection(state["collection"])
    shutil.rmtree(folder, ignore_errors=True)
    return row


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _progress(total: int, description: str):
    start = time.perf_counter()
    done = [0]

    def advance(n: int = 1) -> None:
        done[0] += n
        if done[0] == total or done[0] % max(1, total // 4) < n:
            print(f"    {description}: {done[0]:,}/{total:,} ({time.perf_counter() - start:.0f} s)", flush=True)

    return advance


# --- linearity and diffusion ------------------------------------------------------------------------

def ivf_linearity(factory: str, base: np.ndarray, threads: int, work: Path, **params) -> list[dict]:
    """Seconds to add N/4, N/2 and N vectors to one trained (empty) index: is the build linear in N?"""
    import faiss

    from matchlens.index.backends import WriteJob, make_backend

    backend = make_backend("faiss", factory, **params)
    set_threads(threads)
    n = len(base)
    job = WriteJob(root=work, tmp=work, vectors=base, ids=np.arange(n))
    empty, state = backend._train(job)
    blob = faiss.serialize_index(empty)
    points = [{"n": 0, "train_s": state["train_seconds"]}]
    for size in (n // 4, n // 2, n):
        index = faiss.deserialize_index(blob)
        start = time.perf_counter()
        backend._add(index, base, np.arange(n), np.arange(size), job)
        seconds = time.perf_counter() - start
        points.append({"n": size, "add_s": seconds, "us_per_vector": 1e6 * seconds / size})
        del index
    return points


def hnsw_linearity(factory: str, base: np.ndarray, full_s: float, threads: int, work: Path) -> list[dict]:
    """HNSW build seconds at N/4, N/2 (and N, measured already)."""
    import shutil

    n = len(base)
    points = []
    for size in (n // 4, n // 2):
        _, _, _, seconds, folder = build_faiss(factory, base[:size], work, threads)
        shutil.rmtree(folder, ignore_errors=True)
        points.append({"n": size, "build_s": seconds, "us_per_vector": 1e6 * seconds / size})
    return points + [{"n": n, "build_s": full_s, "us_per_vector": 1e6 * full_s / n}]


def diffusion_at_scale(searcher, bench: Bench, work: Path, knn: int, threads: int) -> dict:
    """Build the mutual kNN graph from the approximate index (offline), store it, reload, diffuse."""
    from matchlens.rerank import QueryInput, Shortlist
    from matchlens.rerank.diffusion import Diffusion, build_knn_graph, load_graph, save_graph

    set_threads(threads)
    start = time.perf_counter()
    graph = build_knn_graph(bench.base, k=knn, gamma=3.0, batch=8192, search=searcher.search)
    build_s = time.perf_counter() - start
    path = work / f"diffusion-{bench.n}-k{knn}.npz"
    save_graph(path, graph)
    del graph
    start = time.perf_counter()
    graph = load_graph(path)
    load_s = time.perf_counter() - start

    class Ctx:  # what the reranker reads: vectors, generation, the index's search
        vectors = bench.base
        generation = "scale"
        approximate = True

        def cache_dir(self, kind):
            return None

        def search(self, q, k):
            return searcher.search(q, k)

    reranker = Diffusion(k=1000, knn=knn)
    reranker._graph = ((Ctx.generation, bench.n), graph)  # as if loaded from the stored file
    scores, rows = searcher.search(bench.queries, 1000)
    start = time.perf_counter()
    ranked = np.full((len(rows), K + 1), -1, dtype=np.int64)
    for i, (q, s, r) in enumerate(zip(bench.queries, scores, rows)):
        keep = r >= 0
        out = reranker.rerank(QueryInput(q), Shortlist(r[keep], s[keep]), Ctx()).rows[:K + 1]
        ranked[i, :len(out)] = out
    ms = 1000 * (time.perf_counter() - start) / len(rows)
    return {"n": bench.n, "knn": knn, "graph_build_s": build_s, "graph_load_s": load_s, "edges": int(graph.nnz),
            "graph_mb": path.stat().st_size / 2**20, "diffusion_ms_per_query": ms,
            "map100_before": bench.score(rows[:, :K + 1])["map100"], "map100_after": bench.score(ranked)["map100"],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


# --- output -----------------------------------------------------------------------------------------

def print_table(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("backend", "params", "N", "build s", "RAM B/vec", "disk B/vec", "ms/q 1t", "ms/q 2t",
                  "ms/q batch 1t", "ms/q batch 2t", "R@1", "R@10", "R@100", "mAP@100",
                  title=f"k={K} per query (ms/q: one query per call, or one batch of all queries)")
    for r in rows:
        table.add_row(r.backend, r.params, f"{r.n:,}", f"{r.build_s:.1f}", _num(r.bytes_per_vector),
                      _num(r.disk_bytes_per_vector), _num(r.ms_single_1t, 2), _num(r.ms_single_2t, 2),
                      _num(r.ms_batch_1t, 2), _num(r.ms_batch_2t, 2), _num(r.r1, 3), _num(r.r10, 3),
                      _num(r.r100, 3), _num(r.map100, 1))
    Console(width=250).print(table)
    for r in rows:
        if r.note:
            print(f"  {r.backend} {r.params} (N={r.n:,}): {r.note}")
    for r in rows:
        for p in r.sweep:
            knobs = ", ".join(f"{k}={v}" for k, v in p.items() if k not in ("ms_batch", "ms_single", "recall10"))
            print(f"  sweep {r.backend} {r.params.split(' (')[0]} N={r.n:,} {knobs}: recall@10 {p['recall10']:.3f}, "
                  f"{p['ms_batch']:.2f} ms/q batched, {p['ms_single']:.2f} ms/q single (k={SWEEP_K})")


def _num(x: float, digits: int = 0) -> str:
    return "-" if x != x else f"{x:,.{digits}f}"


def plot(rows: list[Row], path: Path, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r in rows:
        groups = sorted({p.get("refine") or 0 for p in r.sweep})
        for refine in groups:
            points = [p for p in r.sweep if (p.get("refine") or 0) == refine]
            extra = f", refine={refine}" if refine else ""
            ax.plot([p["ms_batch"] for p in points], [p["recall10"] for p in points], marker="o",
                    label=f"{r.backend} {r.params.split(' (')[0]}{extra} (N={r.n:,})")
        if r.params.startswith("Flat"):
            ax.scatter([r.ms_batch_2t], [1.0], marker="*", s=120, color="k", label=f"exact Flat, k={K} (N={r.n:,})")
    ax.set_xscale("log")
    ax.set_xlabel(f"ms/query (batched, {threads} threads, k={SWEEP_K})")
    ax.set_ylabel("recall@10 vs exact")
    ax.axhline(0.95, color="grey", lw=0.5, ls="--")
    ax.axvline(2.0, color="grey", lw=0.5, ls="--")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --- main -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="database size (generated + planted)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench-out" / "scale")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--descriptors", type=Path, default=None, help="an existing default-preset index of oxford5k_subset")
    parser.add_argument("--backends", default="flat,ivfpq,hnsw,milvus")
    parser.add_argument("--ivf", default=None,
                        help="IVF-PQ factory strings separated by ';' (default IVF{~sqrt(N)},PQ64); the first is swept further")
    parser.add_argument("--ivf-params", default="", help="search parameters of the first IVF-PQ row, e.g. nprobe=64,refine=16")
    parser.add_argument("--tag", default="", help="suffix of the result files (a partial run keeps the full run's files)")
    parser.add_argument("--train-size", type=int, default=100_000)
    parser.add_argument("--hnsw", default="HNSW32")
    parser.add_argument("--hnsw-n", type=int, default=None, help="measure HNSW at this N instead (its own base)")
    parser.add_argument("--milvus", default="HNSW:M=16,efConstruction=100")
    parser.add_argument("--milvus-n", type=int, default=None, help="measure Milvus Lite at this N instead")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--linearity", nargs="?", const="all", default="", choices=["", "ivf", "all"],
                        help="build time at N/4, N/2, N: 'ivf' for IVF-PQ only, 'all' (the bare flag) for HNSW too")
    parser.add_argument("--diffusion-n", type=int, default=0, help="build the diffusion graph at this N (0: skip)")
    parser.add_argument("--knn", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep-k", type=int, default=K,
                        help="results per query in the recall-vs-latency sweeps (10: the cost of a top-10 search)")
    args = parser.parse_args(argv)
    global SWEEP_K
    SWEEP_K = args.sweep_k

    args.work.mkdir(parents=True, exist_ok=True)
    threads = [int(t) for t in args.threads.split(",")]
    extras: dict = {"load_start": os.getloadavg(), "argv": sys.argv}
    print(f"uptime load at start: {' '.join(f'{x:.2f}' for x in extras['load_start'])}; {os.cpu_count()} CPUs", flush=True)
    from matchlens.io.formats import load_gt_json

    dataset = load_gt_json(args.data / "oxford5k_subset")
    real = real_descriptors(args.data, args.work, args.descriptors)
    query_names = [q.image for q in dataset.queries if q.image in set(real["names"])]
    gt = {q.image: (frozenset(q.positives), frozenset(q.junk) | {q.image}) for q in dataset.queries}
    mixture = Mixture.fit(real["vectors"], max(2, len(real["vectors"]) // PLACE_SIZE), args.seed)
    extras["realism"] = realism(real["vectors"], mixture.sample(len(real["vectors"]), np.random.default_rng(7)))
    print("realism: " + json.dumps({k: round(v, 3) for k, v in extras["realism"].items()}), flush=True)

    benches: dict[int, Bench] = {}

    def bench_at(n: int) -> Bench:
        if n not in benches:
            benches[n] = Bench.make(n, real, query_names, gt, args.work, args.seed)
            _warm(benches[n].base)
        return benches[n]

    rows: list[Row] = []
    scratch: list[Path] = []  # index folders written by this run (removed at the end)
    wanted = set(args.backends.split(","))
    main_bench = bench_at(args.n)
    if "flat" in wanted:
        rows.append(flat_row(main_bench, threads))
        print_table(rows)
    if "ivfpq" in wanted:
        factories = (args.ivf or _ivf_for(args.n)).split(";")
        factory = factories[0]
        for other in factories[1:]:
            row, _, _, folder = ann_row(other, main_bench, threads, args.work, [("nprobe", [8, 16, 32, 64], {})],
                                        train_size=args.train_size)
            scratch.append(folder)
            rows.append(row)
        sweeps = [("nprobe", [4, 8, 16, 32, 64, 128], {}), ("nprobe", [8, 16, 32, 64], {"refine": 4}),
                  ("nprobe", [8, 16, 32, 64], {"refine": 16})]
        row, searcher, backend, folder = ann_row(factory, main_bench, threads, args.work, sweeps, train_size=args.train_size,
                                                 **_params(args.ivf_params))
        scratch.append(folder)
        rows.append(row)
        print_table(rows)
        if args.linearity:
            extras["ivf_linearity"] = ivf_linearity(factory, main_bench.base, max(threads), args.work,
                                                    train_size=args.train_size)
            print("IVF-PQ build linearity: " + json.dumps(extras["ivf_linearity"]), flush=True)
        if args.diffusion_n:
            sub = bench_at(args.diffusion_n)
            if sub is not main_bench:
                searcher, _, _, _, folder = build_faiss(args.ivf or _ivf_for(sub.n), sub.base, args.work,
                                                        max(threads), train_size=args.train_size)
                scratch.append(folder)
            extras["diffusion"] = diffusion_at_scale(searcher, sub, args.work, args.knn, max(threads))
            print("diffusion: " + json.dumps(extras["diffusion"]), flush=True)
        del searcher
    if "hnsw" in wanted:
        bench = bench_at(args.hnsw_n or args.n)
        row, searcher, _, folder = ann_row(args.hnsw, bench, threads, args.work,
                                           [("efSearch", [16, 32, 64, 128, 256, 512], {})])
        scratch.append(folder)
        rows.append(row)
        del searcher
        print_table(rows)
        if args.linearity == "all":
            extras["hnsw_linearity"] = hnsw_linearity(args.hnsw, bench.base, row.build_s, max(threads), args.work)
            print("HNSW build linearity: " + json.dumps(extras["hnsw_linearity"]), flush=True)
    if "milvus" in wanted:
        bench = bench_at(args.milvus_n or args.n)
        key = "ef" if args.milvus.upper().startswith("HNSW") else "nprobe"
        values = [16, 32, 64, 128, 256] if key == "ef" else [4, 8, 16, 32, 64]
        rows.append(milvus_row(args.milvus, bench, threads, args.work, key, values))
    print_table(rows)
    for folder in scratch:
        shutil.rmtree(folder, ignore_errors=True)
    extras["load_end"] = os.getloadavg()
    extras["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"uptime load at end: {' '.join(f'{x:.2f}' for x in extras['load_end'])}; peak RSS {extras['peak_rss_gb']:.1f} GB")
    out = args.work / f"scale-{args.n}{args.tag}.json"
    out.write_text(json.dumps({"rows": [asdict(r) for r in rows], **extras}, indent=1, default=float))
    png = args.work / f"scale-{args.n}{args.tag}-recall-latency.png"
    plot(rows, png, max(threads))
    print(f"results: {out}; plot: {png}")


def _params(text: str) -> dict:
    """``nprobe=64,refine=16`` → {"nprobe": 64, "refine": 16}."""
    from matchlens.config import parse_params

    return parse_params(text) if text else {}


def _ivf_for(n: int) -> str:
    """IVF-PQ with about sqrt(N) lists (a power of two) and 64-byte codes."""
    return f"IVF{int(np.clip(1 << int(round(np.log2(np.sqrt(n)))), 16, 4096))},PQ64"


def _warm(base: np.ndarray) -> None:
    """Read the base once so that every backend starts with it in the page cache (if it fits)."""
    for start in range(0, len(base), 262_144):
        np.asarray(base[start:start + 262_144]).sum()


if __name__ == "__main__":
    main()
