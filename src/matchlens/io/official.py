"""Readers of the official layouts of the standard instance-retrieval benchmarks.

Every reader returns the :class:`~matchlens.io.datasets.Dataset` that :func:`load_gt_json`
returns, so evaluation code never cares where a set came from. Conventions shared by all readers:

* Image names are relative to ``Dataset.image_dir`` and carry their extension
  (``"all_souls_000013.jpg"``); official lists name images without one, ``.jpg`` is added.
* Boxes are ``(x0, y0, x1, y1)`` as the ground truth gives them. Official boxes refer to the
  images as distributed, so they are in the pixels of the stored images only when those are the
  originals (no rescaling is done here; use gt.json for downscaled copies).
* **The official lists are kept exactly as published**, the query's own image included: Oxford's
  good lists (and the ``ok`` lists of ``gnd_oxford5k.mat``) contain the query itself, so a cropped
  query that finds its own photo scores a hit, as in every published Oxford5k/Paris6k figure;
  Holidays' ``junk`` is the query itself, so it is ignored there. The scorer
  (:func:`matchlens.evaluate.protocol.query_metrics`) ignores the query image only where the
  ground truth does not list it as a positive (gt.json sets).
* Queries whose positive set is empty (possible in revisitop's Hard protocol) are kept: their AP
  is NaN and :func:`~matchlens.evaluate.metrics.mean_average_precision` skips them, as revisitop
  does.
* Every malformed input raises a one-line :class:`~matchlens.errors.SourceError` naming the file.

Formats (see :func:`load_dataset` for auto-detection):

``oxford`` / ``paris`` (:func:`load_oxford_classic`)
    ``*_query.txt`` (``oxc1_all_souls_000013 136.5 34.1 648.5 955.9``; Paris names have no
    ``oxc1_`` prefix), ``*_good.txt``, ``*_ok.txt``, ``*_junk.txt`` + ``jpg/`` or ``images/``.
``gnd`` (:func:`load_gnd_file`)
    One ground-truth file: ``gnd_*.mat`` (MATLAB 5 or 7.3/HDF5; indices 1-based), ``*.pkl`` as
    cirtorch/revisitop write it (0-based) or ``*_gnd.json`` (image names).
``roxford5k`` / ``rparis6k`` (:func:`load_revisited`)
    ``<root>/<name>/gnd_<name>.pkl`` + ``jpg/``; Easy/Medium/Hard; optional R1M distractors.
``holidays`` (:func:`load_holidays`), ``ukbench`` (:func:`load_ukbench`), ``instre``
(:func:`load_instre`), ``gtjson`` (:func:`~matchlens.io.datasets.load_gt_json`).

R1M distractors are named by their ABSOLUTE path (``Dataset.image_path`` returns an absolute
name unchanged, since ``image_dir / "/abs/x.jpg"`` is ``/abs/x.jpg``): they live outside the
dataset's folder and can never collide with its relative names.
"""

from __future__ import annotations

import codecs
import inspect
import json
import math
import os
import pickle
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from matchlens.errors import SourceError
from matchlens.io.datasets import Dataset, Query, load_gt_json
from matchlens.registry import Registry

__all__ = [
    "DATASET_FORMATS",
    "HOLIDAYS_UPRIGHT_DIR",
    "PROTOCOLS",
    "detect_format",
    "load_dataset",
    "load_gnd_file",
    "load_holidays",
    "load_instre",
    "load_oxford_classic",
    "load_revisited",
    "load_ukbench",
]

Box = tuple[float, float, float, float]
PathLike = str | os.PathLike

#: Revisited protocols, as in revisitop's ``example_evaluate.py``.
PROTOCOLS = ("easy", "medium", "hard")

#: Folder (beside ``jpg/``) holding the rotated-upright Holidays images for ``upright=True``.
HOLIDAYS_UPRIGHT_DIR = "jpg_rotated"

#: File suffixes counted as images when a folder is listed (the classic protocols rank every
#: image of the collection) and recognised as "already has an extension" in gnd names.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

#: The 11 landmarks of Oxford5k / Paris6k in the order of the official query lists (5 queries
#: each); the gnd files carry no names, so groups are named from this order.
_LANDMARKS = {
    "oxford5k": ("all_souls", "ashmolean", "balliol", "bodleian", "christ_church", "cornmarket",
                 "hertford", "keble", "magdalen", "pitt_rivers", "radcliffe_camera"),
    "paris6k": ("defense", "eiffel", "invalides", "louvre", "moulinrouge", "museedorsay",
                "notredame", "pantheon", "pompidou", "sacrecoeur", "triomphe"),
}

