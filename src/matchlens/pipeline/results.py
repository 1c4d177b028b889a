"""The result types of a search: one ranked hit, and one answered query with its timings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SearchResponse", "SearchResult"]


@dataclass(frozen=True)
class SearchResult:
    """One ranked result of a search."""

    rank: int
    score: float
    id: int
    path: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the CLI's ``--json`` objects)."""
        return {"rank": self.rank, "score": self.score, "id": self.id, "path": self.path}


@dataclass
class SearchResponse:
    """One answered query: its results, what was run and how long each step took (ms)."""

    results: list[SearchResult]
    query: str | None = None                 # the query's name (a path for file queries)
    box: tuple[float, ...] | None = None
    query_size: tuple[int, int] | None = None  # (width, height) of the decoded, uncropped query, when decoded here
    rerank: str | None = None                # the chain as parsed (defaults filled in)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (one line of ``matchlens search --jsonl``)."""
        out: dict[str, Any] = {"query": self.query}
        if self.box is not None:
            out["box"] = list(self.box)
        out["results"] = [r.to_dict() for r in self.results]
        if self.rerank:
            out["rerank"] = self.rerank
        out["timings_ms"] = self.timings_ms
        return out
