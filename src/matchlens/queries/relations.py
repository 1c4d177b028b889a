"""Relation queries ⟨subject, predicate, object⟩: the predicate vocabulary, the predicates of a
pair of boxes, and the parser of "cube left of sphere".

The six predicates are the geometric, mutually exclusive ones of Schroeder & Tripathi (scene-graph
retrieval, after Johnson et al.'s sg2im on COCO-Stuff): ``surrounding`` / ``inside`` when one box
strictly contains the other, otherwise the direction from the object's centre to the subject's
centre (image y grows downwards). The :data:`PREDICATES` registry is the only list of them; its
registration order is the order of the network's predicate embeddings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from matchlens.errors import ConfigError
from matchlens.registry import Registry

__all__ = ["PREDICATES", "QUERY_PARTS", "Predicate", "Relation", "parse_relations", "predicate_of", "predicate_names",
           "scene_triplets"]

Box = Sequence[float]  # x0, y0, x1, y1


@dataclass(frozen=True)
class Predicate:
    """One geometric predicate: its words (the first is its name) and the test on two boxes."""

    words: tuple[str, ...]
    test: Callable[[Box, Box], bool]
    inverse: str  # the predicate of the object relative to the subject


PREDICATES: Registry[Predicate] = Registry("predicate")


def _angle(s: Box, o: Box) -> float:
    """Direction from the object's centre to the subject's centre (radians, y downwards)."""
    dx = (s[0] + s[2]) / 2 - (o[0] + o[2]) / 2
    dy = (s[1] + s[3]) / 2 - (o[1] + o[3]) / 2
    return math.atan2(dy, dx)


def _contains(a: Box, b: Box) -> bool:
    return a[0] < b[0] and a[1] < b[1] and a[2] > b[2] and a[3] > b[3]


# Registration order = embedding index = sg2im's vocabulary order (and matchlens.queries.scenes').
for _words, _test, _inverse in (
    (("left of", "to the left of"), lambda s, o: abs(_angle(s, o)) >= 3 * math.pi / 4, "right of"),
    (("right of", "to the right of"), lambda s, o: -math.pi / 4 <= _angle(s, o) < math.pi / 4, "left of"),
    (("above", "on top of"), lambda s, o: -3 * math.pi / 4 <= _angle(s, o) < -math.pi / 4, "below"),
    (("below", "under", "beneath"), lambda s, o: math.pi / 4 <= _angle(s, o) < 3 * math.pi / 4, "above"),
    (("inside", "inside of", "within"), lambda s, o: _contains(o, s), "surrounding"),
    (("surrounding", "surrounds", "around"), lambda s, o: _contains(s, o), "inside"),
):
    PREDICATES.register(_words[0])(Predicate(_words, _test, _inverse))
_TEST_ORDER = ("surrounding", "inside", "left of", "above", "right of", "below")  # containment first, as sg2im


# Which parts of the triplet embeddings (s, p, o) a query compares: the paper's query structures.
QUERY_PARTS: Registry[tuple[int, ...]] = Registry("relation query structure")
for _name, _parts in (("s+o", (0, 2)), ("s+p+o", (0, 1, 2)), ("s", (0,)), ("o", (2,)), ("p", (1,))):
    QUERY_PARTS.register(_name)(_parts)


def predicate_names() -> list[str]:
    """The predicates in embedding order."""
    return list(PREDICATES.ordered())


def predicate_of(subject: Box, obj: Box) -> str:
    """The one predicate that holds between two boxes (x0, y0, x1, y1; y downwards)."""
    for name in _TEST_ORDER:
        if PREDICATES.get(name).test(subject, obj):
            return name
    return "left of"  # unreachable: the four directions cover every angle


def scene_triplets(boxes: Sequence[Box]) -> list[tuple[int, int, int]]:
    """(subject, predicate index, object) for every ordered pair of distinct boxes of a scene."""
    order = {name: i for i, name in enumerate(PREDICATES.ordered())}
    return [(s, order[predicate_of(boxes[s], boxes[o])], o)
            for s in range(len(boxes)) for o in range(len(boxes)) if s != o]


@dataclass(frozen=True)
class Relation:
    """A parsed query triplet (category and predicate names as the vocabularies spell them)."""

    subject: str
    predicate: str
    object: str

    def __str__(self) -> str:
        return f"{self.subject} {self.predicate} {self.object}"


_ARTICLES = re.compile(r"^(?:(?:a|an|the|is|are)\s+)+|(?:\s+(?:is|are))+$")


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").replace("-", " ").split())


def parse_relations(text: str, categories: Sequence[str]) -> list[Relation]:
    """Parse "cube left of sphere" (several: separated by ';') against the known ``categories``.

    One-line ConfigError naming the known predicates when no predicate is found, or the known
    categories when a subject or object is not one of them."""
    parts = [p for p in (text or "").split(";") if p.strip()]
    if not parts:
        raise ConfigError("empty relation; write it as 'SUBJECT PREDICATE OBJECT', e.g. "
                          f"'{_example(categories)}'")
    return [_parse_one(part, categories) for part in parts]


def _example(categories: Sequence[str]) -> str:
    names = list(categories) + ["cube", "sphere"]
    return f"{names[0]} left of {names[1] if len(categories) > 1 else names[-1]}"


def _parse_one(text: str, categories: Sequence[str]) -> Relation:
    known = {_norm(c): c for c in categories}
    words = _norm(text)
    phrases = sorted(((_norm(w), name) for name in PREDICATES.ordered() for w in PREDICATES.get(name).words),
                     key=lambda item: -len(item[0]))  # "to the left of" before "left of"
    for phrase, name in phrases:
        for match in re.finditer(rf"(?:^|\s){re.escape(phrase)}(?:\s|$)", words):
            subject = _ARTICLES.sub("", words[:match.start()].strip()).strip()
            obj = _ARTICLES.sub("", words[match.end():].strip()).strip()
            if subject in known and obj in known:
                return Relation(known[subject], name, known[obj])
            unknown = subject if subject not in known else obj
            if subject and obj:
                raise ConfigError(f"unknown object {unknown!r} in relation {text.strip()!r}; known categories: "
                                  f"{', '.join(sorted(categories))}")
            raise ConfigError(f"relation {text.strip()!r} lacks {'a subject' if not subject else 'an object'}; write "
                              f"it as 'SUBJECT PREDICATE OBJECT', e.g. '{_example(categories)}'")
    raise ConfigError(f"no known predicate in relation {text.strip()!r}; known predicates: "
                      f"{', '.join(PREDICATES.ordered())} (e.g. '{_example(categories)}')")
