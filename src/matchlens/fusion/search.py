"""Search one index by one descriptor kind or by a late fusion of several.

A fusion is written ``KIND[@WEIGHT]+KIND[@WEIGHT]...[:OPERATOR[:PARAM=VALUE,...]]``, e.g.
``cnn+asmk`` (generalised harmonic mean, the default), ``cnn+asmk:mean_power:gamma=0.7``,
``cnn@0.7+bow@0.3:mean``, ``cnn+bow+asmk:ghm:norm=rank,depth=200``. ``cnn`` is the index's own
global descriptor; the other names are kinds added with ``matchlens encode``. Besides the
operator's own parameters: ``norm`` (score normalisation, default ``minmax``) and ``depth``
(shortlist taken from each kind, default 100). A single kind (``asmk``) ranks by that kind alone.

How a fused ranking is made, for one query:
1. every kind ranks the collection and keeps its top ``depth`` (its shortlist);
2. the candidates are the union of the shortlists; every kind scores every candidate exactly;
3. each kind's candidate scores are normalised to [0, 1] (``norm``), then fused (``OPERATOR``);
4. candidates are ranked by fused score; the images outside the union follow, in the order of
   the first kind, with scores below every candidate's.
The ranking is the same whatever number of results is asked for, so ``search -k 10`` shows the
head of the ranking that ``eval`` scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from matchlens.errors import ConfigError
from matchlens.fusion.normalise import NORMALISERS, normalise
from matchlens.fusion.operators import FUSIONS, Fusion, normalised_weights
from matchlens.index.index import Index, IndexContext, SearchResult, content_sha
from matchlens.rerank import QueryInput, Shortlist, chain_depth, parse_chain, run_chain

__all__ = ["FusionSpec", "MultiKindSearcher", "parse_fusion", "CNN"]

CNN = "cnn"
DEFAULT_OPERATOR = "ghm"
DEFAULT_NORM = "minmax"
DEFAULT_DEPTH = 100


@dataclass
class FusionSpec:
    """A parsed fusion expression."""

    kinds: list[str]
    weights: list[float] | None = None
    operator: Fusion | None = None   # None: a single kind
    norm: str = DEFAULT_NORM
    depth: int = DEFAULT_DEPTH
    text: str = field(default="", compare=False)

    def describe(self) -> str:
        if self.operator is None:
            return self.kinds[0]
        weights = self.weights or [1.0 / len(self.kinds)] * len(self.kinds)
        parts = "+".join(f"{k}@{w:g}" for k, w in zip(self.kinds, weights))
        return f"{parts}:{self.operator!r} (norm={self.norm}, depth={self.depth})"


def parse_fusion(text: str) -> FusionSpec:
    """Parse ``cnn@0.7+asmk@0.3:ghm:gamma=0.5,norm=minmax,depth=100`` (see the module doc)."""
    from matchlens.config import _parse_value

    if not isinstance(text, str) or not text.strip():
        raise ConfigError("empty fusion expression; write e.g. cnn+asmk:ghm")
    kinds_part, _, rest = text.strip().partition(":")
    op_name, _, param_text = rest.partition(":")
    kinds, weights = [], []
    for item in kinds_part.split("+"):
        name, at, weight = item.strip().partition("@")
        if not name:
            raise ConfigError(f"bad fusion {text!r}: empty kind name; write e.g. cnn+asmk:ghm")
        kinds.append(name.lower())
        weights.append(_weight(weight, text) if at else None)
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"bad fusion {text!r}: a kind is listed twice")
    if any(w is not None for w in weights) and any(w is None for w in weights):
        raise ConfigError(f"bad fusion {text!r}: give a weight to every kind or to none")
    params = {}
    for item in filter(None, (p.strip() for p in param_text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"bad fusion parameter {item!r} in {text!r}; write name=value")
        params[key.strip()] = _parse_value(value.strip())
    norm = str(params.pop("norm", DEFAULT_NORM))
    NORMALISERS.get(norm)
    depth = params.pop("depth", DEFAULT_DEPTH)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"bad fusion {text!r}: depth must be an integer >= 1, got {depth!r}")
    if len(kinds) == 1 and not op_name and not params:
        return FusionSpec(kinds, None, None, norm, depth, text)
    operator = FUSIONS.get(op_name or DEFAULT_OPERATOR)(**params)
    given = [w for w in weights if w is not None]
    weights_list = list(normalised_weights(given, len(kinds))) if given else None
    return FusionSpec(kinds, weights_list, operator, norm, depth, text)


def _weight(text: str, expression: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"bad fusion weight {text!r} in {expression!r}; write e.g. cnn@0.7+asmk@0.3") from None
    if not np.isfinite(value) or value < 0:
        raise ConfigError(f"bad fusion weight {text!r} in {expression!r}: weights are numbers >= 0")
    return value


# ------------------------------------------------------------------------------------------------
# One ranker per kind: prepare the query once, then a shortlist and exact scores of any rows.


class _CnnRanker:
    """The index's own global descriptor."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def prepare(self, query, box) -> np.ndarray:
        return self.index.encode_query(query, box)[1]

    def shortlist(self, vector: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search_vectors(vector[None, :], depth)
        keep = rows[0] >= 0
        return rows[0][keep].astype(np.int64), scores[0][keep]

    def score_rows(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.vectors()[rows], np.float32) @ vector if len(rows) else np.zeros(0, np.float32)


class _ClassicRanker:
    """A stored classic kind: scores of every image come out of its inverted file at once."""

    def __init__(self, kind) -> None:
        self.kind = kind

    def prepare(self, query, box) -> np.ndarray:
        return self.kind.scores(self.kind.query_code(query, box))

    def shortlist(self, scores: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        depth = min(depth, len(scores))
        top = np.argpartition(-scores, depth - 1)[:depth] if depth < len(scores) else np.arange(len(scores))
        order = top[np.lexsort((top, -scores[top]))]  # best first, ties by row
        return order.astype(np.int64), scores[order]

    def score_rows(self, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return scores[rows]


class MultiKindSearcher:
    """Rank an index by one kind or a fusion of kinds; offers what :func:`evaluate_index` and the
    CLI use of an :class:`Index` (``rank``, ``search``, ``size``, ``entry_for_row``, ``spec``)."""

    def __init__(self, index: Index, fusion: str | FusionSpec, refresh: bool = True, progress=None) -> None:
        from matchlens.classic import open_kind

        self.index = index
        self.fusion = parse_fusion(fusion) if isinstance(fusion, str) else fusion
        self.rankers = [_CnnRanker(index) if name == CNN else _ClassicRanker(open_kind(index, name, refresh, progress))
                        for name in self.fusion.kinds]

    # --- what evaluate_index reads of an index --------------------------------------------------
    @property
    def spec(self) -> "_LabelledSpec":
        """The index's pipeline spec, whose ``describe()`` also names the kinds and the fusion."""
        return _LabelledSpec(self.index.spec, self.describe())

    @property
    def size(self) -> int:
        return self.index.size

    @property
    def root(self) -> Path:
        return self.index.root

    def entry_for_row(self, row: int):
        return self.index.entry_for_row(row)

    def describe(self) -> str:
        """The pipeline label: which kinds and how they are fused."""
        cnn = self.index.spec.describe()
        if self.fusion.kinds == [CNN]:
            return cnn
        return f"{self.fusion.describe()}" + (f"; cnn = {cnn}" if CNN in self.fusion.kinds else "")

    # --- ranking -------------------------------------------------------------------------------
    def rank(self, query, box: Sequence[float] | None = None, depth: int = 20, rerank: Any = None) -> Shortlist:
        """The ranking (at least ``depth`` entries, all images at most), then the re-ranking chain.

        Its head does not depend on ``depth``: ``search -k 5`` shows the first 5 of what ``eval``
        ranks."""
        chain = parse_chain(rerank) if isinstance(rerank, str) else list(rerank or [])
        depth = max(1, depth, chain_depth(chain))
        if self.fusion.operator is None:
            shortlist = self._single(query, box, depth)
        else:
            shortlist = self._fused(query, box, depth)
        if chain:
            image, vector = self.index.encode_query(query, box, keep_image=any(r.needs_image for r in chain))
            sha = content_sha(query) if image is not None else None
            shortlist = run_chain(chain, QueryInput(vector=vector, image=image, sha256=sha), shortlist,
                                  IndexContext(self.index))
        return shortlist

    def search(self, query, box: Sequence[float] | None = None, k: int = 20, rerank: Any = None) -> list[SearchResult]:
        """The top ``k`` results, as :meth:`Index.search` returns them."""
        shortlist = self.rank(query, box, k, rerank).head(k)
        results = []
        for rank, (row, score) in enumerate(zip(shortlist.rows.tolist(), shortlist.scores.tolist()), 1):
            entry = self.index.entry_for_row(row)
            results.append(SearchResult(rank=rank, score=float(score), id=entry.id, path=entry.path))
        return results

    def _single(self, query, box, depth: int) -> Shortlist:
        ranker = self.rankers[0]
        rows, scores = ranker.shortlist(ranker.prepare(query, box), min(depth, self.size))
        return Shortlist(rows, scores)

    def _fused(self, query, box, depth: int) -> Shortlist:
        states = [r.prepare(query, box) for r in self.rankers]
        lists = [r.shortlist(s, min(self.fusion.depth, self.size)) for r, s in zip(self.rankers, states)]
        candidates = np.unique(np.concatenate([rows for rows, _ in lists]))
        matrix = np.stack([normalise(r.score_rows(s, candidates), self.fusion.norm)
                           for r, s in zip(self.rankers, states)])
        fused = self.fusion.operator.fuse(matrix, self.fusion.weights)
        order = np.lexsort((candidates, -fused))
        rows, scores = candidates[order], fused[order]
        if depth <= len(rows):
            return Shortlist(rows, scores)
        # The rest follows in the first kind's order, below every candidate, strictly decreasing.
        primary, _ = self.rankers[0].shortlist(states[0], min(self.size, depth + len(rows)))
        tail = primary[~np.isin(primary, candidates)][: depth - len(rows)]
        floor = (scores.min() if len(scores) else 0.0) - 1.0
        tail_scores = floor + 0.5 / (1.0 + np.arange(len(tail)))
        return Shortlist(np.concatenate([rows, tail]), np.concatenate([scores, tail_scores]))


class _LabelledSpec:
    """A pipeline spec whose ``describe()`` returns a given label (everything else is the spec's)."""

    def __init__(self, spec, label: str) -> None:
        self._spec, self._label = spec, label

    def describe(self) -> str:
        return self._label

    def __getattr__(self, name: str):
        return getattr(self._spec, name)