_QUERY_FILE = re.compile(r"^(?P<landmark>.+)_(?P<number>\d+)_query\.txt$")
_HOLIDAYS_NAME = re.compile(r"^(?P<number>\d{6})\.jpg$", re.IGNORECASE)
_UKBENCH_NAME = re.compile(r"^ukbench(?P<number>\d{5})\.jpg$", re.IGNORECASE)
_LIST_KINDS = ("ok", "easy", "hard", "junk")


# =============================================================================== shared helpers


def _existing_dir(path: PathLike, what: str) -> Path:
    """``path`` as a Path, or a SourceError if it is not a folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise SourceError(f"{what} not found: {folder}")
    return folder


def _safe_name(name: Any, source: Path) -> str:
    """Check a name from a ground-truth file is a plain relative path inside the image folder."""
    if not isinstance(name, str) or not name:
        raise SourceError(f"{source}: image names must be non-empty strings, got {name!r}")
    pure = PurePosixPath(name)
    # An absolute or '..' name from a downloaded file would read outside the dataset.
    if pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise SourceError(f"{source}: invalid image name {name!r}")
    return name


def _with_extension(name: str) -> str:
    """Official lists name images without ``.jpg``; INSTRE and R1M names already have one."""
    return name if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES else name + ".jpg"


def _list_images(folder: Path) -> list[str]:
    """Sorted names of the image files directly in ``folder`` (hidden files skipped)."""
    return sorted(
        p.name for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _image_folder(root: Path, candidates: Sequence[str], given: PathLike | None) -> Path:
    """``given`` (relative to ``root``), else the first existing candidate subfolder, else root."""
    if given is not None:
        folder = Path(given).expanduser()
        folder = folder if folder.is_absolute() else root / folder
        return _existing_dir(folder, "image folder")
    for candidate in candidates:
        if (root / candidate).is_dir():
            return root / candidate
    return root


def _check_images_exist(names: Iterable[str], image_dir: Path, source: Path) -> None:
    """Fail at load time, naming one example, rather than halfway through indexing."""
    missing = [n for n in dict.fromkeys(names) if not (image_dir / n).is_file()]
    if missing:
        raise SourceError(
            f"{len(missing)} image(s) named in {source} are missing from {image_dir}, "
            f"e.g. {missing[0]!r} (pass check_images=False to read the ground truth alone)"
        )


def _check_unique(names: Sequence[str], source: Path) -> None:
    """A repeated database image would be ranked twice and could count twice as a hit."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SourceError(f"{source}: image {name!r} is listed more than once")
        seen.add(name)


def _box(values: Any, where: str) -> Box | None:
    """Four finite numbers with x0 < x1 and y0 < y1, or None when the file gives no box."""
    if values is None:
        return None
    try:
        numbers = [float(v) for v in np.asarray(values, dtype=float).ravel()]
    except (TypeError, ValueError):
        raise SourceError(f"{where}: box must be four numbers x0 y0 x1 y1") from None
    if not numbers:
        return None
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise SourceError(f"{where}: box must be four finite numbers x0 y0 x1 y1, got {numbers}")
    x0, y0, x1, y1 = numbers
    if not (x0 < x1 and y0 < y1):
        raise SourceError(f"{where}: box {numbers} is empty (need x0 < x1 and y0 < y1)")
    return x0, y0, x1, y1


def _make_query(
    image: str, positives: Iterable[str], junk: Iterable[str], group: str | None, box: Box | None,
    published: bool = True,
) -> Query:
    """An official query. ``published``: the lists are kept exactly as the ground truth file gives
    them (see the module docstring); otherwise they were derived from group membership by a
    naming rule, and the query's own image is not one of its answers."""
    if published:
        return Query(image, frozenset(positives), frozenset(junk), group, box, True)
    itself = {image}
    return Query(image, frozenset(positives) - itself, frozenset(junk) - itself, group, box, True)


def _check_protocol(protocol: Any) -> str:
    """The protocol name in lower case, or a SourceError listing the valid ones."""
    if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
        raise SourceError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    return protocol.lower()


# ================================================================ Oxford5k / Paris6k, classic


