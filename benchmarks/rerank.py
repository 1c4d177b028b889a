"""What re-ranking buys: mAP change and added ms/query of each reranker and of useful chains.

On ../shared/data/oxford5k_subset (the 10 official queries cropped to their boxes, and all 114
whole-image queries) and ukbench_subset, with the default pipeline; with ``--generated V ...``
also on generated collections of the demo's 26 photos in V augmented views each (random crops
of about 25-50% of each side, rotated, stretched, relit) plus 150 synthetic distractor scenes,
queried UKBench-style (views 0 and 1 of every object, positives its other views): the
collections on which the kNN-graph gate of ``auto`` (:mod:`matchlens.rerank.graph`) was
calibrated; with ``--demo`` also on the demo collection (``matchlens demo --rerank CHAIN``).
``--lw`` instead compares the learned-whitening (Lw) variants on the oxford5k_subset index's
stored vectors: 2-fold over landmarks (each fold's Lw learned from its queries' positive pairs
and 5 hard negatives each, as ``matchlens train`` does, and evaluated on the other fold's
queries over the whole collection).
Indexes are built once into --work (reused by later runs). The added latency is measured on the
collection itself and, for the query-time part, with 100,000 extra distractor vectors appended
(generated from the real descriptors: random sparse mixtures of collection vectors plus noise,
L2-normalised, so they look like descriptors rather than isotropic noise).

A chain ``@FUSION`` ranks by that fusion of stored kinds without re-ranking (the kinds must have
been encoded: ``matchlens encode bench-out/oxford5k_subset --kind asmk``). ``auto`` fuses its
shortlist by itself when kinds are stored (``auto:fuse=none`` does not). The script prints, per
collection, the kNN-graph profile and whether ``auto`` switches DBA and diffusion on.

    python benchmarks/rerank.py [--work bench-out] [--data ../shared/data] [--chains CHAIN ...]
        [--generated 16 4] [--demo]
    python benchmarks/rerank.py --lw [--work bench-out] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

import matchlens
from matchlens.demo.collection import STEREO_QUERY, _fit, source_photos
from matchlens.evaluate.protocol import evaluate_index
from matchlens.fusion.expression import parse_fusion
from matchlens.io.formats import load_gt_json
from matchlens.pipeline.context import IndexContext
from matchlens.pipeline.search import SearchPipeline
from matchlens.rerank import QueryInput, Shortlist, chain_depth, parse_chain, run_chain
from matchlens.rerank.graph import graph_profile
from matchlens.whitening import LearnedWhitening

CHAINS = [
    "", "aqe:k=2", "alpha_qe:k=10,alpha=3", "kr:k=100", "diffusion:k=1000",
    "diffusion:k=1000,knn=20,query_knn=5", "sv:k=100", "sv:k=100,alpha_qe:k=10",
    "dba", "dba+alpha_qe:k=10,alpha=3", "dba+sv:k=100,alpha_qe:k=10,alpha=3",
]
DBA = {"k": 3}
SHARED = ("oxford5k_subset", "ukbench_subset")
# Lw variants: the default is cirtorch's whitenlearn; the others are its named options (the last
# was matchlens's default before it followed cirtorch).
LW_VARIANTS = {
    "default (cirtorch whitenlearn)": {},
    "shrinkage=0.1": {"shrinkage": 0.1},
    "rotation=pairs": {"rotation": "pairs"},
    "centre=all": {"centre": "all"},
    "shrinkage=0.1, rotation=pairs, centre=all (old default)": {"shrinkage": 0.1, "rotation": "pairs", "centre": "all"},
}
LW_FOLDS = ({"radcliffe_camera", "bodleian", "cornmarket", "balliol"},  # 53 queries; the rest: 61
            {"christ_church", "all_souls", "hertford", "magdalen", "ashmolean"})
DISTRACTORS = 150  # synthetic scenes in every generated collection
QUERY_VIEWS = 2    # views of each object that are queries in a generated collection


def searcher_for(index: matchlens.Index, spec: str) -> tuple[SearchPipeline, str]:
    """(search pipeline, chain) of a row: ``@FUSION`` ranks by a fusion, anything else is a chain
    run on the cnn ranking."""
    if spec.startswith("@"):
        return index.searcher(spec[1:]), ""
    return index.pipeline, spec  # its rerank context fuses auto's shortlist when kinds are stored


# --- generated many-view collections -------------------------------------------------------------

def _view(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One view of a photo: a crop of 35-65% of each side, rotated ±15° and trimmed to its central
    75% (no filled corners: their straight edges would match between any two views and fake a
    verification), stretched 1.6-2.4× unevenly (a change of viewpoint), with changed lighting."""
    w, h = photo.size
    fw, fh = rng.uniform(0.35, 0.65, size=2)
    x0, y0 = rng.uniform(0, 1 - fw) * w, rng.uniform(0, 1 - fh) * h
    view = photo.crop((int(x0), int(y0), int(x0 + fw * w), int(y0 + fh * h)))
    view = view.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BICUBIC)
    cw, ch = view.size
    view = view.crop((int(0.125 * cw), int(0.125 * ch), int(0.875 * cw), int(0.875 * ch)))
    sx, sy = rng.uniform(1.6, 2.4, size=2)
    view = view.resize((int(view.width * sx), int(view.height * sy)), Image.Resampling.BICUBIC)
    view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.6, 1.4))
    view = ImageEnhance.Contrast(view).enhance(rng.uniform(0.6, 1.4))
    return _fit(ImageEnhance.Color(view).enhance(rng.uniform(0.5, 1.5)))


