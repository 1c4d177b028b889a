"""Diffusion re-ranking: the mutual kNN graph, its cache, truncated diffusion on constructed manifolds."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from matchlens.errors import ConfigError
from matchlens.rerank import RERANKERS, QueryInput, Shortlist, parse_chain
from matchlens.rerank import diffusion
from matchlens.rerank.diffusion import Diffusion, build_knn_graph, graph_for, induced_subgraph, load_graph, save_graph

CHAIN = 19  # rows 0..18: unit vectors at 0°, 5°, ..., 90° in the xy-plane
DISTRACTORS = [19, 20, 21]  # a tight cluster 60° above the plane, at azimuths 43°, 45°, 47°


class FakeContext:
    """The parts of RerankContext that diffusion uses."""

    def __init__(self, vectors: np.ndarray, cache: Path | None = None, generation: str = "gen1") -> None:
        self.vectors = vectors
        self.generation = generation
        self._cache = cache

    def cache_dir(self, kind: str) -> Path | None:
        return None if self._cache is None else self._cache / kind


def unit(azimuth_deg: float, elevation_deg: float = 0.0) -> np.ndarray:
    a, e = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    return np.array([np.cos(a) * np.cos(e), np.sin(a) * np.cos(e), np.sin(e)])


@pytest.fixture(scope="module")
def manifold() -> np.ndarray:
    """A chain along a quarter circle plus an off-manifold cluster that cosine ranks mid-chain."""
    chain = [unit(a) for a in range(0, 95, 5)]
    cluster = [unit(a, 60) for a in (43, 45, 47)]
    return np.array(chain + cluster, dtype=np.float32)


def cosine_shortlist(vectors: np.ndarray, query: np.ndarray) -> Shortlist:
    sims = vectors @ query
    order = np.argsort(-sims, kind="stable")
    return Shortlist(order, sims[order])


# --- graph ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_graph_keeps_only_mutual_edges_with_affinity_sim_to_gamma(gamma: float) -> None:
    # k=2 at 0°, 30°, 60°, 90°: 0°→60° and 90°→30° are one-way (60° and 30° prefer their other side).
    x = np.array([unit(a) for a in (0, 30, 60, 90)], dtype=np.float32)
    graph = build_knn_graph(x, k=2, gamma=gamma)
    edges = {(int(i), int(j)) for i, j in zip(*graph.nonzero())}
    assert edges == {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)}
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    for i, j in edges:
        assert graph[i, j] == pytest.approx(sims[i, j] ** gamma, rel=1e-6)
    assert graph.dtype == np.float32 and (graph != graph.T).nnz == 0


def test_graph_clips_negative_similarity_and_skips_duplicates_of_self() -> None:
    # Rows 0 and 1 coincide (FAISS may list 1 before 0 for query 0); row 2 is opposite to them.
    x = np.array([[1, 0], [1, 0], [-1, 0]], dtype=np.float32)
    graph = build_knn_graph(x, k=2, gamma=3.0).toarray()
    assert np.all(np.diag(graph) == 0)
    assert graph[0, 1] == graph[1, 0] == 1.0
    assert graph[0, 2] == graph[2, 0] == 0.0  # mutual but max(-1, 0)^γ = 0: no edge stored
    assert build_knn_graph(x, k=2).nnz == 2


def test_graph_is_independent_of_batch_size(manifold: np.ndarray) -> None:
    whole = build_knn_graph(manifold, k=4)
    batched = build_knn_graph(manifold, k=4, batch=5)
    assert (whole != batched).nnz == 0


def test_graph_memory_stays_linear() -> None:
    # 30000 vectors: an N×N float32 matrix would be 3.6 GB; the graph holds at most N·k edges.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    start = time.perf_counter()
    graph = build_knn_graph(x, k=10)
    elapsed = time.perf_counter() - start
    assert graph.shape == (30000, 30000)
    assert 0 < graph.nnz <= 30000 * 10
    assert elapsed < 30, f"graph build took {elapsed:.1f}s"


def test_induced_subgraph_equals_scipy_slicing() -> None:
    rng = np.random.default_rng(1)
    graph = sp.random(200, 200, density=0.05, random_state=2, format="csr", dtype=np.float32)
    nodes = rng.permutation(200)[:40]
    expected = graph[nodes][:, nodes]
    assert (induced_subgraph(graph, nodes) != expected).nnz == 0


# --- cache ---------------------------------------------------------------------------------------

def test_graph_for_writes_once_then_loads(manifold: np.ndarray, tmp_path: Path, monkeypatch) -> None:
    ctx = FakeContext(manifold, cache=tmp_path)
    first = graph_for(ctx, 4, 3)
    files = list((tmp_path / "diffusion").iterdir())
    assert [f.name for f in files] == ["gen1-k4-g3.0.npz"]  # no temp file left behind

    def refuse(*args, **kwargs):
        raise AssertionError("the cached graph should have been loaded")

    monkeypatch.setattr(diffusion, "build_knn_graph", refuse)
    second = graph_for(ctx, 4, 3.0)
    assert isinstance(second, sp.csr_matrix) and (first != second).nnz == 0


def test_graph_for_rebuilds_damaged_cache(manifold: np.ndarray, tmp_path: Path) -> None:
    ctx = FakeContext(manifold, cache=tmp_path)
    (tmp_path / "diffusion").mkdir()
    path = tmp_path / "diffusion" / "gen1-k4-g3.0.npz"
    path.write_bytes(b"not an npz")
    graph = graph_for(ctx, 4, 3.0)
    assert (load_graph(path) != graph).nnz == 0


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    graph = sp.csr_matrix(np.array([[0, 0.5], [0.5, 0]], dtype=np.float32))
    save_graph(tmp_path / "g.npz", graph)
    save_graph(tmp_path / "g.npz", graph * 2)  # replaces
    assert load_graph(tmp_path / "g.npz").toarray().tolist() == [[0, 1], [1, 0]]
    assert [p.name for p in tmp_path.iterdir()] == ["g.npz"]


def test_without_cache_dir_the_reranker_builds_once_and_keeps_it(manifold: np.ndarray, monkeypatch) -> None:
    calls = []
    real = diffusion.build_knn_graph
    monkeypatch.setattr(diffusion, "build_knn_graph", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    ctx = FakeContext(manifold)
    reranker = Diffusion(knn=4)
    for q in (0, 18):
        reranker.rerank(QueryInput(manifold[q]), cosine_shortlist(manifold, manifold[q]), ctx)
    assert len(calls) == 1
    new_generation = FakeContext(manifold, None, "gen2")
    reranker.rerank(QueryInput(manifold[0]), cosine_shortlist(manifold, manifold[0]), new_generation)
    assert len(calls) == 2  # a new generation gets a new graph


# --- re-ranking ----------------------------------------------------------------------------------

def test_diffusion_follows_the_manifold_past_the_distractor(manifold: np.ndarray) -> None:
    query = manifold[0]
    before = cosine_shortlist(manifold, query)
    rank = {int(r): i for i, r in enumerate(before.rows)}
    assert all(rank[d] < rank[CHAIN - 1] for d in DISTRACTORS)  # cosine: cluster above the 90° end

    after = Diffusion(knn=3, query_knn=5).rerank(QueryInput(query), before, FakeContext(manifold))
    assert sorted(after.rows[:CHAIN].tolist()) == list(range(CHAIN))  # the whole chain first, 90° end included
    assert after.rows[CHAIN:].tolist() == DISTRACTORS  # unreached: score 0, input order kept
    assert np.all(after.scores[:CHAIN] > 0) and np.all(after.scores[CHAIN:] == 0)


def test_entries_beyond_k_keep_their_input_order(manifold: np.ndarray) -> None:
    before = cosine_shortlist(manifold, manifold[0])
    after = Diffusion(k=6, knn=3, query_knn=3).rerank(QueryInput(manifold[0]), before, FakeContext(manifold))
    assert len(after) == len(before)
    assert sorted(after.rows[:6].tolist()) == sorted(before.rows[:6].tolist())
    assert after.rows[6:].tolist() == before.rows[6:].tolist()
    assert np.all(np.diff(after.scores) <= 0)
    np.testing.assert_allclose(np.diff(after.scores[6:]), np.diff(before.scores[6:]), atol=1e-6)  # gaps kept


@pytest.mark.parametrize("k", [8, 100])
def test_truncated_solve_equals_a_dense_solve_on_the_shortlist_subgraph(manifold: np.ndarray, k: int) -> None:
    # k=100 >= N: the full, non-truncated diffusion; k=8: the subgraph's own degrees normalise S.
    query, alpha, gamma = manifold[2], 0.9, 3.0
    before = cosine_shortlist(manifold, query)
    # knn=5: lists of 5 counting the vector itself (the reference's meaning) = 4 other neighbours
    reranker = Diffusion(k=k, knn=5, query_knn=4, alpha=alpha, iterations=500, tol=1e-12)
    after = reranker.rerank(QueryInput(query), before, FakeContext(manifold))

    nodes = before.rows[:k]
    w = build_knn_graph(manifold, k=4, gamma=gamma).toarray().astype(np.float64)[np.ix_(nodes, nodes)]
    degrees = w.sum(axis=1)
    inv_sqrt = np.where(degrees > 0, 1 / np.sqrt(np.where(degrees > 0, degrees, 1)), 0)
    s = inv_sqrt[:, None] * w * inv_sqrt[None, :]
    y = np.zeros(len(nodes))
    y[:4] = np.maximum(manifold[nodes[:4]].astype(np.float64) @ query, 0) ** gamma
    f = dict(zip(nodes.tolist(), np.linalg.solve(np.eye(len(nodes)) - alpha * s, y)))

    expected = np.array([f[r] for r in after.rows[:len(nodes)].tolist()])
    np.testing.assert_allclose(after.scores[:len(nodes)], expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(expected) <= 1e-9)  # the same order as the dense solution


def test_empty_shortlist_is_returned_unchanged(manifold: np.ndarray) -> None:
    empty = Shortlist(np.zeros(0, np.int64), np.zeros(0, np.float32))
    assert len(Diffusion().rerank(QueryInput(manifold[0]), empty, FakeContext(manifold))) == 0


# --- parameters ----------------------------------------------------------------------------------

def test_registered_with_defaults_and_depth() -> None:
    assert RERANKERS.get("diffusion") is Diffusion
    (step,) = parse_chain("diffusion:k=200,gamma=3,alpha=0.9")
    assert isinstance(step, Diffusion) and step.depth == 200
    assert step.config["gamma"] == 3.0 and isinstance(step.config["gamma"], float)
    assert Diffusion().params() == {"k": 1000, "knn": 50, "knn_counts": "self", "gamma": 3.0, "alpha": 0.99,
                                    "query_knn": 10, "iterations": 20, "tol": 1e-6}


@pytest.mark.parametrize(("params", "others"),
                         [({"knn": 5}, 4), ({"knn": 4, "knn_counts": "others"}, 4), ({"knn": 1}, 0)])
def test_knn_counts_the_vector_itself_unless_knn_counts_is_others(manifold: np.ndarray, tmp_path: Path,
                                                               params: dict, others: int) -> None:
    """The cache is named by the number of other neighbours, so a graph cached before knn counted
    the vector itself (``GEN-k4-…`` for the old knn=4) is what knn=5 now reads."""
    reranker = Diffusion(**params)
    assert reranker.neighbours == others
    reranker.rerank(QueryInput(manifold[0]), cosine_shortlist(manifold, manifold[0]), FakeContext(manifold, tmp_path))
    graph = load_graph(tmp_path / "diffusion" / f"gen1-k{others}-g3.0.npz")
    assert (graph != build_knn_graph(manifold, k=others)).nnz == 0


@pytest.mark.parametrize("params", [
    {"alpha": 0}, {"alpha": 1}, {"alpha": 1.5}, {"alpha": -0.1}, {"alpha": float("nan")},
    {"gamma": 0}, {"gamma": -1.0}, {"gamma": float("inf")}, {"gamma": "three"},
    {"k": 0}, {"k": 2.5}, {"k": True}, {"knn": 0}, {"query_knn": -3}, {"iterations": 0},
    {"tol": 0}, {"beta": 1}, {"knn_counts": "yes"},
])
def test_bad_parameters_raise_one_line_config_error(params: dict) -> None:
    with pytest.raises(ConfigError) as err:
        Diffusion(**params)
    assert "\n" not in str(err.value)
