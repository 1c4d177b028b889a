"""Official ground-truth files (``gnd``): ``gnd_*.mat`` (MATLAB 5 or 7.3/HDF5; indices 1-based),
``*.pkl`` as cirtorch/revisitop write them (0-based) or ``*_gnd.json`` (image names).

Also the machinery the revisited, Holidays and INSTRE readers build on: :func:`read_gnd` parses a
file of any kind, :func:`dataset_from_gnd` turns it into a :class:`~matchlens.io.datasets.Dataset`
(extensions, revisited protocol, group names, image checks).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np

from matchlens.errors import SourceError
from matchlens.io.datasets import Box, Dataset
from matchlens.io.formats.common import (DATASET_FORMATS, PathLike, as_box, check_images_exist, check_unique,
                                         make_query, read_text, safe_name, with_extension)
from matchlens.io.formats.loaders import load_mat, load_pickle

__all__ = ["PROTOCOLS", "check_protocol", "dataset_from_gnd", "load_gnd_file", "name_from_file", "read_gnd"]

#: Revisited protocols, as in revisitop's ``example_evaluate.py``.
PROTOCOLS = ("easy", "medium", "hard")

#: The 11 landmarks of Oxford5k / Paris6k in the order of the official query lists (5 queries
#: each); the gnd files carry no names, so groups are named from this order.
_LANDMARKS = {
    "oxford5k": ("all_souls", "ashmolean", "balliol", "bodleian", "christ_church", "cornmarket",
                 "hertford", "keble", "magdalen", "pitt_rivers", "radcliffe_camera"),
    "paris6k": ("defense", "eiffel", "invalides", "louvre", "moulinrouge", "museedorsay",
                "notredame", "pantheon", "pompidou", "sacrecoeur", "triomphe"),
}

_LIST_KINDS = ("ok", "easy", "hard", "junk")


def check_protocol(protocol: Any) -> str:
    """The protocol name in lower case, or a SourceError listing the valid ones."""
    if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
        raise SourceError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    return protocol.lower()


@dataclass(frozen=True)
class _GndQuery:
    """One query of a gnd file, names as the file gives them (extension added later)."""

    image: str
    lists: dict[str, tuple[str, ...]]  # any of ok / easy / hard / junk
    box: Box | None


@dataclass(frozen=True)
class _Gnd:
    """A parsed gnd file: database names and queries."""

    imlist: tuple[str, ...]
    queries: tuple[_GndQuery, ...]


@DATASET_FORMATS.register("gnd")
def load_gnd_file(
    path: PathLike,
    image_dir: PathLike | None = None,
    *,
    check_images: bool = True,
    protocol: str | None = None,
    name: str | None = None,
) -> Dataset:
    """Read one official ground-truth file: ``.mat`` (v5 or v7.3), ``.pkl`` or ``.json``.

    Supported content: ``imlist`` (database names) with either ``qimlist`` (separate query
    images: INSTRE, revisited) or ``qidx`` (queries inside ``imlist``: Oxford5k, Paris6k,
    Holidays), and ``gnd``, one record per query with ``ok`` (positives) or ``easy``/``hard``
    (revisited), optional ``junk`` and ``bbx``. Index lists are 1-based in ``.mat`` files and
    0-based in ``.pkl`` files. ``.json``: ``imlist`` and ``queries`` with ``query``,
    ``positives``, ``junk`` and ``bbx`` given as names.

    Args:
        path: the ground-truth file.
        image_dir: the folder holding ``<name>.jpg`` (default: ``jpg/`` beside the file if
            present, else the file's folder).
        check_images: verify every database and query image exists (turn off to read the ground
            truth without the photos).
        protocol: ``easy``/``medium``/``hard`` for revisited files (default medium); must stay
            None for files with ``ok`` lists.
        name: the dataset's name (default: the file name without ``gnd_`` / ``_gnd``). The
            names ``oxford5k``, ``paris6k``, ``holidays`` and ``instre`` also name the groups
            (landmarks, Holidays' 4-digit prefix, INSTRE's class folder).

    Raises:
        SourceError: unreadable or malformed file, an index out of range, a protocol that does
            not fit the file, or (with ``check_images``) a missing image.
    """
    gnd_path = Path(path).expanduser()
    gnd = read_gnd(gnd_path)
    if image_dir is None:
        beside = gnd_path.parent / "jpg"
        folder = beside if beside.is_dir() else gnd_path.parent
    else:
        folder = Path(image_dir).expanduser()
        if check_images and not folder.is_dir():
            raise SourceError(f"image folder not found: {folder}")
    dataset_name = name or name_from_file(gnd_path)
    return dataset_from_gnd(
        gnd, gnd_path, dataset_name, folder, protocol=protocol, check_images=check_images,
        kind=dataset_name.lower(),
    )


def name_from_file(path: Path) -> str:
    """``gnd_oxford5k.mat`` / ``oxford5k_gnd.json`` → ``oxford5k``."""
    stem = path.stem
    return stem.removeprefix("gnd_").removesuffix("_gnd") or stem


def read_gnd(path: Path) -> _Gnd:
    """Parse a gnd file of any supported kind, chosen by its suffix."""
    if not path.is_file():
        raise SourceError(f"ground-truth file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _gnd_from_json(path)
    if suffix == ".pkl":
        return _gnd_from_raw(load_pickle(path), path, base=0)
    if suffix == ".mat":
        return _gnd_from_raw(load_mat(path), path, base=1)
    raise SourceError(f"{path}: unknown ground-truth file type (expected .mat, .pkl or .json)")


def dataset_from_gnd(
    gnd: _Gnd,
    source: Path,
    name: str,
    image_dir: Path,
    *,
    protocol: str | None,
    check_images: bool,
    kind: str | None,
    extra_images: Sequence[str] = (),
) -> Dataset:
    """Turn a parsed gnd into a Dataset: extensions, protocol, groups, image checks."""
    images = [with_extension(n) for n in gnd.imlist]
    groups = _gnd_groups(kind, gnd.queries)
    queries = []
    for index, (q, group) in enumerate(zip(gnd.queries, groups)):
        positives, junk = _apply_protocol(q.lists, protocol, f"{source}: query #{index}")
        queries.append(make_query(
            with_extension(q.image), map(with_extension, positives),
            map(with_extension, junk), group, q.box,
        ))
    if check_images:
        check_images_exist(images + [q.image for q in queries], image_dir, source)
    images.extend(extra_images)
    check_unique(images, source)
    return Dataset(name, source.parent, image_dir, tuple(images), tuple(queries))


def _apply_protocol(
    lists: dict[str, tuple[str, ...]], protocol: str | None, where: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(positives, junk) of one query; revisited lists combine as revisitop's evaluation does."""
    junk = lists.get("junk", ())
    if "ok" in lists:
        if protocol is not None:
            raise SourceError(f"{where}: a protocol applies only to revisited (easy/hard) lists")
        return lists["ok"], junk
    if "easy" not in lists or "hard" not in lists:
        raise SourceError(f"{where}: needs an 'ok' list or both 'easy' and 'hard' lists")
    easy, hard = lists["easy"], lists["hard"]
    chosen = check_protocol("medium" if protocol is None else protocol)
    if chosen == "easy":  # hard positives are not held against an easy query: junk
        return easy, junk + hard
    if chosen == "hard":  # easy positives are too easy to count: junk
        return hard, junk + easy
    return easy + hard, junk


def _gnd_groups(kind: str | None, queries: Sequence[_GndQuery]) -> list[str | None]:
    """Group names where the dataset is known; gnd files carry none themselves."""
    if kind in _LANDMARKS:
        return _landmark_groups(queries, _LANDMARKS[kind])
    if kind is not None and "holidays" in kind:
        return ["holidays_" + PurePosixPath(q.image).stem[:4] for q in queries]
    if kind is not None and "instre" in kind:
        return [posixpath.dirname(q.image) or None for q in queries]
    return [None] * len(queries)


def _landmark_groups(queries: Sequence[_GndQuery], landmarks: Sequence[str]) -> list[str | None]:
    """Name runs of queries sharing identical lists after the landmarks, if the counts fit.

    The queries of one Oxford/Paris landmark share their good/ok/junk lists, and the files list
    the landmarks in alphabetical order; any other structure gets no group names.
    """
    keys = [tuple(sorted((k, tuple(sorted(v))) for k, v in q.lists.items())) for q in queries]
    runs: list[int] = []  # run index of each query
    for i, key in enumerate(keys):
        runs.append(runs[-1] + (key != keys[i - 1]) if runs else 0)
    if not runs or runs[-1] + 1 != len(landmarks):
        return [None] * len(queries)
    return [landmarks[r] for r in runs]


# ---------------------------------------------------------------------------------- parsers


def _gnd_from_json(path: Path) -> _Gnd:
    """``{"imlist": [...], "queries": [{"query", "positives", "junk", "bbx"}]}``."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("queries"), list):
        raise SourceError(f"{path}: expected a JSON object with 'imlist' and 'queries'")
    imlist = _name_sequence(data.get("imlist"), "'imlist'", path)
    known = frozenset(imlist)
    queries = tuple(_json_query(raw, i, known, path) for i, raw in enumerate(data["queries"]))
    return _Gnd(imlist, queries)


def _json_query(raw: Any, index: int, known: frozenset[str], path: Path) -> _GndQuery:
    """One entry of a gnd JSON's ``queries``."""
    where = f"{path}: query #{index}"
    if not isinstance(raw, dict):
        raise SourceError(f"{where} must be a JSON object")
    image = safe_name(raw.get("query"), path)
    lists = {}
    for key, kind in (("positives", "ok"), ("junk", "junk")):
        names = _name_sequence(raw.get(key, []), f"query #{index} '{key}'", path)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SourceError(f"{where}: '{key}' names {unknown[0]!r}, which is not in 'imlist'")
        lists[kind] = names
    return _GndQuery(image, lists, as_box(raw.get("bbx"), where))


def _name_sequence(value: Any, what: str, path: Path) -> tuple[str, ...]:
    """A list of safe image names."""
    if not isinstance(value, (list, tuple)):
        raise SourceError(f"{path}: {what} must be a list of image names")
    return tuple(safe_name(v, path) for v in value)


def _gnd_from_raw(raw: dict[str, Any], path: Path, base: int) -> _Gnd:
    """Build a gnd from index-based fields (``base`` = 1 for MATLAB, 0 for pickles)."""
    imlist = _name_sequence(_as_list(raw.get("imlist")), "'imlist'", path)
    records = raw.get("gnd")
    if not isinstance(records, list):
        raise SourceError(f"{path}: missing 'gnd' (one record per query)")
    qnames = _query_names(raw, imlist, path, base)
    if len(qnames) != len(records):
        raise SourceError(f"{path}: {len(qnames)} query images but {len(records)} 'gnd' records")
    queries = []
    for i, (qname, record) in enumerate(zip(qnames, records)):
        where = f"{path}: gnd record #{i}"
        if not isinstance(record, dict):
            raise SourceError(f"{where} must be a record with 'ok' or 'easy'/'hard' lists")
        lists = {k: _names_at(record[k], imlist, base, f"{where} '{k}'")
                 for k in _LIST_KINDS if k in record}
        queries.append(_GndQuery(qname, lists, as_box(record.get("bbx"), where)))
    return _Gnd(imlist, tuple(queries))


def _as_list(value: Any) -> Any:
    """Numpy arrays of names (as pickles may hold them) as plain lists of str."""
    if isinstance(value, np.ndarray):
        return [str(v) for v in value.ravel()]
    return value


def _query_names(raw: dict[str, Any], imlist: Sequence[str], path: Path, base: int) -> list[str]:
    """Query image names from ``qimlist``, else from ``qidx`` indices into ``imlist``."""
    if raw.get("qimlist") is not None:
        return list(_name_sequence(_as_list(raw["qimlist"]), "'qimlist'", path))
    if raw.get("qidx") is None:
        raise SourceError(f"{path}: has neither 'qimlist' nor 'qidx' (the query images)")
    names = list(_names_at(raw["qidx"], imlist, base, f"{path}: 'qidx'"))
    stated = raw.get("q_name")  # gnd_oxford5k.mat also names its queries: they must agree
    if stated is not None and list(_as_list(stated)) != names:
        raise SourceError(f"{path}: 'q_name' disagrees with the images that 'qidx' points at")
    return names


def _names_at(indices: Any, imlist: Sequence[str], base: int, where: str) -> tuple[str, ...]:
    """Names of ``imlist`` at ``indices`` (``base``-based), checking every index."""
    try:
        values = np.asarray(indices, dtype=float).ravel()
    except (TypeError, ValueError):
        raise SourceError(f"{where} must be a list of image indices") from None
    if values.size and not (np.isfinite(values).all() and (values == np.round(values)).all()):
        raise SourceError(f"{where} must hold whole numbers (image indices)")
    positions = values.astype(np.int64) - base
    bad = positions[(positions < 0) | (positions >= len(imlist))]
    if bad.size:
        raise SourceError(
            f"{where}: index {int(bad[0]) + base} is outside 'imlist' "
            f"({len(imlist)} images, {base}-based indices)"
        )
    return tuple(imlist[int(p)] for p in positions)
