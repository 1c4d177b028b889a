"""``--rerank auto``: verified average query expansion, adaptive per query, falling back to the
global ranking when nothing verifies; DBA and diffusion only where the kNN graph supports them;
the shortlist fused with the stored classic kinds."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import matchlens
from matchlens.errors import ConfigError
from matchlens.pipeline.context import IndexContext
from matchlens.pipeline.search import SearchPipeline
from matchlens.rerank import RERANKERS, QueryInput, Shortlist, parse_chain
from matchlens.rerank.auto import AutoRerank, recommended_fusion
from matchlens.rerank.graph import MIN_NEIGHBOURHOOD, GraphProfile, graph_profile, measure_profile
from tests.test_rerank_spatial import textured_scene

VIEWS = 3  # views of the object in the collection


def _view(image: Image.Image, angle: float, box: tuple[int, int, int, int]) -> Image.Image:
    return image.rotate(angle, resample=Image.BICUBIC).crop(box).resize((300, 220), Image.LANCZOS)


@pytest.fixture(scope="module")
def collection(tmp_path_factory, small_spec):
    """One textured object in VIEWS views among 8 other scenes; a query view of it and an
    unrelated query scene."""
    folder = tmp_path_factory.mktemp("auto")
    base = textured_scene(1)
    boxes = [(20, 15, 300, 225), (40, 30, 280, 210), (10, 10, 260, 200), (50, 20, 310, 230)]
    for i in range(VIEWS):
        _view(base, 5 * (i + 1), boxes[i]).save(folder / f"object_{i}.png")
    for seed in range(10, 18):
        textured_scene(seed).save(folder / f"other_{seed}.png")
    queries = tmp_path_factory.mktemp("auto-queries")
    _view(base, -8, boxes[3]).save(queries / "object_query.png")
    textured_scene(99).save(queries / "unrelated.png")
    index = matchlens.build_index(folder, tmp_path_factory.mktemp("auto-idx") / "i", spec=small_spec)
    return index, queries


def test_auto_is_a_registered_chain_with_validated_parameters():
    assert "auto" in RERANKERS.names()
    (step,) = parse_chain("auto:k=50,rounds=2")
    assert isinstance(step, AutoRerank) and step.depth == 50
    with pytest.raises(ConfigError):
        parse_chain("auto:min_inliers=0")
    with pytest.raises(ConfigError):
        parse_chain("auto:rounds=-1")


def test_verified_views_come_first_and_the_expansion_uses_exactly_them(collection):
    index, queries = collection
    step = AutoRerank(k=20)
    results = index.search(queries / "object_query.png", k=5, rerank=[step])
    top = [r.path.rsplit("/", 1)[-1] for r in results[:VIEWS]]
    assert sorted(top) == [f"object_{i}.png" for i in range(VIEWS)]
    # adaptive: the query was expanded with the verified views, not with a fixed count
    expanded = sorted(index.entry_for_row(r).path.rsplit("/", 1)[-1] for r in step.last_expansion)
    assert expanded == [f"object_{i}.png" for i in range(VIEWS)]
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    chum = index.search(queries / "object_query.png", k=5, rerank="auto:k=20,order=verified")
    assert sorted(r.path for r in chum[:VIEWS]) == sorted(r.path for r in results[:VIEWS])
    assert chum[VIEWS - 1].score > 1.0 > chum[VIEWS].score  # verified first, above every cosine


def test_a_chance_match_does_not_jump_over_a_sure_descriptor_match():
    """The blend: an image the descriptors are sure of (cosine 0.9, unverified) stays above one with
    a low cosine and a few dozen inliers; with order=verified it would not."""
    step = AutoRerank(bonus=0.3, cap=100)
    ranking = Shortlist(np.array([0, 1, 2]), np.array([0.9, 0.6, 0.5], np.float32))
    blended = step._blend(ranking, {1: 25, 2: 5})
    assert blended.rows.tolist() == [0, 1, 2]
    assert blended.scores[1] == pytest.approx(0.6 + 0.3 * 25 / 100)


def test_a_query_nothing_verifies_keeps_its_global_ranking(collection):
    index, queries = collection
    step = AutoRerank(k=20)
    plain = index.search(queries / "unrelated.png", k=11)
    auto = index.search(queries / "unrelated.png", k=11, rerank=[step])
    assert step.last_expansion == []
    assert [r.path for r in auto] == [r.path for r in plain]
    assert np.allclose([r.score for r in auto], [r.score for r in plain])


def test_a_second_round_verifies_more_and_never_loses_verified_views(collection):
    index, queries = collection
    one = [r.path for r in index.search(queries / "object_query.png", k=VIEWS, rerank="auto:k=2")]
    two = [r.path for r in index.search(queries / "object_query.png", k=VIEWS, rerank="auto:k=2,rounds=2,k_next=5")]
    assert sum("object_" in p for p in two) == VIEWS >= sum("object_" in p for p in one)


# --- the kNN-graph gate ------------------------------------------------------------------------

def _clustered(objects: int, views: int, singletons: int = 40, seed: int = 0) -> np.ndarray:
    """Unit vectors: ``objects`` clusters of ``views`` points (the views of an object), plus
    unrelated singletons."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((objects + singletons, 64))
    points = np.concatenate([np.repeat(centres[:objects], views, axis=0), centres[objects:]])
    points = points + 0.25 * rng.standard_normal(points.shape)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