def load_oxford_classic(
    root: PathLike, name: str | None = None, image_dir: PathLike | None = None
) -> Dataset:
    """Read Oxford5k / Paris6k as distributed: ``*_query/good/ok/junk.txt`` + the images.

    Args:
        root: the folder holding the ground-truth ``.txt`` files.
        name: the dataset's name (default: the folder's name).
        image_dir: the image folder, relative to ``root`` or absolute (default: ``jpg/``, else
            ``images/``, else ``root`` itself).

    Returns:
        Every image file of the image folder as the database (the classic protocol ranks the
        whole collection, queries included), and one official query per ``*_query.txt``, in
        (landmark, number) order, with positives = good ∪ ok, junk = junk, group = the landmark
        (``all_souls``, ``defense``, ...) and the box of the query file.

    Raises:
        SourceError: a folder or one of a query's four files is missing, a query line is
            malformed, or a listed name (query, good, ok or junk) has no image file.
    """
    root = _existing_dir(root, "dataset folder")
    folder = _image_folder(root, ("jpg", "images"), image_dir)
    images = _list_images(folder)
    if not images:
        raise SourceError(f"image folder {folder} contains no images")
    by_stem = _files_by_stem(images, folder)
    query_files = sorted(root.glob("*_query.txt"), key=_query_file_order)
    if not query_files:
        raise SourceError(f"no *_query.txt ground-truth files in {root}")
    queries = tuple(_classic_query(path, by_stem, folder) for path in query_files)
    return Dataset(name or root.name, root, folder, tuple(images), queries)


def _files_by_stem(images: Sequence[str], folder: Path) -> dict[str, str]:
    """Map ``all_souls_000013`` → ``all_souls_000013.jpg``; the lists name images by stem."""
    by_stem: dict[str, str] = {}
    for image in images:
        stem = PurePosixPath(image).stem
        if stem in by_stem:
            raise SourceError(f"{folder}: {by_stem[stem]!r} and {image!r} have the same name")
        by_stem[stem] = image
    return by_stem


def _query_file_order(path: Path) -> tuple[str, int]:
    """Sort ``all_souls_2`` before ``all_souls_10`` (numeric, not text, order)."""
    match = _QUERY_FILE.match(path.name)
    return (match["landmark"], int(match["number"])) if match else (path.name, 0)


def _classic_query(path: Path, by_stem: dict[str, str], folder: Path) -> Query:
    """Build the query of ``<landmark>_<n>_query.txt`` from it and its three sibling lists."""
    match = _QUERY_FILE.match(path.name)
    if match is None:
        raise SourceError(f"{path}: expected a name like all_souls_1_query.txt")
    stem, box = _read_query_line(path)
    image = _stem_to_file(stem, by_stem, folder, path)
    lists = {
        kind: [_stem_to_file(s, by_stem, folder, sibling) for s in _read_names(sibling)]
        for kind in ("good", "ok", "junk")
        for sibling in [path.with_name(f"{match['landmark']}_{match['number']}_{kind}.txt")]
    }
    return _make_query(image, lists["good"] + lists["ok"], lists["junk"], match["landmark"], box)


