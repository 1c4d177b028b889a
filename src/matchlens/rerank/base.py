"""The re-ranking interface: a reranker turns a query and its shortlist into a new shortlist.

Rerankers compose in a chain written ``"sv:k=100,aqe:k=2,diffusion"``: each step is
``name[:param=value]``; further ``param=value`` items (no colon) belong to the step before.
No reranker may build an N×N matrix: memory stays linear in the collection size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence

import numpy as np
from PIL import Image

from matchlens.components import Component
from matchlens.errors import ConfigError
from matchlens.registry import Registry
from matchlens.config import parse_value


@dataclass
class Shortlist:
    """Ranked database rows (best first) and their scores, both 1-D and of equal length."""

    rows: np.ndarray    # int64 vector rows of the index
    scores: np.ndarray  # float32, non-increasing

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if self.rows.shape != self.scores.shape or self.rows.ndim != 1:
            raise ValueError("shortlist rows and scores must be 1-D arrays of equal length")

    def __len__(self) -> int:
        return len(self.rows)

    def head(self, k: int) -> "Shortlist":
        """The first ``k`` entries."""
        return Shortlist(self.rows[:k], self.scores[:k])

    def valid(self) -> "Shortlist":
        """Without rows < 0 (an approximate backend pads a short result with -1, which as an index
        would mean the last image)."""
        found = self.rows >= 0
        return self if found.all() else Shortlist(self.rows[found], self.scores[found])


@dataclass
class QueryInput:
    """What a reranker may know of the query."""

    vector: np.ndarray              # (d,) searchable (whitened, L2) vector
    image: Image.Image | None = None  # the decoded query (cropped to its box), for local features
    sha256: str | None = None       # content hash of the query file, for caches (None: in-memory query)


class RerankContext(Protocol):
    """Access to the collection that rerankers need (implemented by the index)."""

    @property
    def vectors(self) -> np.ndarray:
        """(N, d) searchable vectors, row-aligned with shortlist rows (memory-mapped)."""

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact batched search: (scores, rows), each (n, k)."""

    def image_path(self, row: int) -> str:
        """Absolute path of the image at ``row``."""

    def image_sha256(self, row: int) -> str:
        """Content hash of the image at ``row`` (cache key for its local features)."""

    def cache_dir(self, kind: str) -> Path | None:
        """A writable folder for a reranker's caches (local features, graphs), or None."""

    @property
    def generation(self) -> str:
        """Name of the index generation (caches derived from the vectors are keyed by it)."""


class Reranker(Component, ABC):
    """Base class: validated parameters (:class:`~matchlens.components.Component`) and :meth:`rerank`.

    A new reranker is one module in ``matchlens/rerank/``: the package imports all of its modules,
    so ``@RERANKERS.register("name")`` there is all it takes (see docs/extending.md).
    """

    kind: ClassVar[str] = "reranker"
    needs_image: ClassVar[bool] = False  # True when rerank() reads QueryInput.image (local features)

    @property
    def depth(self) -> int:
        """How many shortlist entries this reranker wants to see (the search fetches at least this)."""
        return int(self.config.get("k", 0))

    @abstractmethod
    def rerank(self, query: QueryInput, shortlist: Shortlist, ctx: RerankContext) -> Shortlist:
        """Return the new shortlist (may be longer or shorter than the input)."""


RERANKERS: Registry[type[Reranker]] = Registry("reranker")


def parse_chain(text: str | None) -> list[Reranker]:
    """Parse ``"sv:k=100,aqe:k=2,diffusion"`` into reranker objects (registry names)."""
    if not text or not text.strip():
        return []
    steps: list[tuple[str, dict[str, Any]]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, colon, first = item.partition(":")
        if colon or "=" not in item:
            steps.append((name.strip(), {}))
            item = first
            if not item:
                continue
        if not steps:
            raise ConfigError(f"rerank chain {text!r} starts with a parameter; write name:param=value")
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"bad rerank parameter {item!r} in {text!r}; write name:param=value")
        steps[-1][1][key.strip()] = parse_value(value.strip())
    if not steps:
        raise ConfigError(f"rerank chain {text!r} names no reranker; write e.g. sv:k=100,aqe:k=2, or leave it out")
    return [RERANKERS.get(name)(**params) for name, params in steps]


def run_chain(chain: Sequence[Reranker], query: QueryInput, shortlist: Shortlist, ctx: RerankContext) -> Shortlist:
    """Apply the rerankers in order (rows < 0, an approximate backend's padding, are dropped first:
    every reranker may then use rows as indices)."""
    shortlist = shortlist.valid()
    for reranker in chain:
        shortlist = reranker.rerank(query, shortlist, ctx)
    return shortlist


def chain_depth(chain: Sequence[Reranker]) -> int:
    """The shortlist length the first search must fetch for this chain."""
    return max((r.depth for r in chain), default=0)


def describe_chain(chain: Sequence[Reranker]) -> str:
    """The chain written back in its CLI syntax."""
    return ",".join(repr(r) for r in chain)