class VectorContext:
    """A rerank context over bare vectors: exact search, counted; an optional cache folder."""

    def __init__(self, vectors: np.ndarray, cache: Path | None = None, generation: str = "gen-1") -> None:
        self.vectors, self.cache, self.generation, self.searches = vectors, cache, generation, 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.searches += 1
        sims = queries @ self.vectors.T
        rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, rows, axis=1), rows

    def cache_dir(self, kind: str) -> Path | None:
        return None if self.cache is None else self.cache / kind


def test_the_gate_is_on_for_many_views_per_object_and_off_for_few():
    many = measure_profile(*_with_search(_clustered(objects=24, views=16)))
    few = measure_profile(*_with_search(_clustered(objects=100, views=3)))
    groupless = measure_profile(*_with_search(_clustered(objects=0, views=1, singletons=400)))
    assert many.supports() and many.neighbourhood == 16, many.describe()  # 15 other views: k = 16 on the grid
    assert not few.supports() and few.neighbourhood == 2, few.describe()  # the 2 other views of each object
    assert not groupless.supports() and groupless.neighbourhood == 0, groupless.describe()  # rises, never falls
    assert GraphProfile.from_dict(many.to_dict()) == many


def _with_search(vectors: np.ndarray) -> tuple[np.ndarray, object]:
    return vectors, VectorContext(vectors).search


def test_the_profile_is_measured_once_per_generation_and_cached(tmp_path):
    ctx = VectorContext(_clustered(objects=10, views=8), cache=tmp_path)
    first = graph_profile(ctx)
    searches = ctx.searches
    assert searches > 0 and list((tmp_path / "graph").glob("gen-1-*.json"))
    assert graph_profile(ctx) == first and ctx.searches == searches  # read from the cache file
    ctx.generation = "gen-2"  # a new generation (images added or removed) is measured again
    graph_profile(ctx)
    assert ctx.searches > searches
    step = AutoRerank()
    assert step._profile(ctx) == step._profile(ctx) and len(step._profiles) == 1  # memoised per process


def test_the_gate_is_off_on_a_few_view_collection_and_graph_forces_it(collection):
    index, queries = collection
    auto = AutoRerank(k=20)
    index.search(queries / "object_query.png", k=5, rerank=[auto])
    assert auto.last_decision["graph"] is False and auto.last_decision["profile"]["neighbourhood"] < MIN_NEIGHBOURHOOD
    assert "does not support" in auto.last_decision["graph_why"]
    off = AutoRerank(k=20, graph="off")
    plain_auto = index.search(queries / "object_query.png", k=5, rerank=[off])
    assert off.last_decision["graph"] is False and off.last_decision["profile"] is None  # not even measured
    assert [r.path for r in plain_auto] == [r.path for r in index.search(queries / "object_query.png", k=5, rerank=[auto])]
    on = AutoRerank(k=20, graph="on")
    forced = index.search(queries / "object_query.png", k=5, rerank=[on])
    assert on.last_decision["graph"] is True and on.last_decision["graph_why"] == "graph=on"
    assert sorted(r.path.rsplit("/", 1)[-1] for r in forced[:VIEWS]) == [f"object_{i}.png" for i in range(VIEWS)]
    assert [r.score for r in forced] == sorted((r.score for r in forced), reverse=True)
    with pytest.raises(ConfigError):
        parse_chain("auto:graph=maybe")


