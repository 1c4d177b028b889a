"""Metrics against hand-computed values, and AP against an independent re-implementation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matchlens.evaluate import (
    average_precision,
    average_precision_at_k,
    mean_average_precision,
    ns_score,
    precision_at_k,
    recall_at_k,
)

# ---------------------------------------------------------------------------- average_precision


def test_ap_perfect_ranking_is_one() -> None:
    # positives at 0 and 1: (1+1)/4 + (1/1+2/2)/4 = 1
    assert average_precision(["a", "b", "c", "d"], {"a", "b"}) == pytest.approx(1.0, abs=1e-15)


def test_ap_single_positive_at_rank_two_of_three() -> None:
    # j=0, r=1: precision 0/1 before, 1/2 after -> (0 + 1/2) / 2 = 1/4
    assert average_precision(["x", "p", "y"], {"p"}) == pytest.approx(0.25, abs=1e-15)


def test_ap_three_of_four_positives_found() -> None:
    # ranks 1, 2, 4 of 4 positives (recall step 1/4):
    # (0 + 1/2)/8 + (1/2 + 2/3)/8 + (2/4 + 3/5)/8 = 15/240 + 35/240 + 33/240 = 83/240
    ranking = ["n1", "p1", "p2", "n2", "p3"]
    ap = average_precision(ranking, {"p1", "p2", "p3", "p4"})
    assert ap == pytest.approx(83 / 240, abs=1e-15)


def test_ap_junk_is_removed_not_counted_as_negative() -> None:
    # junk-free ranking = [p1, n1, p2]: ranks 0, 2 -> (1+1)/4 + (1/2 + 2/3)/4 = 1/2 + 7/24 = 19/24
    ranking = ["j1", "p1", "n1", "j2", "p2"]
    ap = average_precision(ranking, {"p1", "p2"}, junk={"j1", "j2"})
    assert ap == pytest.approx(19 / 24, abs=1e-15)
    # Had the junk counted as negatives (ranks 1 and 4) AP would be 1/8 + 13/80 = 23/80.
    assert average_precision(ranking, {"p1", "p2"}) == pytest.approx(23 / 80, abs=1e-15)


def test_ap_query_itself_passed_as_junk_is_ignored() -> None:
    assert average_precision(["q", "p", "n"], {"p"}, junk={"q"}) == pytest.approx(1.0)
    assert average_precision(["q", "p", "n"], {"p"}) == pytest.approx(0.25)


def test_ap_no_positives_is_nan_and_mean_skips_it() -> None:
    ap = average_precision(["a", "b"], set())
    assert math.isnan(ap)
    assert mean_average_precision([1.0, ap, 0.5]) == pytest.approx(0.75, abs=1e-15)


def test_mean_of_nothing_or_only_nan_is_nan() -> None:
    assert math.isnan(mean_average_precision([]))
    assert math.isnan(mean_average_precision([math.nan, math.nan]))
    assert mean_average_precision(iter([0.25, 0.75, 0.5])) == pytest.approx(0.5, abs=1e-15)


def test_ap_all_junk_ranking_is_zero() -> None:
    assert average_precision(["j1", "j2"], {"p"}, junk={"j1", "j2"}) == 0.0
    assert average_precision([], {"p"}) == 0.0


def test_ap_positive_absent_from_ranking_counts_in_denominator() -> None:
    # p1 at rank 0 with 2 positives: (1+1)/(2*2) = 1/2; the missing p2 adds 0.
    assert average_precision(["p1", "n"], {"p1", "p2"}) == pytest.approx(0.5, abs=1e-15)


def test_ap_ties_are_resolved_by_list_order() -> None:
    # Two results with equal scores: the function scores exactly the order it is given.
    assert average_precision(["p", "n"], {"p"}) == pytest.approx(1.0)
    assert average_precision(["n", "p"], {"p"}) == pytest.approx(0.25)


def test_ap_id_both_positive_and_junk_is_junk() -> None:
    # Junk wins (as in map_from_search.py): p2 is removed, but still counts as a positive.
    assert average_precision(["p2", "p1"], {"p1", "p2"}, junk={"p2"}) == pytest.approx(0.5)


def test_ap_accepts_any_hashable_ids_and_lists_for_sets() -> None:
    assert average_precision((3, 1, 2), [1, 1], junk=[3]) == pytest.approx(1.0)


def test_repeated_id_in_ranking_is_refused() -> None:
    with pytest.raises(ValueError, match="more than once"):
        average_precision(["p", "p"], {"p"})
    with pytest.raises(ValueError, match="more than once"):
        ns_score(["q", "q"], {"q"})


# ----------------------------------------------------------------------- independent reference


def reference_ap(ranked: list[int], positives: set[int], junk: set[int]) -> float:
    """The AP loop of shared/tools/map_from_search.py, re-typed here as an independent check."""
    ranks = []
    k = 0
    for name in ranked:
        if name in junk:
            continue
        if name in positives:
            ranks.append(k)
        k += 1
    ap = 0.0
    for j, r in enumerate(ranks):
        p0 = 1.0 if r == 0 else j / r
        p1 = (j + 1) / (r + 1)
        ap += (p0 + p1) / (2 * len(positives))
    return ap


@st.composite
def ranking_case(draw: st.DrawFn) -> tuple[list[int], set[int], set[int]]:
    """A ranking over ids 0..39 with positives (some possibly unranked) and junk (may overlap)."""
    universe = list(range(40))
    ranked = draw(st.permutations(universe))[: draw(st.integers(0, 40))]
    positives = draw(st.sets(st.sampled_from(universe), min_size=1, max_size=15))
    junk = draw(st.sets(st.sampled_from(universe), max_size=15))
    return ranked, positives, junk


@settings(max_examples=400, deadline=None)
@given(ranking_case())
def test_ap_matches_map_from_search(case: tuple[list[int], set[int], set[int]]) -> None:
    ranked, positives, junk = case
    ap = average_precision(ranked, positives, junk)
    assert abs(ap - reference_ap(ranked, positives, junk)) <= 1e-12
    assert 0.0 <= ap <= 1.0 + 1e-12


@settings(max_examples=100, deadline=None)
@given(st.lists(ranking_case(), min_size=1, max_size=8))
def test_map_matches_checker_mean(cases: list[tuple[list[int], set[int], set[int]]]) -> None:
    # The checker averages plainly; with positives for every query nothing is skipped.
    ours = mean_average_precision(average_precision(*c) for c in cases)
    ref = sum(reference_ap(*c) for c in cases) / len(cases)
    assert abs(ours - ref) <= 1e-12


# ------------------------------------------------------------------------------- precision@k

CLEAN_P1_N_P2 = (["j", "p1", "n", "p2"], {"p1", "p2"}, {"j"})  # junk-free: [p1, n, p2]


@pytest.mark.parametrize("k, expected", [(1, 1.0), (2, 0.5), (3, 2 / 3), (10, 0.2)])
def test_precision_at_k(k: int, expected: float) -> None:
    ranking, positives, junk = CLEAN_P1_N_P2
    assert precision_at_k(ranking, positives, junk, k=k) == pytest.approx(expected, abs=1e-15)


def test_precision_at_k_divides_by_k_when_list_is_shorter() -> None:
    # one hit in a 1-item list, k = 4 -> 1/4, not 1/1
    assert precision_at_k(["p"], {"p"}, k=4) == pytest.approx(0.25)


def test_precision_at_k_without_positives_is_nan() -> None:
    assert math.isnan(precision_at_k(["a"], (), k=1))


# --------------------------------------------------------------------------------------- AP@k


@pytest.mark.parametrize("k, expected", [(1, 1.0), (2, 0.5), (3, 5 / 9), (10, 5 / 9)])
def test_average_precision_at_k(k: int, expected: float) -> None:
    # junk-free [p1, n, p2], 3 positives (p3 never retrieved):
    # k=1: 1/1 / min(1,3); k=2: 1 / 2; k>=3: (1 + 2/3) / 3 = 5/9
    ranking, _, junk = CLEAN_P1_N_P2
    ap = average_precision_at_k(ranking, {"p1", "p2", "p3"}, junk, k=k)
    assert ap == pytest.approx(expected, abs=1e-15)


def test_average_precision_at_k_is_not_interpolated() -> None:
    # one positive at rank 2: AP@2 = P(2) = 1/2, where the trapezoid AP gives 1/4
    assert average_precision_at_k(["n", "p"], {"p"}, k=2) == pytest.approx(0.5)
    assert average_precision_at_k(["n", "p"], {"p"}, k=1) == 0.0
    assert average_precision(["n", "p"], {"p"}) == pytest.approx(0.25)


def test_average_precision_at_k_perfect_top_k_is_one() -> None:
    # 5 positives, k = 2, both top results positive -> normalised by min(2, 5) = 2
    positives = {"p1", "p2", "p3", "p4", "p5"}
    assert average_precision_at_k(["p1", "p2", "n"], positives, k=2) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ recall@k


@pytest.mark.parametrize("k, expected", [(1, 0.0), (2, 0.0), (3, 1.0), (100, 1.0)])
def test_recall_at_k(k: int, expected: float) -> None:
    # junk-free [n1, n2, p]: first positive at rank 3
    assert recall_at_k(["j", "n1", "n2", "p"], {"p", "q"}, {"j"}, k=k) == expected


def test_recall_at_k_all_junk_and_no_positives() -> None:
    assert recall_at_k(["j"], {"p"}, {"j"}, k=5) == 0.0
    assert math.isnan(recall_at_k(["a"], set(), k=1))


# ------------------------------------------------------------------------------------ N-S score


def test_ns_score_counts_group_including_query() -> None:
    group = {"q", "a", "b", "c"}
    assert ns_score(["q", "a", "b", "c", "x"], group) == 4.0
    assert ns_score(["q", "a", "x", "b", "c"], group) == 3.0
    assert ns_score(["x", "y", "q", "a"], group) == 2.0
    assert ns_score(["q", "a", "b", "c"], group, k=2) == 2.0


def test_ns_score_k_larger_than_list() -> None:
    assert ns_score(["q", "x"], {"q", "a", "b", "c"}) == 1.0


# ------------------------------------------------------------------------------- k validation

K_METRICS = [precision_at_k, average_precision_at_k, recall_at_k]


@pytest.mark.parametrize("metric", K_METRICS)
@pytest.mark.parametrize("k", [0, -1])
def test_non_positive_k_is_refused(metric, k: int) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="k must be at least 1"):
        metric(["p"], {"p"}, k=k)


@pytest.mark.parametrize("k", [0, -3])
def test_ns_score_non_positive_k_is_refused(k: int) -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        ns_score(["q"], {"q"}, k=k)


@pytest.mark.parametrize("k", [1.5, True])
def test_non_integer_k_is_refused(k: object) -> None:
    with pytest.raises(TypeError):
        precision_at_k(["p"], {"p"}, k=k)  # type: ignore[arg-type]
