"""The defaults of k-reciprocal re-ranking, learned whitening and diffusion reproduce their
reference code to 1e-5 on fixed inputs.

tests/expected/reference_*.npz hold the inputs (drawn with the recorded seeds) and the values the
published code computed from them; reference_sources.json says which code, at which commit, was
called how (docs/reference-exactness.md). The reference code itself is not part of matchlens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from matchlens.rerank import QueryInput, Shortlist
from matchlens.rerank.diffusion import Diffusion
from matchlens.rerank.kreciprocal import KReciprocal, k_reciprocal_distance
from matchlens.whitening import LearnedWhitening, load_whitening

EXPECTED = Path(__file__).parent / "expected"
TOL = 1e-5


def _cases(name: str) -> tuple[np.lib.npyio.NpzFile, list[int]]:
    data = np.load(EXPECTED / f"reference_{name}.npz")
    count = len({key.split("_")[0] for key in data.files})
    return data, list(range(count))


KR, KR_CASES = _cases("kreciprocal")
LW, LW_CASES = _cases("lw")
DIFF, DIFF_CASES = _cases("diffusion")


class VectorContext:
    """The parts of RerankContext that the rerankers use: the collection's vectors, no cache."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        self.generation = "reference"

    def cache_dir(self, kind: str) -> None:
        return None


def by_similarity(vectors: np.ndarray, query: np.ndarray) -> Shortlist:
    sims = vectors @ query
    order = np.argsort(-sims, kind="stable")
    return Shortlist(order.astype(np.int64), sims[order].astype(np.float32))


def test_sources_are_recorded() -> None:
    sources = json.loads((EXPECTED / "reference_sources.json").read_text())
    for method in ("kreciprocal", "lw", "diffusion"):
        assert len(sources[method]["commit"]) == 40 and sources[method]["repo"]
    for data in (KR, LW, DIFF):
        assert all(int(data[f"case{i}_seed"]) > 0 for i in range(len({k.split('_')[0] for k in data.files})))


# --- k-reciprocal (zhunzhong07/person-re-ranking) ------------------------------------------------

@pytest.mark.parametrize("case", KR_CASES)
def test_k_reciprocal_distance_equals_reference(case: int) -> None:
    vectors = KR[f"case{case}_vectors"]
    k1, k2, lambda_ = KR[f"case{case}_params"]
    ours = k_reciprocal_distance(vectors, int(k1), int(k2), float(lambda_))
    np.testing.assert_allclose(ours, KR[f"case{case}_final"], rtol=0, atol=TOL)


@pytest.mark.parametrize("case", KR_CASES)
def test_k_reciprocal_reranker_defaults_rank_as_reference(case: int) -> None:
    """The reranker with default norm, over a shortlist of exactly the reference's gallery."""
    vectors = KR[f"case{case}_vectors"]
    k1, k2, lambda_ = KR[f"case{case}_params"]
    expected = KR[f"case{case}_final"]
    query, gallery = vectors[0], vectors[1:]
    reranker = KReciprocal(k=len(gallery), k1=int(k1), k2=int(k2), lambda_=float(lambda_))
    out = reranker.rerank(QueryInput(query), by_similarity(gallery, query), VectorContext(gallery))
    np.testing.assert_allclose(out.scores, 1.0 - expected[out.rows], atol=TOL)
    np.testing.assert_array_equal(out.rows, np.argsort(expected, kind="stable"))


def test_k_reciprocal_without_row_max_is_a_different_method() -> None:
    vectors = KR["case0_vectors"]
    k1, k2, lambda_ = KR["case0_params"]
    raw = k_reciprocal_distance(vectors, int(k1), int(k2), float(lambda_), row_max=False)
    assert np.abs(raw - KR["case0_final"]).max() > 0.05
    assert KReciprocal().params()["norm"] == "row_max"


# --- learned whitening (cirtorch whitenlearn) ----------------------------------------------------