# --- fusion with stored kinds --------------------------------------------------------------------

def test_the_recommended_fusion_follows_the_stored_kinds():
    assert recommended_fusion({"asmk": "asmk", "bow": "bow"}) == "cnn+bow+asmk:mean_power"
    assert recommended_fusion({"asmk16k": "asmk", "vlad": "vlad"}) == "cnn+asmk16k:mean_power"
    assert recommended_fusion({"bow": "bow"}) == "cnn+bow:ghm"
    assert recommended_fusion({"vlad": "vlad"}) is None and recommended_fusion({}) is None


class FusingIndexContext(IndexContext):
    """The pipeline's own context, recording the fusions it was asked for."""

    def __init__(self, index) -> None:
        super().__init__(index)
        self.fused: list[str] = []

    def fused_shortlist(self, query: QueryInput, fusion: str, depth: int) -> Shortlist:
        self.fused.append(fusion)
        return super().fused_shortlist(query, fusion, depth)


class BareContext:
    """A re-ranking context that offers no stored kinds (a third-party one, say)."""

    def __init__(self, index) -> None:
        self._inner = IndexContext(index)

    def __getattr__(self, name: str):
        if name in ("stored_kinds", "fused_shortlist"):
            raise AttributeError(name)
        return getattr(self._inner, name)


@pytest.fixture(scope="module")
def with_bow(collection, tmp_path_factory):
    """A copy of the collection's index with a tiny BoW kind encoded."""
    index, queries = collection
    root = tmp_path_factory.mktemp("auto-bow") / "i"
    shutil.copytree(index.root, root)
    matchlens.api.encode(root, "bow", params={"k": 32, "niter": 3})
    return matchlens.open_index(root), queries


def _searcher(index, context_type=FusingIndexContext) -> SearchPipeline:
    pipeline = SearchPipeline(index.store, index.pipeline.encoder)
    pipeline.context = context_type(index.store)
    return pipeline


def test_auto_fuses_its_shortlist_when_kinds_are_stored_and_not_otherwise(collection, with_bow):
    fused_index, queries = with_bow
    query = queries / "object_query.png"
    step = AutoRerank(k=20)
    searcher = _searcher(fused_index)
    results = searcher.search(query, k=5, rerank=[step])
    assert set(searcher.context.fused) == {"cnn+bow:ghm"} and step.last_decision["fuse"] == "cnn+bow:ghm"
    assert sorted(r.path.rsplit("/", 1)[-1] for r in results[:VIEWS]) == [f"object_{i}.png" for i in range(VIEWS)]
    plain = _searcher(collection[0])  # no stored kind: nothing to fuse
    plain.search(query, k=5, rerank=[step])
    assert plain.context.fused == [] and step.last_decision["fuse"] is None
    assert step.last_decision["fuse_why"] == "no stored kinds"
    none = _searcher(fused_index)
    none.search(query, k=5, rerank="auto:k=20,fuse=none")
    assert none.context.fused == []
    given = _searcher(fused_index)
    given.search(query, k=5, rerank="auto:fuse=cnn+bow:mean_power,k=20")  # fuse first: its ":" would start a step
    assert set(given.context.fused) == {"cnn+bow:mean_power"}
    bare = _searcher(fused_index, BareContext)  # a context that cannot fuse
    bare.search(query, k=5, rerank=[step])
    assert step.last_decision["fuse"] is None and "offers no stored kinds" in step.last_decision["fuse_why"]