def _scene(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A synthetic distractor: coloured noise with random shapes (as tests/conftest.py's make_scene)."""
    rng = np.random.default_rng(seed)
    w, h = size
    low = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        box = (x0, y0, x0 + int(rng.integers(15, w // 2)), y0 + int(rng.integers(15, h // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
    return img.filter(ImageFilter.SMOOTH)


def generate(folder: Path, views: int) -> None:
    """Write ``folder/images`` and ``folder/gt.json``: every demo photo in ``views`` views plus
    the distractors (deterministic: view v is the same file for every ``views`` > v)."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    photos = source_photos()
    photos.pop(STEREO_QUERY[0])  # the other view of motorcycle_left: not a distinct object
    groups: dict[str, list[str]] = {}
    for name in sorted(photos):
        rng = np.random.default_rng(sum(map(ord, name)) + 7)
        stem = Path(name).stem
        groups[stem] = [f"{stem}__{v:02d}.jpg" for v in range(views)]
        for file in groups[stem]:
            _view(photos[name], rng).save(images / file, quality=90)
    distractors = [f"distractor{d:03d}.jpg" for d in range(DISTRACTORS)]
    for d, file in enumerate(distractors):
        _scene(1000 + d).save(images / file, quality=90)
    write_gt(folder, groups, distractors)


def write_gt(folder: Path, groups: dict[str, list[str]], distractors: list[str]) -> None:
    """gt.json: every image; views 0 .. QUERY_VIEWS-1 of each object query it, the others positive."""
    queries = [{"image": files[q], "positives": [f for f in files if f != files[q]], "junk": []}
               for files in groups.values() for q in range(QUERY_VIEWS)]
    images = [f for files in groups.values() for f in files] + distractors
    (folder / "gt.json").write_text(json.dumps({"name": folder.name, "images": images, "queries": queries}))


def generated(work: Path, views: int, largest: int) -> tuple[Path, matchlens.Index]:
    """(dataset folder, index) of the generated collection with ``views`` views per object: the
    largest is generated and indexed; a smaller one is its subset (the index a copy with the
    other views removed, so nothing is extracted twice)."""
    name = f"generated-v{views}"
    folder, root = work / "data" / name, work / name
    if views == largest:
        if not (folder / "gt.json").is_file():
            generate(folder, views)
        dataset = load_gt_json(folder)
        return folder, matchlens.build_index([str(dataset.image_path(n)) for n in dataset.images], root)
    big_folder, big = generated(work, largest, largest)
    if not (folder / "gt.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "images").exists():
            (folder / "images").symlink_to((big_folder / "images").resolve(), target_is_directory=True)
        files = json.loads((big_folder / "gt.json").read_text())["images"]
        groups: dict[str, list[str]] = {}
        for file in files:
            stem, _, view = Path(file).stem.partition("__")
            if view and int(view) < views:
                groups.setdefault(stem, []).append(file)
        write_gt(folder, groups, [f for f in files if "__" not in f])
    if not root.exists():
        shutil.copytree(big.root, root)
        extra = [str(big_folder.resolve() / "images" / f"{stem}__{v:02d}.jpg")
                 for stem in {Path(f).stem.partition("__")[0] for f in os.listdir(big_folder / "images") if "__" in f}
                 for v in range(views, largest)]
        matchlens.open_index(root).remove(extra)
    return folder, matchlens.open_index(root)


# --- learned whitening variants ------------------------------------------------------------------

def lw_pairs(dataset, queries: list, vectors: np.ndarray, row: dict[str, int]) -> tuple[list, list]:
    """(matching, non-matching) row pairs of ``queries``: each query with its positives, and with
    its 5 most similar images that are neither positive nor junk (hard negatives)."""
    matching, non_matching = [], []
    for q in queries:
        qi = row[q.image]
        matching += [(qi, row[p]) for p in q.positives if p in row]
        skip = {row[n] for n in (*q.positives, *q.junk, q.image) if n in row}
        order = np.argsort(-(vectors @ vectors[qi]), kind="stable")
        non_matching += [(qi, int(r)) for r in order if int(r) not in skip][:5]
    return matching, non_matching


def lw_map(vectors: np.ndarray, names: list[str], queries: list, row: dict[str, int]) -> list[float]:
    """AP of each query ranking the whole collection by inner product of ``vectors``."""
    from matchlens.evaluate.protocol import query_metrics

    aps = []
    for q in queries:
        order = np.argsort(-(vectors @ vectors[row[q.image]]), kind="stable")
        aps.append(query_metrics(q, [names[r] for r in order], ks=())["AP"])
    return aps


def lw_table(data: Path, work: Path, dims: tuple[int | None, ...] = (None, 128)) -> None:
    """mAP of each Lw variant (2-fold over landmarks) on oxford5k_subset's stored vectors."""
    dataset = load_gt_json(data / "oxford5k_subset")
    index = with_dba(build(data, "oxford5k_subset", work), False)
    raw = np.asarray(index.vectors(), dtype=np.float64)
    names = [Path(index.entry_for_row(r).path).name for r in range(index.size)]
    row = {name: r for r, name in enumerate(names)}
    folds = [[q for q in dataset.queries if q.group in groups and q.image in row] for groups in LW_FOLDS]
    print(f"\nLearned whitening on oxford5k_subset ({index.spec.describe()}, {len(names)} images, "
          f"{sum(map(len, folds))} whole-image queries): Lw learned on one fold of landmarks, mAP on the other "
          f"fold's queries, both folds pooled; mAP in %\n")
    baseline = 100 * float(np.nanmean(lw_map(raw, names, folds[0] + folds[1], row)))
    print(f"| Lw variant | {' | '.join('dim ' + (str(d) if d else 'full') for d in dims)} |")
    print("|---" * (len(dims) + 1) + "|")
    print(f"| none (global search) | {' | '.join(f'{baseline:.1f}' for _ in dims)} |")
    for label, params in LW_VARIANTS.items():
        cells = []
        for dim in dims:
            aps: list[float] = []
            for train, test in ((folds[0], folds[1]), (folds[1], folds[0])):
                matching, non_matching = lw_pairs(dataset, train, raw, row)
                used = sorted({i for pair in matching + non_matching for i in pair})
                where = {r: k for k, r in enumerate(used)}
                lw = LearnedWhitening(dim=dim, **params).fit_pairs(
                    raw[used], [(where[a], where[b]) for a, b in matching],
                    [(where[a], where[b]) for a, b in non_matching])
                aps += lw_map(lw.transform(raw).astype(np.float64), names, test, row)
            value = 100 * float(np.nanmean(aps))
            cells.append(f"{value:.1f} ({value - baseline:+.1f})")
        print(f"| {label} | {' | '.join(cells)} |", flush=True)


# --- measuring -----------------------------------------------------------------------------------

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


def evaluate(index: matchlens.Index, dataset, protocol: str, spec: str) -> tuple[float, float]:
    """(mAP %, mean ms per query of the whole rank() call); NaN for a fusion of kinds the index lacks."""
    if spec.startswith("@") and not set(parse_fusion(spec[1:]).kinds) - {"cnn"} <= set(kinds_of(index)):
        return float("nan"), float("nan")
    searcher, chain = searcher_for(index, spec)
    t0 = time.perf_counter()
    evaluation = evaluate_index(searcher, dataset, protocol, rerank=chain or None)
    ms = 1000 * (time.perf_counter() - t0) / max(1, len(evaluation.outcomes))
    return evaluation.summary["mAP"], ms


def kinds_of(index: matchlens.Index) -> list[str]:
    """Names of the classic kinds stored with ``index``."""
    from matchlens.classic import kind_names

    return kind_names(index.store)


def gate(index: matchlens.Index) -> str:
    """The kNN-graph profile ``auto`` measures for this index, and its decision."""
    profile = graph_profile(IndexContext(index.store))
    return f"{'ON' if profile.supports() else 'off'}: {profile.describe()}"


def demo_map(work: Path, chain: str) -> tuple[float, int, int, str]:
    """(mAP %, top-1 correct, queries, gate) of ``matchlens demo --rerank CHAIN``."""
    from matchlens.demo import run_demo

    result = run_demo(work / "demo", rerank=chain or None)
    return 100 * result.map, result.top1_correct, result.n_queries, gate(matchlens.open_index(result.index_dir))


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


def protocols(name: str) -> tuple[str, ...]:
    return ("full", "cropped") if name == "oxford5k_subset" else ("full",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--work", default="bench-out")
    parser.add_argument("--chains", nargs="*", default=CHAINS)
    parser.add_argument("--distractors", type=int, default=100_000)
    parser.add_argument("--generated", type=int, nargs="*", default=[],
                        help="also the generated collections with these numbers of views per object")
    parser.add_argument("--demo", action="store_true", help="also the demo collection (matchlens demo --rerank)")
    parser.add_argument("--lw", action="store_true", help="only the learned-whitening variants (no re-ranking)")
    args = parser.parse_args()
    data, work = Path(args.data), Path(args.work)
    if args.lw:
        lw_table(data, work)
        return
    datasets = {name: load_gt_json(data / name) for name in SHARED}
    indexes = {name: with_dba(build(data, name, work), False) for name in SHARED}  # updated as DBA toggles
    for views in sorted(args.generated, reverse=True):
        folder, index = generated(work, views, max(args.generated))
        datasets[folder.name], indexes[folder.name] = load_gt_json(folder), with_dba(index, False)
    gates = {name: gate(index) for name, index in indexes.items()}
    for name, decision in gates.items():
        print(f"gate {name}: {decision}", file=sys.stderr, flush=True)
    big = BigContext(indexes["oxford5k_subset"], args.distractors) if args.distractors else None
    for name in indexes:  # warm-up: extract every query once, so ms/query measures search + re-ranking
        for protocol in protocols(name):
            evaluate(indexes[name], datasets[name], protocol, "")
    rows = [measure(spec, indexes, datasets, big, work, args.demo) for spec in args.chains]
    print_table(rows, indexes, args.distractors)
    if args.demo:
        gates["demo"] = next((line["demo_gate"] for line in rows if "demo_gate" in line), "not measured")
    print("\nkNN-graph gate of auto (DBA and diffusion ON or off; matchlens.rerank.graph):\n")
    for name, decision in gates.items():
        print(f"- {name}: {decision}")
    for name in indexes:
        with_dba(indexes[name], False)


def measure(spec: str, indexes: dict, datasets: dict, big: BigContext | None, work: Path, demo: bool) -> dict:
    """One row: mAP and ms/query of ``spec`` on every collection."""
    dba, _, chain = spec.partition("+") if spec.startswith("dba") else ("", "", spec)
    line: dict = {"chain": spec or "(none: global search)"}
    for name in indexes:
        indexes[name] = with_dba(indexes[name], bool(dba))
        for protocol in protocols(name):
            line[f"{name}/{protocol}"], line[f"ms/{name}/{protocol}"] = evaluate(
                indexes[name], datasets[name], protocol, chain)
    line["ms_big"] = float("nan")
    if big is not None and not dba and not chain.startswith("@"):
        line["ms_big"] = big_latency(big, indexes["oxford5k_subset"], datasets["oxford5k_subset"], chain)
    if demo and not dba and not chain.startswith("@"):
        line["demo/full"], top1, queries, line["demo_gate"] = demo_map(work, chain)
        line["demo_top1"] = f"{top1}/{queries}"
    print(line, file=sys.stderr, flush=True)
    return line


def print_table(rows: list[dict], indexes: dict, distractors: int) -> None:
    ox_index = indexes["oxford5k_subset"]
    base = rows[0]
    columns = [f"{name}/{protocol}" for name in indexes for protocol in protocols(name)]
    columns += ["demo/full"] if "demo/full" in base else []
    print(f"\ndefault pipeline ({ox_index.spec.describe()}); mAP in %, change against the first row in "
          "brackets; ms/query = the whole query (extraction memoised, so search + re-ranking) on oxford5k_subset "
          f"({ox_index.size} images, whole-image queries); +100k = search + re-ranking with {distractors:,} "
          "extra distractor vectors (median of 20 queries)\n")
    print(f"| chain | {' | '.join(columns)} | ms/query (1k) | ms/query (+100k) |")
    print("|---" * (len(columns) + 3) + "|")
    for line in rows:
        cells = [_delta(line, base, key) for key in columns]
        big_ms = "-" if np.isnan(line["ms_big"]) else f"{line['ms_big']:.0f}"
        print(f"| {line['chain']} | {' | '.join(cells)} | {line['ms/oxford5k_subset/full']:.0f} | {big_ms} |")


def _delta(line: dict, base: dict, key: str) -> str:
    if key not in line or np.isnan(line[key]):
        return "-"
    if line is base or key not in base:
        return f"{line[key]:.1f}"
    return f"{line[key]:.1f} ({line[key] - base[key]:+.1f})"


if __name__ == "__main__":
    main()
