"""Per-query retrieval metrics on ranked lists of ids.

A *ranking* is a sequence of hashable ids (image names), best first, each listed once. The ranking
functions score the order they are given: ties in the underlying scores are resolved by list
order, so a caller that wants a tie-break rule must sort accordingly before calling.

Junk handling follows the official Oxford/Paris protocol as implemented by revisitop's
``compute_map``: junk ids (and the query's own id, which the caller adds to ``junk``) are removed
from the ranking before scoring, so they count neither as hits nor as misses. An id listed both as
positive and as junk is treated as junk (removed) yet still counts in the number of positives;
this matches the independent checker ``shared/tools/map_from_search.py``.

Every function that needs positives returns NaN for a query without any, so that
:func:`mean_average_precision` (and any NaN-skipping mean) leaves such queries out, as revisitop
does.
"""

from __future__ import annotations

import math
import operator
from typing import Collection, Hashable, Iterable, Iterator, Sequence

__all__ = [
    "average_precision",
    "average_precision_at_k",
    "mean_average_precision",
    "ns_score",
    "precision_at_k",
    "recall_at_k",
]


def _check_k(k: int) -> int:
    """Return ``k`` as an int, refusing cut-offs that make no sense (k < 1, non-integers)."""
    if isinstance(k, bool):  # bool is an int subclass; True as a cut-off is almost surely a bug
        raise TypeError("k must be an integer, not a bool")
    k = operator.index(k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return k


def _check_unique(ranking: Sequence[Hashable]) -> None:
    """Refuse repeated ids: a repeated positive would be counted twice and AP could exceed 1."""
    if len(set(ranking)) != len(ranking):
        raise ValueError("ranking lists some id more than once")


def _clean(ranking: Sequence[Hashable], junk: Collection) -> Iterator[Hashable]:
    """Yield the ranking with junk ids dropped, keeping the order."""
    junk_set = frozenset(junk)
    return (item for item in ranking if item not in junk_set)


def _hit_ranks(ranking: Sequence[Hashable], positives: frozenset, junk: Collection) -> list[int]:
    """0-based positions of the positives in the junk-free ranking, ascending."""
    _check_unique(ranking)
    return [pos for pos, item in enumerate(_clean(ranking, junk)) if item in positives]


def _hits_at_k(ranking: Sequence[Hashable], positives: Collection, junk: Collection, k: int) -> list[int] | None:
    """Checked ``k`` and the 0-based hit positions of the junk-free ranking; None without positives."""
    _check_k(k)
    pos = frozenset(positives)
    return _hit_ranks(ranking, pos, junk) if pos else None


def average_precision(
    ranking: Sequence[Hashable], positives: Collection, junk: Collection = ()
) -> float:
    """Average precision of one ranking, exactly as revisitop's ``compute_ap`` computes it.

    Junk ids are removed from ``ranking`` first. For the j-th positive (0-based) found at 0-based
    position r of the junk-free ranking, the precision-recall curve is integrated with a
    trapezoid between precision ``j / r`` (1 when r = 0) and ``(j + 1) / (r + 1)``, each step
    worth ``1 / len(positives)`` of recall. Positives absent from the ranking (for instance past
    a search's cut-off) therefore contribute 0 rather than being ignored.

    Args:
        ranking: ids, best first, each at most once.
        positives: ids that count as correct.
        junk: ids to ignore entirely (pass the query's own id here when it may be retrieved).

    Returns:
        AP in [0, 1], or NaN when ``positives`` is empty (revisitop skips such queries).

    Raises:
        ValueError: if ``ranking`` repeats an id.
    """
    pos = frozenset(positives)
    if not pos:
        return math.nan
    ap = 0.0
    for j, r in enumerate(_hit_ranks(ranking, pos, junk)):
        precision_before = 1.0 if r == 0 else j / r
        precision_after = (j + 1) / (r + 1)
        ap += (precision_before + precision_after) / (2 * len(pos))
    return ap


def mean_average_precision(aps: Iterable[float]) -> float:
    """Mean of per-query APs, skipping NaN (queries without positives, as revisitop does).

    Returns NaN when there is no non-NaN value at all.
    """
    kept = [float(ap) for ap in aps if not math.isnan(ap)]
    if not kept:
        return math.nan
    return math.fsum(kept) / len(kept)


def precision_at_k(
    ranking: Sequence[Hashable], positives: Collection, junk: Collection = (), *, k: int
) -> float:
    """Fraction of the top ``k`` of the junk-free ranking that are positives.

    The count is always divided by ``k``, even when fewer than ``k`` ids remain once junk is
    removed: a short list is not rewarded for stopping early. (revisitop's ``mP@k`` instead
    divides by ``min(k, position of the last positive)``; this is the textbook P@k.)

    Returns NaN when ``positives`` is empty, so NaN-skipping means treat such queries as mAP does.

    Raises:
        ValueError: if ``k < 1`` or ``ranking`` repeats an id.
    """
    ranks = _hits_at_k(ranking, positives, junk, k)
    if ranks is None:
        return math.nan
    return sum(1 for r in ranks if r < k) / k


def average_precision_at_k(
    ranking: Sequence[Hashable], positives: Collection, junk: Collection = (), *, k: int
) -> float:
    """AP@k: non-interpolated AP of the top ``k`` of the junk-free ranking ("mAP@k" per query).

    Definition (the one of the Google Landmarks retrieval benchmark and most papers reporting
    mAP@k)::

        AP@k = 1 / min(k, |positives|) * sum_{i=1..k} P(i) * rel(i)

    where ``P(i)`` is the precision of the first i junk-free results and ``rel(i)`` is 1 when the
    i-th is a positive. A list that places ``min(k, |positives|)`` positives first scores 1.
    Unlike :func:`average_precision` there is no trapezoid, so for ``k`` past the end of the
    list the two generally differ.

    Returns NaN when ``positives`` is empty.

    Raises:
        ValueError: if ``k < 1`` or ``ranking`` repeats an id.
    """
    ranks = _hits_at_k(ranking, positives, junk, k)
    if ranks is None:
        return math.nan
    # precision at the (r+1)-th result, which is the (j+1)-th hit
    total = sum((j + 1) / (r + 1) for j, r in enumerate(ranks) if r < k)
    return total / min(k, len(frozenset(positives)))


def recall_at_k(
    ranking: Sequence[Hashable], positives: Collection, junk: Collection = (), *, k: int
) -> float:
    """Recall@k of landmark and place retrieval: 1.0 if any positive is in the junk-free top
    ``k``, else 0.0 (not the fraction of positives retrieved).

    Returns NaN when ``positives`` is empty.

    Raises:
        ValueError: if ``k < 1`` or ``ranking`` repeats an id.
    """
    ranks = _hits_at_k(ranking, positives, junk, k)
    if ranks is None:
        return math.nan
    return 1.0 if ranks and ranks[0] < k else 0.0


def ns_score(ranking: Sequence[Hashable], group: Collection, k: int = 4) -> float:
    """UKBench N-S score of one query: how many members of ``group`` are in the top ``k``.

    ``group`` is the whole object group INCLUDING the query image, and ``ranking`` is the raw
    ranking (nothing removed), in which the query normally comes first; a perfect result scores
    4 with UKBench's groups of four. N-S equals ``k * P@k`` counted with the query.

    Returns NaN when ``group`` is empty.

    Raises:
        ValueError: if ``k < 1`` or ``ranking`` repeats an id.
    """
    k = _check_k(k)
    members = frozenset(group)
    if not members:
        return math.nan
    _check_unique(ranking)
    return float(sum(1 for item in ranking[:k] if item in members))


def precision_at_k_revisitop(
    ranking: Sequence[Hashable], positives: Collection, junk: Collection = (), *, k: int
) -> float:
    """mP@k as revisitop's ``compute_map`` defines it (the figure ROxford/RParis papers quote).

    With ``pos`` the 1-based positions of the positives in the junk-free ranking and
    ``kq = min(max(pos), k)``, the value is ``|{p in pos : p <= kq}| / kq``: the cut-off shrinks to
    the last positive found, so a query with 2 positives at ranks 1-2 scores 1.0 at k=10.
    Positives missing from the ranking do not count; NaN when there are no positives, 0.0 when
    none of them was ranked.
    """
    ranks = _hits_at_k(ranking, positives, junk, k)
    if ranks is None:
        return math.nan
    hits = [r + 1 for r in ranks]
    if not hits:
        return 0.0
    kq = min(max(hits), k)
    return sum(1 for p in hits if p <= kq) / kq
