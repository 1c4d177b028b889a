"""``matchlens serve --identify rec.pt|knn:LABELS``: the predicted class of each ``POST /search``
query (``identified`` in the response, shown above the results on the page)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

from matchlens.service.live import LiveIndex

if TYPE_CHECKING:
    from matchlens.recognize.identify import Identifier

__all__ = ["identified", "load_identifier"]


def load_identifier(spec: str | None, live: LiveIndex) -> "Identifier | None":
    """The identifier, opened now so a wrong file (or one for another backbone) fails at start."""
    if not spec:
        return None
    from matchlens.recognize.identify import open_identifier  # deferred: torch, only when serving with --identify

    return open_identifier(spec, live.snapshot().index.spec.backbone)


def identified(identifier: "Identifier | None", data: bytes, box: Sequence[float] | None,
               results: Iterable) -> dict[str, Any] | None:
    """The prediction for an uploaded query (its bytes) and its ranked results, as JSON."""
    if identifier is None:
        return None
    return identifier.identify(data, box, results).to_dict()
