"""Query expansion (AQE, αQE), database-side augmentation and k-reciprocal re-ranking on built cases."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import faiss
import numpy as np
import pytest

from matchlens.errors import ConfigError
from matchlens.rerank import RERANKERS, QueryInput, Shortlist, parse_chain
from matchlens.rerank.dba import DBA_DEFAULTS, _self_first, dba_vectors, validate_dba_params
from matchlens.rerank.kreciprocal import KReciprocal, _initial_rank, _reciprocal, k_reciprocal_distance
from matchlens.rerank.qe import AQE, AlphaQE


class FakeContext:
    """A RerankContext over an in-memory array: exact inner-product search, recorded queries."""

    def __init__(self, vectors: np.ndarray) -> None:
        self._vectors = np.asarray(vectors, dtype=np.float32)
        self.queries: list[np.ndarray] = []

    @property
    def vectors(self) -> np.ndarray:
        return self._vectors

    @property
    def generation(self) -> str:
        return "g"

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.queries.append(np.array(vectors))
        scores = vectors @ self._vectors.T
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, rows, axis=1).astype(np.float32), rows.astype(np.int64)

    def image_path(self, row: int) -> str:
        return f"/img/{row}.jpg"

    def image_sha256(self, row: int) -> str:
        return f"sha{row}"

    def cache_dir(self, kind: str) -> Path | None:
        return None


def first_search(ctx: FakeContext, query: np.ndarray, k: int) -> Shortlist:
    scores, rows = ctx.search(query[None, :].astype(np.float32), k)
    ctx.queries.clear()
    return Shortlist(rows[0], scores[0])


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# --- AQE / αQE ---------------------------------------------------------------------------------
# q = e0. Each database vector leans from q towards its own axis by its cosine c:
#   X1 (distractor, c=0.90, axis e1), P1 (positive, 0.88, e2), X2 (distractor, 0.70, e3),
#   P2 (positive, 0.60, e2 — same plane as P1, so P1ᵀP2 = cos(53.1° - 28.4°) ≈ 0.91), F (far, 0.1, e4).
X1, P1, X2, P2, F = range(5)


def lean(c: float, axis: int, dim: int = 5) -> np.ndarray:
    v = np.zeros(dim)
    v[0], v[axis] = c, np.sqrt(1 - c * c)
    return v


QE_DB = np.array([lean(0.90, 1), lean(0.88, 2), lean(0.70, 3), lean(0.60, 2), lean(0.10, 4)])
Q = np.eye(5)[0]


def test_aqe_expands_with_top_k_and_reorders() -> None:
    ctx = FakeContext(QE_DB)
    shortlist = first_search(ctx, Q, 5)
    assert list(shortlist.rows) == [X1, P1, X2, P2, F]

    # k=1: q + X1 (sum ∝ (1.9, .436, 0, 0, 0)) scores X2 ∝ 1.33 above P2 ∝ 1.14: order unchanged.
    one = AQE(k=1).rerank(QueryInput(Q), shortlist, ctx)
    np.testing.assert_allclose(ctx.queries[-1][0], unit(Q + QE_DB[X1]), atol=1e-6)
    assert list(one.rows) == [X1, P1, X2, P2, F]

    # k=2: q + X1 + P1 ∝ (2.78, .436, .475, 0, 0): P2 ∝ 1.668 + .8·.475 = 2.048 overtakes X2 ∝ 1.946.
    two = AQE(k=2).rerank(QueryInput(Q), shortlist, ctx)
    expanded = unit(Q + QE_DB[X1] + QE_DB[P1])
    np.testing.assert_allclose(ctx.queries[-1][0], expanded, atol=1e-6)
    assert list(two.rows) == [X1, P1, P2, X2, F]
    np.testing.assert_allclose(two.scores, np.sort(QE_DB @ expanded)[::-1], atol=1e-6)
    assert len(two) == len(shortlist) and AQE(k=2).depth == 2 and AQE().depth == 2


def test_aqe_keeps_shortlist_length_and_skips_padding() -> None:
    ctx = FakeContext(QE_DB)
    padded = Shortlist(np.array([X1, -1, -1]), np.array([0.9, -np.inf, -np.inf]))
    result = AQE(k=3).rerank(QueryInput(Q), padded, ctx)
    np.testing.assert_allclose(ctx.queries[-1][0], unit(Q + QE_DB[X1]), atol=1e-6)
    assert len(result) == 3
    empty = Shortlist(np.zeros(0), np.zeros(0))
    assert AQE().rerank(QueryInput(Q), empty, ctx) is empty


def test_alpha_qe_large_alpha_silences_weak_neighbours() -> None:
    ctx = FakeContext(QE_DB)
    shortlist = first_search(ctx, Q, 5)
    AlphaQE(k=4, alpha=40).rerank(QueryInput(Q), shortlist, ctx)
    # by hand: 0.9^40 = 1.48e-2, 0.88^40 = 6.0e-3, 0.7^40 = 6.4e-7, 0.6^40 = 1.3e-9
    weights = [0.9 ** 40, 0.88 ** 40, 0.7 ** 40, 0.6 ** 40]
    assert weights[2] < 1e-6 and weights[3] < 1e-8
    hand = unit(Q + sum(w * QE_DB[r] for w, r in zip(weights, [X1, P1, X2, P2])))
    np.testing.assert_allclose(ctx.queries[-1][0], hand, atol=1e-6)
    np.testing.assert_allclose(ctx.queries[-1][0], unit(Q + weights[0] * QE_DB[X1] + weights[1] * QE_DB[P1]),
                               atol=1e-5)  # the two weak neighbours contribute ~nothing

    # alpha=1 with a negatively similar neighbour: its weight is clipped to 0, not negative.
    ctx = FakeContext(np.vstack([QE_DB, -QE_DB[P1]]))
    AlphaQE(k=1, alpha=1).rerank(QueryInput(Q), Shortlist([5], [-0.88]), ctx)
    np.testing.assert_allclose(ctx.queries[-1][0], Q, atol=1e-7)


def test_qe_parameter_validation() -> None:
    for bad in ({"k": 0}, {"k": 1.5}, {"k": True}, {"kk": 2}):
        with pytest.raises(ConfigError):
            AQE(**bad)
    for bad in ({"alpha": 0}, {"alpha": -1.0}, {"alpha": "x"}, {"alpha": float("nan")}, {"k": -3}):
        with pytest.raises(ConfigError):
            AlphaQE(**bad)
    assert AlphaQE().params() == {"k": 10, "alpha": 3.0} and AlphaQE().depth == 10


# --- DBA ----------------------------------------------------------------------------------------
# Four unit vectors on a quarter circle; pairwise cosines:
#   d0·d1 = .8, d0·d2 = .6, d0·d3 = 0, d1·d2 = .96, d1·d3 = .6, d2·d3 = .8
# so with k=2 the neighbour lists (self first) are 0:[0,1,2] 1:[1,2,0] 2:[2,1,3] 3:[3,2,1].
DBA_DB = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])


def test_dba_linear_weights_by_hand() -> None:
    # w = (k - i) / k = 1, 0.5, 0 : the k-th neighbour is found but weighs nothing.
    expected = np.array([unit([1.4, 0.3]),   # d0 + .5 d1
                         unit([1.1, 1.0]),   # d1 + .5 d2
                         unit([1.0, 1.1]),   # d2 + .5 d1
                         unit([0.3, 1.4])])  # d3 + .5 d2
    out = dba_vectors(DBA_DB, k=2)
    assert out.dtype == np.float32 and out.shape == DBA_DB.shape
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_dba_alpha_weights_by_hand() -> None:
    # w = (cosine)^2, self included with weight 1.
    expected = np.array([unit([1.728, 0.672]),       # d0 + .64 d1 + .36 d2
                         unit([1.99296, 1.33728]),   # d1 + .9216 d2 + .64 d0
                         unit([1.33728, 1.99296]),   # d2 + .9216 d1 + .64 d3
                         unit([0.672, 1.728])])      # d3 + .64 d2 + .36 d1
    np.testing.assert_allclose(dba_vectors(DBA_DB, k=2, alpha=2), expected, atol=1e-6)


def test_dba_batch_size_does_not_change_results_and_rows_are_unit() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[7] = x[3]  # a duplicate ties with the row itself: each must still come first in its own list
    for alpha in (None, 3.0):
        whole = dba_vectors(x, k=5, alpha=alpha)
        np.testing.assert_allclose(dba_vectors(x, k=5, alpha=alpha, batch=1), whole, atol=1e-6)
        np.testing.assert_allclose(dba_vectors(x, k=5, alpha=alpha, batch=37), whole, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    # k larger than the collection: every row is a neighbour, no -1 padding leaks in.
    assert np.isfinite(dba_vectors(x[:3], k=10)).all()


def test_dba_puts_each_row_first_in_its_own_neighbour_list() -> None:
    # a duplicate of row 3 may be listed before it, or push it out of the list altogether
    found = np.array([[7, 3, 5], [9, 8, 2]])
    np.testing.assert_array_equal(_self_first(found, np.array([3, 4])), [[3, 7, 5], [4, 9, 8]])


def test_dba_large_collection_searches_in_batches(monkeypatch) -> None:
    seen: list[int] = []

    class SpyIndex(faiss.IndexFlatIP):
        def search(self, x, k, *args, **kwargs):
            seen.append(len(x))
            return super().search(x, k, *args, **kwargs)

    monkeypatch.setattr(faiss, "IndexFlatIP", SpyIndex)
    n, batch = 20000, 256
    x = np.random.default_rng(1).normal(size=(n, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tracemalloc.start()
    out = dba_vectors(x, k=3, batch=batch)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == x.shape
    assert max(seen) <= batch and sum(seen) == n
    # An N×N float32 matrix would be 1.6 GB; Python-side allocations stay a few times the input (5 MB).
    assert peak < 40e6


def test_dba_parameter_validation() -> None:
    assert validate_dba_params({}) == DBA_DEFAULTS == {"k": 3, "alpha": None}
    assert validate_dba_params({"alpha": 3}) == {"k": 3, "alpha": 3}
    for bad in ({"k": 0}, {"k": 2.0}, {"alpha": 0}, {"alpha": -1}, {"alpha": "3"}, {"beta": 1}):
        with pytest.raises(ConfigError):
            validate_dba_params(bad)
    with pytest.raises(ConfigError):
        dba_vectors(DBA_DB, batch=0)


# --- k-reciprocal -------------------------------------------------------------------------------
def kr_case() -> tuple[np.ndarray, np.ndarray]:
    """q = e0; 4 positives, a 5-image distractor cluster, 3 unrelated images (rows in that order).

    Positives P1..P4 lean from q to their own axes (cosine .82/.81/.80/.79, so PᵢᵀPⱼ ≈ .65 < qᵀPᵢ:
    q is every positive's nearest). The distractor X is q's top-1 (cosine .85) but its four
    cluster mates X2..X5 are nearer to it (.959), so q is not among X's 4 nearest.
    """
    dim = 14
    db = np.zeros((12, dim))
    for i, c in enumerate([0.82, 0.81, 0.80, 0.79]):
        db[i, 0], db[i, 2 + i] = c, np.sqrt(1 - c * c)
    db[4, :2], db[4, 6] = (0.85, 0.52), np.sqrt(1 - 0.85 ** 2 - 0.52 ** 2)
    for j in range(4):
        db[5 + j, :2], db[5 + j, 7 + j] = (0.7, 0.7), np.sqrt(0.02)
    for j, c in enumerate([0.3, 0.2, 0.1]):
        db[9 + j, 0], db[9 + j, 11 + j] = c, np.sqrt(1 - c * c)
    return np.eye(dim)[0], db


POSITIVES, X, CLUSTER, UNRELATED = [0, 1, 2, 3], 4, [5, 6, 7, 8], [9, 10, 11]


def test_k_reciprocal_sets_of_the_built_case() -> None:
    q, db = kr_case()
    head = np.vstack([q, db[:9]])  # index 0 is q, index 1 + r is database row r
    rank = _initial_rank(np.maximum(2 - 2 * head @ head.T, 0))
    # q's 5 nearest are q, X, P1, P2, P3; X's are X and its cluster: X is not reciprocal.
    assert list(rank[0, :5]) == [0, 1 + X, 1, 2, 3]
    assert sorted(_reciprocal(rank, 0, 4)) == [0, 1, 2, 3]
    assert sorted(_reciprocal(rank, 1 + X, 4)) == [1 + X] + [1 + r for r in CLUSTER]


@pytest.mark.parametrize("params", [{"k1": 4, "k2": 3}, {}])
def test_k_reciprocal_moves_reciprocal_positives_above_top1_distractor(params) -> None:
    q, db = kr_case()
    ctx = FakeContext(db)
    shortlist = first_search(ctx, q, 12)
    assert list(shortlist.rows) == [X, *POSITIVES, *CLUSTER, *UNRELATED]

    result = KReciprocal(k=9, **params).rerank(QueryInput(q), shortlist, ctx)
    assert list(result.rows) == [*POSITIVES, X, *CLUSTER, *UNRELATED]
    assert (np.diff(result.scores) <= 1e-7).all()
    # rows beyond k keep their order and their score differences
    np.testing.assert_allclose(np.diff(result.scores[9:]), np.diff(shortlist.scores[9:]), atol=1e-6)
    assert not ctx.queries  # no new search


def test_k_reciprocal_distance_limits() -> None:
    q, db = kr_case()
    head = np.vstack([q, db[:9]])
    # lambda_=1: the original distance 2 - 2cos alone (by default divided by the query row's
    # maximum, as the reference code does); the head order is the cosine order
    raw = 2 - 2 * head[1:] @ q
    np.testing.assert_allclose(k_reciprocal_distance(head, 4, 3, 1.0, row_max=False), raw, atol=1e-12)
    np.testing.assert_allclose(k_reciprocal_distance(head, 4, 3, 1.0), raw / raw.max(), atol=1e-12)
    jaccard = k_reciprocal_distance(head, 4, 3, 0.0)
    assert ((jaccard >= 0) & (jaccard <= 1)).all()
    # a shortlist shorter than 2 is returned as is; k beyond the shortlist uses what there is
    ctx = FakeContext(db)
    one = Shortlist([X], [0.85])
    assert KReciprocal().rerank(QueryInput(q), one, ctx) is one
    assert len(KReciprocal(k=100).rerank(QueryInput(q), first_search(ctx, q, 12), ctx)) == 12


def test_k_reciprocal_parameter_validation() -> None:
    assert KReciprocal().params() == {"k": 100, "k1": 20, "k2": 6, "lambda_": 0.3, "norm": "row_max"}
    assert KReciprocal().depth == 100
    for bad in ({"k": 0}, {"k1": 0}, {"k2": 2.5}, {"lambda_": 1.5}, {"lambda_": -0.1}, {"lambda_": "a"}, {"lam": 1},
                {"norm": "max"}):
        with pytest.raises(ConfigError):
            KReciprocal(**bad)


# --- chain parsing ------------------------------------------------------------------------------
def test_parse_chain_builds_the_three() -> None:
    aqe, alpha_qe, kr = parse_chain("aqe:k=3,alpha_qe:k=5,alpha=2,kr")
    assert isinstance(aqe, AQE) and aqe.params() == {"k": 3}
    assert isinstance(alpha_qe, AlphaQE) and alpha_qe.params() == {"k": 5, "alpha": 2}
    assert isinstance(kr, KReciprocal) and kr.params() == KReciprocal.defaults
    assert [RERANKERS.get(n) for n in ("aqe", "alpha_qe", "kr")] == [AQE, AlphaQE, KReciprocal]
    assert repr(alpha_qe) == "alpha_qe:k=5,alpha=2"
    with pytest.raises(ConfigError):
        parse_chain("kr:lambda_=2")


def test_dba_lifts_a_positive_whose_neighbour_resembles_the_query() -> None:
    """P shows the query's object from an angle (cosine .50), but its nearest neighbour P2 is a
    close view (.95); the distractor X is a little nearer the query (.55), but its neighbour X2 points
    away. DBA (k=2) averages each vector with its neighbour, so P overtakes X."""
    q = unit([1.0, 0.0, 0.0])
    db = np.array([unit([0.5, 0.866, 0.0]),    # 0: P
                   unit([0.95, 0.31, 0.0]),    # 1: P2
                   unit([0.55, 0.0, 0.835]),   # 2: X
                   unit([0.0, 0.0, 1.0])],     # 3: X2
                  dtype=np.float32)
    before = db @ q
    after = dba_vectors(db, k=2) @ q
    assert before[2] > before[0] and after[0] > after[2]
    assert list(np.argsort(-before)) == [1, 2, 0, 3] and list(np.argsort(-after)) == [1, 0, 2, 3]
