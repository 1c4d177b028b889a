"""Fusion expressions: which descriptor kinds rank a search and how their scores are fused.

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

import numpy as np

from matchlens.config import parse_value
from matchlens.errors import ConfigError
from matchlens.fusion.normalise import NORMALISERS
from matchlens.fusion.operators import FUSIONS, Fusion, normalised_weights

__all__ = ["CNN", "DEFAULT_DEPTH", "FusionSpec", "parse_fusion"]

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
        params[key.strip()] = parse_value(value.strip())
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
