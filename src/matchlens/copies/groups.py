"""Duplicate groups: connected components of the accepted pairs (union-find, near-linear)."""

from __future__ import annotations

from typing import Iterable

__all__ = ["UnionFind", "components"]


class UnionFind:
    """Disjoint sets over arbitrary integer ids, with path halving and union by size."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}

    def find(self, x: int) -> int:
        """The representative of ``x``'s set (``x`` is added if new)."""
        self.parent.setdefault(x, x)
        self.size.setdefault(x, 1)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        """Merge the sets of ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def components(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components of the graph ``pairs`` (each sorted), largest first, then by first member."""
    forest = UnionFind()
    for a, b in pairs:
        forest.union(a, b)
    members: dict[int, list[int]] = {}
    for x in forest.parent:
        members.setdefault(forest.find(x), []).append(x)
    return sorted((sorted(m) for m in members.values()), key=lambda m: (-len(m), m[0]))
