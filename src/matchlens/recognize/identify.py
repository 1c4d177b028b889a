"""``--identify SPEC`` of ``matchlens search`` and ``matchlens serve``: a recognizer file
(``rec.pt``) or the retrieval-only kNN vote (``knn:LABELS`` with a labels CSV or class-folder tree;
``knn=K:LABELS`` votes with the first K labelled results, default 10).

Both give a :class:`Prediction` for one query, printed above its ranked results.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from matchlens.errors import ConfigError
from matchlens.recognize.knn import KnnVote
from matchlens.recognize.model import Prediction, Recognizer, load_recognizer

__all__ = ["Identifier", "open_identifier"]

_KNN = re.compile(r"^knn(?:=(\d+))?:(.+)$")


class Identifier:
    """One of a recognizer or a kNN vote behind one call."""

    def __init__(self, spec: str, recognizer: Recognizer | None = None, knn: KnnVote | None = None) -> None:
        self.spec, self.recognizer, self.knn = spec, recognizer, knn

    @property
    def kind(self) -> str:
        return "knn" if self.knn is not None else "recognizer"

    def identify(self, image: Any, box: Sequence[float] | None, results: Iterable, query: str | None = None) -> Prediction:
        """The prediction for a query image (path, bytes or PIL) and its ranked results."""
        if self.knn is not None:
            return self.knn.predict(results, query)
        assert self.recognizer is not None
        return self.recognizer.predict([image], [box] if box is not None else None)[0]

    def describe(self) -> dict[str, Any]:
        """What answers (page and /index)."""
        if self.recognizer is not None:
            rec = self.recognizer
            return {"kind": "recognizer", "method": rec.method, "classes": len(rec.classes), "backbone": rec.backbone}
        assert self.knn is not None
        return {"kind": "knn", "k": self.knn.k, "labelled": len(self.knn.by_path)}


def open_identifier(spec: str, backbone: str) -> Identifier:
    """The identifier that ``spec`` names, for an index using ``backbone`` (a recognizer trained
    for another backbone is refused)."""
    match = _KNN.match(spec)
    if match:
        k = int(match.group(1) or 10)
        if k < 1:
            raise ConfigError(f"--identify {spec!r}: k must be at least 1")
        return Identifier(spec, knn=KnnVote.from_source(match.group(2), k))
    if spec.startswith("knn"):
        raise ConfigError(f"--identify {spec!r}: write knn:LABELS or knn=K:LABELS (a labels CSV or class folders)")
    if not Path(spec).expanduser().is_file():
        raise ConfigError(f"--identify {spec!r}: no such recognizer file (or write knn:LABELS for the kNN vote)")
    return Identifier(spec, recognizer=load_recognizer(spec, backbone=backbone))