def _row_signs_aligned(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``ours`` with each row's sign flipped to agree with ``reference`` (eigenvectors have no sign)."""
    return ours * np.sign(np.sum(ours * reference, axis=1))[:, None]


@pytest.mark.parametrize("case", LW_CASES)
def test_lw_defaults_equal_cirtorch_whitenlearn(case: int) -> None:
    X, pairs = LW[f"case{case}_vectors"], LW[f"case{case}_pairs"]
    lw = LearnedWhitening().fit_pairs(X, pairs)  # no non-matching pairs: cirtorch does not use them
    reference = LW[f"case{case}_projection"]
    np.testing.assert_allclose(lw.mean_, LW[f"case{case}_mean"], atol=TOL)
    scale = np.abs(reference).max()
    np.testing.assert_allclose(_row_signs_aligned(lw.projection_, reference) / scale, reference / scale, atol=TOL)


@pytest.mark.parametrize("case", LW_CASES)
def test_lw_whitened_similarities_equal_cirtorch_whitenapply(case: int) -> None:
    """What retrieval sees, sign-free: inner products of whitened vectors, full and cut to d/2."""
    X, pairs = LW[f"case{case}_vectors"], LW[f"case{case}_pairs"]
    full = LearnedWhitening().fit_pairs(X, pairs)
    for key, lw in (("applied", full), ("applied_dim", full.truncated(X.shape[1] // 2))):
        ours = lw.transform(X[:20]).astype(np.float64)
        reference = LW[f"case{case}_{key}"]
        np.testing.assert_allclose(ours @ ours.T, reference @ reference.T, atol=TOL)


def test_lw_paper_options_differ_and_legacy_files_keep_their_meaning(tmp_path: Path) -> None:
    X, pairs = LW["case0_vectors"], LW["case0_pairs"]
    rng = np.random.default_rng(7)
    others = rng.integers(0, len(X), size=(200, 2))
    paper = LearnedWhitening(shrinkage=0.1, rotation="pairs", centre="all").fit_pairs(X, pairs, others)
    default = LearnedWhitening().fit_pairs(X, pairs)
    assert np.abs(paper.transform(X[:20]) @ paper.transform(X[:20]).T
                  - default.transform(X[:20]) @ default.transform(X[:20]).T).max() > 0.01
    # A whitening saved before rotation/centre existed: its params name only dim, shrinkage, eps.
    paper.save(tmp_path / "old.npz")
    with np.load(tmp_path / "old.npz") as raw:
        arrays = dict(raw)
    arrays["params"] = np.array(json.dumps({"dim": None, "shrinkage": 0.1, "eps": 1e-9}))
    np.savez(tmp_path / "old.npz", **arrays)
    old = load_whitening(tmp_path / "old.npz")
    assert isinstance(old, LearnedWhitening) and (old.rotation, old.centre) == ("pairs", "all")
    np.testing.assert_array_equal(old.transform(X), paper.transform(X))


# --- diffusion (ahmetius/diffusion-retrieval, MATLAB code run in Octave) --------------------------

@pytest.mark.parametrize("case", DIFF_CASES)
def test_diffusion_defaults_equal_reference(case: int) -> None:
    vectors = DIFF[f"case{case}_vectors"].astype(np.float32)
    query = DIFF[f"case{case}_query"]
    knn, query_knn, k, iterations, gamma, alpha, tol = DIFF[f"case{case}_params"]
    expected = DIFF[f"case{case}_f"]
    reranker = Diffusion(k=int(k), knn=int(knn), query_knn=int(query_knn), iterations=int(iterations),
                         gamma=float(gamma), alpha=float(alpha), tol=float(tol))
    assert {key: reranker.params()[key] for key in ("knn_counts", "gamma", "alpha", "tol")} == \
        {key: Diffusion().params()[key] for key in ("knn_counts", "gamma", "alpha", "tol")}
    out = reranker.rerank(QueryInput(query), by_similarity(vectors, query), VectorContext(vectors))
    head = out.rows[:int(k)]
    np.testing.assert_allclose(out.scores[:int(k)], expected[head], rtol=0, atol=TOL)
    assert np.all(np.diff(expected[head]) <= TOL)  # our order sorts the reference's scores (ties at 0 aside)


def test_diffusion_knn_counts_others_is_one_more_neighbour() -> None:
    vectors, query = DIFF["case1_vectors"].astype(np.float32), DIFF["case1_query"]
    knn, query_knn, k = (int(v) for v in DIFF["case1_params"][:3])
    shortlist = by_similarity(vectors, query)
    same = Diffusion(k=k, knn=knn - 1, knn_counts="others", query_knn=query_knn)
    out = same.rerank(QueryInput(query), shortlist, VectorContext(vectors))
    np.testing.assert_allclose(out.scores[:k], DIFF["case1_f"][out.rows[:k]], atol=TOL)
    other = Diffusion(k=k, knn=knn, knn_counts="others", query_knn=query_knn)
    moved = other.rerank(QueryInput(query), shortlist, VectorContext(vectors))
    assert np.abs(moved.scores[:k] - DIFF["case1_f"][moved.rows[:k]]).max() > 0.01