def _read_text(path: Path) -> str:
    """A ground-truth text file's content; every failure is a one-line SourceError."""
    if not path.is_file():
        raise SourceError(f"ground-truth file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from None


def _read_query_line(path: Path) -> tuple[str, Box]:
    """``oxc1_all_souls_000013 136.5 34.1 648.5 955.9`` → (``all_souls_000013``, box)."""
    lines = [line.split() for line in _read_text(path).splitlines() if line.strip()]
    if len(lines) != 1 or len(lines[0]) != 5:
        raise SourceError(f"{path}: expected one line 'NAME x0 y0 x1 y1'")
    name, *numbers = lines[0]
    try:
        values = [float(v) for v in numbers]
    except ValueError:
        raise SourceError(f"{path}: box {' '.join(numbers)!r} is not four numbers") from None
    # Oxford's query files prefix the image name with the collection id; Paris's do not.
    return name.removeprefix("oxc1_"), _box(values, str(path))


def _read_names(path: Path) -> list[str]:
    """The image stems listed one per line in a good/ok/junk file."""
    return [line.strip() for line in _read_text(path).splitlines() if line.strip()]


def _stem_to_file(stem: str, by_stem: dict[str, str], folder: Path, source: Path) -> str:
    """The image file a list names (by stem, or by full file name)."""
    image = by_stem.get(stem) or by_stem.get(PurePosixPath(stem).stem)
    if image is None:
        raise SourceError(f"{source}: image {stem!r} has no file in {folder}")
    return image


# ================================================================== gnd files (.mat/.pkl/.json)


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
    gnd = _read_gnd(gnd_path)
    if image_dir is None:
        beside = gnd_path.parent / "jpg"
        folder = beside if beside.is_dir() else gnd_path.parent
    else:
        folder = Path(image_dir).expanduser()
        if check_images and not folder.is_dir():
            raise SourceError(f"image folder not found: {folder}")
    dataset_name = name or _name_from_file(gnd_path)
    return _dataset_from_gnd(
        gnd, gnd_path, dataset_name, folder, protocol=protocol, check_images=check_images,
        kind=dataset_name.lower(),
    )


def _name_from_file(path: Path) -> str:
    """``gnd_oxford5k.mat`` / ``oxford5k_gnd.json`` → ``oxford5k``."""
    stem = path.stem
    return stem.removeprefix("gnd_").removesuffix("_gnd") or stem


def _read_gnd(path: Path) -> _Gnd:
    """Parse a gnd file of any supported kind, chosen by its suffix."""
    if not path.is_file():
        raise SourceError(f"ground-truth file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _gnd_from_json(path)
    if suffix == ".pkl":
        return _gnd_from_raw(_load_pickle(path), path, base=0)
    if suffix == ".mat":
        return _gnd_from_raw(_load_mat(path), path, base=1)
    raise SourceError(f"{path}: unknown ground-truth file type (expected .mat, .pkl or .json)")


def _dataset_from_gnd(
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
    images = [_with_extension(n) for n in gnd.imlist]
    groups = _gnd_groups(kind, gnd.queries)
    queries = []
    for index, (q, group) in enumerate(zip(gnd.queries, groups)):
        positives, junk = _apply_protocol(q.lists, protocol, f"{source}: query #{index}")
        queries.append(_make_query(
            _with_extension(q.image), map(_with_extension, positives),
            map(_with_extension, junk), group, q.box,
        ))
    if check_images:
        _check_images_exist(images + [q.image for q in queries], image_dir, source)
    images.extend(extra_images)
    _check_unique(images, source)
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
    chosen = _check_protocol("medium" if protocol is None else protocol)
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
        data = json.loads(_read_text(path))
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
    image = _safe_name(raw.get("query"), path)
    lists = {}
    for key, kind in (("positives", "ok"), ("junk", "junk")):
        names = _name_sequence(raw.get(key, []), f"query #{index} '{key}'", path)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SourceError(f"{where}: '{key}' names {unknown[0]!r}, which is not in 'imlist'")
        lists[kind] = names
    return _GndQuery(image, lists, _box(raw.get("bbx"), where))


def _name_sequence(value: Any, what: str, path: Path) -> tuple[str, ...]:
    """A list of safe image names."""
    if not isinstance(value, (list, tuple)):
        raise SourceError(f"{path}: {what} must be a list of image names")
    return tuple(_safe_name(v, path) for v in value)


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
        queries.append(_GndQuery(qname, lists, _box(record.get("bbx"), where)))
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
    return tuple(imlist[p] for p in positions)


# ---------------------------------------------------------------------------- pickle (safe)


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    """The callables numpy arrays and scalars pickle through, under every module path numpy
    has used; taken from numpy's own ``__reduce__`` so no deprecated module is imported."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    # Protocol-2 pickles store bytes through _codecs.encode, and sets through builtins.set.
    allowed[("_codecs", "encode")] = codecs.encode
    for module in ("builtins", "__builtin__"):
        for builtin in (set, frozenset, bytearray, complex):
            allowed[(module, builtin.__name__)] = builtin
    return allowed


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, strings and numpy arrays, and nothing else.

    A ``.pkl`` downloaded from the internet can name any callable (``os.system``) and have it
    run while loading; refusing every global outside the allow-list makes loading it inert.
    """

    _allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _load_pickle(path: Path) -> dict[str, Any]:
    """Load a gnd pickle safely; arrays become numpy arrays, the rest plain Python."""
    try:
        with path.open("rb") as stream:
            # latin1: how numpy arrays pickled by Python 2 (as the 2018 files were) must be read.
            data = _DataOnlyUnpickler(stream, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError) as exc:
        raise SourceError(f"cannot read {path} as a ground-truth pickle: {exc}") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a pickled dict with 'imlist', 'qimlist' and 'gnd'")
    gnd = data.get("gnd")
    if isinstance(gnd, (tuple, np.ndarray)):
        data = {**data, "gnd": list(gnd)}
    return data


# ------------------------------------------------------------------------------------- MATLAB


def _load_mat(path: Path) -> dict[str, Any]:
    """Read a gnd ``.mat`` into plain fields; MATLAB 7.3 files are HDF5, older ones are not."""
    import h5py  # lazily: only the .mat readers need h5py/scipy

    if h5py.is_hdf5(path):
        return _load_mat73(path)
    return _load_mat5(path)


def _load_mat5(path: Path) -> dict[str, Any]:
    """MATLAB 5 files (Holidays, INSTRE) through scipy."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path, squeeze_me=False, struct_as_record=True)
    except Exception as exc:  # scipy raises many types for a corrupt file; all mean "bad file"
        raise SourceError(f"cannot read {path} as a MATLAB file: {exc}") from None
    fields: dict[str, Any] = {}
    for key in ("imlist", "qimlist", "q_name"):
        if key in mat:
            fields[key] = [_mat5_string(cell, path) for cell in np.asarray(mat[key]).ravel()]
    if "qidx" in mat:
        fields["qidx"] = mat["qidx"]
    if "gnd" in mat:
        fields["gnd"] = _mat5_records(mat["gnd"], path)
    return fields


def _mat5_string(cell: Any, path: Path) -> str:
    """One cell of a MATLAB cell array of strings."""
    values = np.asarray(cell).ravel()
    if values.dtype.kind not in "US":
        raise SourceError(f"{path}: expected a cell array of strings")
    return "".join(str(v) for v in values)


def _mat5_records(gnd: Any, path: Path) -> list[dict[str, Any]]:
    """A MATLAB struct array as a list of field → array dicts."""
    array = np.asarray(gnd)
    if array.dtype.names is None:
        raise SourceError(f"{path}: 'gnd' must be a struct array")
    return [{f: record[f] for f in array.dtype.names} for record in array.ravel()]


def _load_mat73(path: Path) -> dict[str, Any]:
    """MATLAB 7.3 files (Oxford5k, Paris6k) through h5py: cells and struct fields hold
    references to the real datasets, char arrays are uint16 code points."""
    import h5py

    try:
        with h5py.File(path, "r") as mat:
            fields: dict[str, Any] = {}
            for key in ("imlist", "qimlist", "q_name"):
                if key in mat:
                    fields[key] = [_h5_string(mat[ref]) for ref in mat[key][()].ravel()]
            if "qidx" in mat:
                fields["qidx"] = _h5_array(mat["qidx"])
            if "gnd" in mat:
                fields["gnd"] = _h5_records(mat, mat["gnd"], path)
            return fields
    except SourceError:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/TypeError/ValueError for bad content
        raise SourceError(f"cannot read {path} as a MATLAB 7.3 file: {exc}") from None


def _h5_array(dataset: Any) -> np.ndarray:
    """A numeric MATLAB array; MATLAB writes an empty one as its shape, flagged MATLAB_empty."""
    if dataset.attrs.get("MATLAB_empty", 0):
        return np.zeros(0)
    return np.asarray(dataset[()])


def _h5_string(dataset: Any) -> str:
    """A MATLAB char array (uint16 code points) as a str."""
    return "".join(chr(int(c)) for c in _h5_array(dataset).ravel())


def _h5_records(mat: Any, group: Any, path: Path) -> list[dict[str, Any]]:
    """A MATLAB struct array: one dataset of references per field, one reference per record."""
    import h5py

    if not isinstance(group, h5py.Group):
        raise SourceError(f"{path}: 'gnd' must be a struct array")
    columns = {}
    for field in group:
        refs = group[field][()]
        if refs.dtype != h5py.ref_dtype:  # a 1x1 struct stores its fields inline
            columns[field] = [np.asarray(refs)]
        else:
            columns[field] = [_h5_array(mat[ref]) for ref in refs.ravel()]
    counts = {len(v) for v in columns.values()}
    if len(counts) > 1:
        raise SourceError(f"{path}: the fields of 'gnd' have different lengths")
    count = counts.pop() if counts else 0
    return [{f: values[i] for f, values in columns.items()} for i in range(count)]


# ======================================================================== ROxford5k / RParis6k


def load_revisited(
    root: PathLike,
    name: str | None = None,
    protocol: str = "medium",
    *,
    distractors: PathLike | None = None,
    check_images: bool = True,
) -> Dataset:
    """Read ROxford5k / RParis6k as revisitop and cirtorch lay them out.

    Layout: ``<root>/<name>/gnd_<name>.pkl`` and ``<root>/<name>/jpg/<image>.jpg`` (``root``
    may also be the ``<name>`` folder itself). The pickle holds ``imlist``, ``qimlist`` and
    ``gnd``, a list of dicts with 0-based ``easy``, ``hard``, ``junk`` and ``bbx``; it is read
    with an unpickler that refuses anything but plain data and numpy arrays.

    Protocols (revisitop's ``example_evaluate.py``): ``easy``: positives = easy, junk = junk ∪
    hard; ``medium``: positives = easy ∪ hard, junk = junk; ``hard``: positives = hard, junk =
    junk ∪ easy. Queries are not database images; queries without positives are kept.

    Args:
        root: the folder holding ``<name>/`` (or the ``<name>`` folder).
        name: ``roxford5k``, ``rparis6k`` or another ``gnd_<name>.pkl`` (default: the only
            ``gnd_r*.pkl`` found).
        protocol: ``easy``, ``medium`` or ``hard``.
        distractors: the ``revisitop1m`` folder (``revisitop1m.txt``, one path per line
            relative to its ``jpg/``); its images are appended to the database under their
            ABSOLUTE paths, which ``Dataset.image_path`` returns unchanged.
        check_images: verify every image (distractors included) exists.

    Raises:
        SourceError: missing/unsafe/malformed pickle, unknown protocol, missing image.
    """
    chosen = _check_protocol(protocol)
    data_dir, gnd_path, dataset_name = _revisited_paths(_existing_dir(root, "dataset folder"), name)
    extra = _read_distractors(distractors, check_images) if distractors is not None else []
    return _dataset_from_gnd(
        _read_gnd(gnd_path), gnd_path, dataset_name, data_dir / "jpg", protocol=chosen,
        check_images=check_images, kind=None, extra_images=extra,
    )


def _revisited_paths(root: Path, name: str | None) -> tuple[Path, Path, str]:
    """(data folder, gnd pickle, name), accepting the parent folder or the dataset folder."""
    if name is None:
        found = sorted(root.glob("gnd_r*.pkl")) or sorted(root.glob("*/gnd_r*.pkl"))
        if len(found) != 1:
            raise SourceError(
                f"{root}: expected exactly one gnd_r*.pkl (found {len(found)}); pass name="
            )
        return found[0].parent, found[0], _name_from_file(found[0])
    for data_dir in (root, root / name):
        gnd_path = data_dir / f"gnd_{name}.pkl"
        if gnd_path.is_file():
            return data_dir, gnd_path, name
    raise SourceError(f"ground-truth file not found: {root / name / f'gnd_{name}.pkl'}")


def _read_distractors(folder: PathLike, check_images: bool) -> list[str]:
    """Absolute paths of the R1M distractors listed in ``revisitop1m.txt``."""
    root = _existing_dir(folder, "distractor folder")
    list_path = root / "revisitop1m.txt"
    image_dir = (root / "jpg").absolute()
    names = [_safe_name(n, list_path) for n in _read_names(list_path)]
    if not names:
        raise SourceError(f"{list_path} lists no images")
    if check_images:
        _check_images_exist(names, image_dir, list_path)
    return [str(image_dir / n) for n in names]


# ============================================================================ INRIA Holidays


def load_holidays(root: PathLike, upright: bool = False) -> Dataset:
    """Read INRIA Holidays: ``NNNNNN.jpg`` images in ``jpg/`` (else ``images/``, else root).

    Groups are the images sharing their first 4 digits (named ``holidays_NNNN``); the query of
    a group is its image whose number ends in ``00``; positives are the rest of the group; no
    junk, no box. If ``gnd_holidays.mat`` is in ``root``, it is used (its image order) after
    checking it lists exactly these images and queries.

    Args:
        root: the dataset folder.
        upright: read the rotated-upright variant from ``root/jpg_rotated/``
            (:data:`HOLIDAYS_UPRIGHT_DIR`), same file names as ``jpg/``.

    Raises:
        SourceError: no Holidays image, a group without its ``..00`` query, a missing
            ``jpg_rotated/`` with ``upright=True``, or a gnd file that disagrees.
    """
    root = _existing_dir(root, "dataset folder")
    if upright:
        folder = _existing_dir(root / HOLIDAYS_UPRIGHT_DIR, "upright Holidays image folder")
    else:
        folder = _image_folder(root, ("jpg", "images"), None)
    names = [n for n in _list_images(folder) if _HOLIDAYS_NAME.match(n)]
    if not names:
        raise SourceError(f"no Holidays images (NNNNNN.jpg) in {folder}")
    queries = _holidays_queries(names, folder)
    dataset = Dataset(root.name, root, folder, tuple(names), tuple(queries))
    gnd_path = root / "gnd_holidays.mat"
    if gnd_path.is_file():
        return _agreeing_gnd(dataset, gnd_path)
    return dataset


def _holidays_queries(names: Sequence[str], folder: Path) -> list[Query]:
    """One query per 4-digit group: the ``..00`` image against the rest of the group."""
    groups: dict[str, list[str]] = {}
    for image in names:
        groups.setdefault(image[:4], []).append(image)
    queries = []
    for prefix, members in groups.items():
        heads = [m for m in members if m[4:6] == "00"]
        if not heads:
            raise SourceError(
                f"{folder}: Holidays group {prefix} has no query image {prefix}00.jpg"
            )
        queries.append(_make_query(heads[0], members, (), f"holidays_{prefix}", None, published=False))
    return queries


def _agreeing_gnd(dataset: Dataset, gnd_path: Path) -> Dataset:
    """The dataset of ``gnd_holidays.mat``, refusing one that contradicts the file names."""
    official = _dataset_from_gnd(
        _read_gnd(gnd_path), gnd_path, dataset.name, dataset.image_dir, protocol=None,
        check_images=False, kind="holidays",
    )
    if set(official.images) != set(dataset.images):
        extra = sorted(set(official.images) ^ set(dataset.images))
        raise SourceError(
            f"{gnd_path} and {dataset.image_dir} list different images, e.g. {extra[0]!r}"
        )
    expected = {q.image: q for q in dataset.queries}
    for query in official.queries:
        rule = expected.get(query.image)
        # The mat lists each query as its own junk, the naming rule lists no junk at all.
        if rule is None or (rule.positives, rule.group) != (query.positives, query.group) \
                or query.junk - {query.image}:
            raise SourceError(f"{gnd_path}: query {query.image!r} disagrees with the file names")
    if len(official.queries) != len(expected):
        raise SourceError(f"{gnd_path} has {len(official.queries)} queries, the names give "
                          f"{len(expected)}")
    return Dataset(dataset.name, dataset.root, dataset.image_dir, official.images,
                   official.queries)


# ==================================================================================== UKBench


def load_ukbench(root: PathLike) -> Dataset:
    """Read UKBench: ``ukbenchNNNNN.jpg`` in ``full/`` (else ``images/``, else root).

    Objects are groups of 4 consecutive numbers (group ``NNNNN // 4``, named ``ukb_objGGGG``);
    every image is a query whose positives are the other images of its group (the other 3 in
    the full set); no junk, no box.

    Raises:
        SourceError: no UKBench image, or two files with the same number.
    """
    root = _existing_dir(root, "dataset folder")
    folder = _image_folder(root, ("full", "images"), None)
    numbered = {}
    for image in _list_images(folder):
        match = _UKBENCH_NAME.match(image)
        if match:
            number = int(match["number"])
            if number in numbered:
                raise SourceError(f"{folder}: {numbered[number]!r} and {image!r} share a number")
            numbered[number] = image
    if not numbered:
        raise SourceError(f"no UKBench images (ukbenchNNNNN.jpg) in {folder}")
    names = [numbered[n] for n in sorted(numbered)]
    groups: dict[int, list[str]] = {}
    for number in sorted(numbered):
        groups.setdefault(number // 4, []).append(numbered[number])
    queries = tuple(
        _make_query(numbered[n], groups[n // 4], (), f"ukb_obj{n // 4:04d}", None, published=False)
        for n in sorted(numbered)
    )
    return Dataset(root.name, root, folder, tuple(names), queries)


# ===================================================================================== INSTRE


def load_instre(root: PathLike, check_images: bool = True) -> Dataset:
    """Read INSTRE as packaged by Iscen et al.: ``root/gnd_instre.mat`` + the image tree.

    ``imlist`` and ``qimlist`` hold paths relative to ``root`` with their extension
    (``INSTRE-S1/01a_canada_book/001.jpg``); ``gnd`` has 1-based ``ok`` and ``bbx``
    (``x0 y0 x1 y1``). Group = the query's class folder.

    Raises:
        SourceError: missing or malformed ``gnd_instre.mat``, or a missing image.
    """
    root = _existing_dir(root, "dataset folder")
    gnd_path = root / "gnd_instre.mat"
    return _dataset_from_gnd(
        _read_gnd(gnd_path), gnd_path, "instre", root, protocol=None,
        check_images=check_images, kind="instre",
    )


# ============================================================================ format registry

#: Dataset format name → reader ``(root, **options) -> Dataset``.
DATASET_FORMATS: Registry[Callable[..., Dataset]] = Registry("dataset format")


@DATASET_FORMATS.register("gtjson")
def _load_gtjson(root: PathLike) -> Dataset:
    """``gt.json`` + ``images/`` (the shared evaluation sets)."""
    return load_gt_json(root)


@DATASET_FORMATS.register("oxford")
def _load_oxford(root: PathLike, name: str = "oxford5k", image_dir: PathLike | None = None
                 ) -> Dataset:
    """Oxford5k, classic gt files."""
    return load_oxford_classic(root, name=name, image_dir=image_dir)


@DATASET_FORMATS.register("paris")
def _load_paris(root: PathLike, name: str = "paris6k", image_dir: PathLike | None = None
                ) -> Dataset:
    """Paris6k, classic gt files."""
    return load_oxford_classic(root, name=name, image_dir=image_dir)


@DATASET_FORMATS.register("roxford5k")
def _load_roxford5k(root: PathLike, protocol: str = "medium", distractors: PathLike | None = None,
                    check_images: bool = True) -> Dataset:
    """ROxford5k (revisitop layout)."""
    return load_revisited(root, "roxford5k", protocol, distractors=distractors,
                          check_images=check_images)


@DATASET_FORMATS.register("rparis6k")
def _load_rparis6k(root: PathLike, protocol: str = "medium", distractors: PathLike | None = None,
                   check_images: bool = True) -> Dataset:
    """RParis6k (revisitop layout)."""
    return load_revisited(root, "rparis6k", protocol, distractors=distractors,
                          check_images=check_images)


@DATASET_FORMATS.register("revisited")
def _load_revisited_any(root: PathLike, protocol: str = "medium",
                        distractors: PathLike | None = None, check_images: bool = True) -> Dataset:
    """Whichever ``gnd_r*.pkl`` the folder holds (what auto-detection picks)."""
    return load_revisited(root, None, protocol, distractors=distractors,
                          check_images=check_images)


DATASET_FORMATS.register("holidays")(load_holidays)
DATASET_FORMATS.register("ukbench")(load_ukbench)
DATASET_FORMATS.register("instre")(load_instre)
DATASET_FORMATS.register("gnd")(load_gnd_file)


def load_dataset(root: PathLike, format: str | None = None, **options: Any) -> Dataset:
    """Load an evaluation set in any supported layout.

    Args:
        root: the dataset folder (for ``gnd``: the ground-truth file).
        format: one of :data:`DATASET_FORMATS` (``gtjson``, ``oxford``, ``paris``,
            ``roxford5k``, ``rparis6k``, ``revisited``, ``holidays``, ``ukbench``, ``instre``,
            ``gnd``), or None to detect it with :func:`detect_format`.
        **options: passed to the format's reader (e.g. ``protocol="hard"``, ``upright=True``,
            ``image_dir=...``, ``check_images=False``, ``distractors=...``).

    Raises:
        SourceError: unknown format, an option the format's reader does not take, an
            undetectable folder, or anything the reader refuses.
    """
    if format is None:
        format = detect_format(root)
    if not isinstance(format, str) or format not in DATASET_FORMATS:
        raise SourceError(
            f"unknown dataset format {format!r}; formats: {', '.join(DATASET_FORMATS.names())}"
        )
    reader = DATASET_FORMATS.get(format)
    _check_options(reader, options, format)
    return reader(root, **options)


def _check_options(reader: Callable[..., Dataset], options: dict[str, Any], format: str) -> None:
    """Refuse options the reader does not take, listing those it does."""
    accepted = list(inspect.signature(reader).parameters)[1:]  # the first one is the root
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise SourceError(
            f"dataset format {format!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {takes}"
        )


def detect_format(root: PathLike) -> str:
    """Guess the format of ``root`` from the files it holds.

    Rules, first match wins: a ``.mat``/``.pkl``/``.json`` file → ``gnd``; ``gt.json`` →
    ``gtjson``; ``*_query.txt`` → ``oxford`` (``paris`` when the query images are named
    ``paris_*``); ``gnd_r*.pkl`` → ``revisited``; ``gnd_instre.mat`` → ``instre``;
    ``ukbench*.jpg`` → ``ukbench``; ``gnd_holidays.mat`` or 6-digit ``.jpg`` names →
    ``holidays`` (images looked for in root and its usual image subfolders).

    Raises:
        SourceError: nothing recognisable, naming the formats that exist.
    """
    path = Path(root).expanduser()
    if path.is_file() and path.suffix.lower() in {".mat", ".pkl", ".json"}:
        return "gnd"
    folder = _existing_dir(path, "dataset folder")
    if (folder / "gt.json").is_file():
        return "gtjson"
    query_files = sorted(folder.glob("*_query.txt"))
    if query_files:
        first = _read_text(query_files[0]).split()
        return "paris" if first and first[0].startswith("paris_") else "oxford"
    if list(folder.glob("gnd_r*.pkl")):
        return "revisited"
    if (folder / "gnd_instre.mat").is_file():
        return "instre"
    names = _names_in_usual_folders(folder)
    if any(_UKBENCH_NAME.match(n) for n in names):
        return "ukbench"
    if (folder / "gnd_holidays.mat").is_file() or any(_HOLIDAYS_NAME.match(n) for n in names):
        return "holidays"
    raise SourceError(
        f"cannot tell the dataset format of {folder}; pass format= one of: "
        f"{', '.join(DATASET_FORMATS.names())}"
    )


def _names_in_usual_folders(folder: Path) -> list[str]:
    """Image names in ``folder`` and its ``jpg/``, ``images/`` and ``full/`` subfolders."""
    names: list[str] = []
    for candidate in (folder, folder / "jpg", folder / "images", folder / "full"):
        if candidate.is_dir():
            names.extend(_list_images(candidate))
    return names
