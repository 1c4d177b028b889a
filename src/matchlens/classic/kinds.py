"""Classic descriptor kinds stored beside an index, kept in step with its generations.

Layout, inside the index folder (the index's own files are untouched)::

    DIR/kinds/NAME/CURRENT.json          {"model": ..., "built": ..., "generation": ...}
    DIR/kinds/NAME/model-ID/kind.json    encoding type and parameters, training facts
    DIR/kinds/NAME/model-ID/model.npz    codebook (+ Hamming projection and thresholds)
    DIR/kinds/NAME/built-GEN-ID/         per-image codes row-aligned with generation GEN of the
                                         index (code_*.npy, offsets.npy, sha256.npy), stored
                                         search data (data_*.npy), built.json
    DIR/cache/local_features/            RootSIFT per image (shared with spatial verification)

Every write goes to a temporary sibling that is renamed into place, and CURRENT.json is replaced
atomically last, so a reader sees the old state or the new one, never a mix. When the index has
moved to a new generation, the kind is rebuilt for it on first use (or by ``matchlens encode``):
images already encoded (same content hash) keep their codes, only new ones are encoded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from matchlens.classic.base import ENCODINGS, Encoding, Ragged
from matchlens.classic.features import LocalFeatureStore
from matchlens.errors import ConfigError, IndexError_
from matchlens.fileio import write_json_atomic
from matchlens.index import store
from matchlens.local.features import LocalFeatures

__all__ = ["KindInfo", "OpenKind", "encode_kind", "kind_names", "list_kinds", "open_kind", "refresh_kind"]

log = logging.getLogger(__name__)

KINDS_DIR = "kinds"
CURRENT = "CURRENT.json"
RESERVED = {"cnn"}  # the index's own global descriptor
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_DENSE_TRAIN_IMAGES = 200  # dense features are not cached: learn the codebook from this many images
_MIN_PER_WORD = 16         # descriptors per visual word below which a default codebook size is reduced

ProgressFactory = Callable[[int, str], Callable[[int], None]]


@dataclass
class KindInfo:
    """What ``matchlens kinds`` shows of one kind."""

    name: str
    type: str
    params: dict[str, Any]
    generation: str
    images: int
    bytes_per_image: float   # stored codes and search data, per image
    model_bytes: int         # codebook, whitening and friends (independent of the collection size)
    up_to_date: bool
    build_seconds: float
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def kinds_root(index) -> Path:
    return Path(index.root) / KINDS_DIR


def kind_names(index) -> list[str]:
    """Names of the kinds stored with ``index`` (besides ``cnn``)."""
    root = kinds_root(index)
    return sorted(p.name for p in root.iterdir() if (p / CURRENT).is_file()) if root.is_dir() else []


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED:
        raise ConfigError(f"invalid kind name {name!r}: use lower-case letters, digits, '-' or '_' "
                          f"(starting with a letter), not {', '.join(sorted(RESERVED))}")
    return name


# ------------------------------------------------------------------------------------------------
# Writing


def encode_kind(index, type_name: str, name: str | None = None, params: dict[str, Any] | None = None,
                retrain: bool = False, progress: ProgressFactory | None = None) -> KindInfo:
    """Add descriptor kind ``name`` (default: the type name) of encoding ``type_name`` to ``index``:
    learn its codebook from the collection and encode every image. An existing kind is brought up
    to date; ``params`` that only shape the search data (``Encoding.search_params``: VLAD
    whitening, BoW burstiness, ASMK selectivity) are changed without re-encoding; any other change
    needs ``retrain`` (a new codebook)."""
    name = check_name(name or type_name)
    encoding = ENCODINGS.get(type_name)(**(params or {}))  # validates the parameters before any work
    folder = kinds_root(index) / name
    created = not folder.exists()
    try:
        _encode_locked(index, folder, name, encoding, params, retrain, progress)
    except BaseException:
        if created and _read_current(folder) is None:  # a new kind that failed leaves nothing behind
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return describe_kind(index, name)


def _encode_locked(index, folder: Path, name: str, encoding: Encoding, params: dict[str, Any] | None, retrain: bool,
                   progress: ProgressFactory | None) -> None:
    with _writer_lock(folder):
        current = _read_current(folder)
        if current is not None and not retrain:
            stored = _read_json(folder / current["model"] / "kind.json")
            # Given parameters change the stored ones; those that only shape the search data
            # (whitening, burstiness, selectivity) need no new codebook and no re-encoding.
            merged = _jsonable({**stored["params"], **(params or {})})
            changed = {key for key in merged if merged[key] != stored["params"].get(key)}
            if stored["type"] != encoding.type_name or not changed <= type(encoding).search_params:
                raise ConfigError(
                    f"kind {name!r} already exists as {stored['type']} with other parameters "
                    f"({', '.join(sorted(changed)) or 'type'}); pass --retrain to replace it, "
                    "or --name to add another kind")
            if changed:
                _build(index, folder, _respecify(folder, current["model"], stored, merged), progress)
            elif not _up_to_date(current, index):
                _build(index, folder, current["model"], progress)
        else:
            model = _train(index, folder, encoding, progress, fit_k="k" not in (params or {}))
            _build(index, folder, model, progress)


def refresh_kind(index, name: str, progress: ProgressFactory | None = None) -> KindInfo:
    """Bring kind ``name`` up to date with the index's current generation (incrementally)."""
    folder = _existing_folder(index, name)
    with _writer_lock(folder):
        current = _existing_current(folder)
        if not _up_to_date(current, index):
            _build(index, folder, current["model"], progress)
    return describe_kind(index, name)


def _train(index, folder: Path, encoding: Encoding, progress: ProgressFactory | None, fit_k: bool = False) -> str:
    """Learn the model from a sample of the collection's descriptors; returns the model dir name.

    With ``fit_k`` (the codebook size was not chosen by the user), a collection too small for the
    default size gets the largest power of two with at least ``_MIN_PER_WORD`` descriptors a word;
    the size used is what kind.json records."""
    start = time.monotonic()
    arrays, sampled = _learn(index, encoding, progress, fit_k) if encoding.trains else ({}, 0)
    name = f"model-{uuid.uuid4().hex[:12]}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        with open(tmp / "model.npz", "wb") as handle:
            np.savez(handle, **arrays)
        _write_json(tmp / "kind.json", {
            "type": encoding.type_name, "params": _jsonable(encoding.params), "sample": sampled,
            "train_seconds": round(time.monotonic() - start, 2), "trained_on": index.generation,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        os.rename(tmp, folder / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return name


def _learn(index, encoding: Encoding, progress: ProgressFactory | None, fit_k: bool) -> tuple[dict[str, Any], int]:
    """The model arrays learned from a sample of the collection, and the sample's size."""
    sample = _training_sample(index, encoding, progress)
    k = int(encoding.params["k"])
    if fit_k and len(sample) < _MIN_PER_WORD * k:
        fitted = max(2, 2 ** int(math.log2(max(len(sample) // _MIN_PER_WORD, 2))))
        log.warning("%s: %d descriptors are too few for %d words; using k=%d",
                    encoding.type_name, len(sample), k, fitted)
        encoding.params["k"] = fitted
    advance = progress(encoding.train_steps(), f"{encoding.type_name} codebook (k-means)") if progress else None
    return encoding.train(sample, advance), int(len(sample))


def _respecify(folder: Path, model_name: str, stored: dict[str, Any], params: dict[str, Any]) -> str:
    """A new model dir with the same codebook and new search parameters; its codes stay valid."""
    ENCODINGS.get(stored["type"])(**params)  # validate
    name = f"model-{uuid.uuid4().hex[:12]}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        shutil.copyfile(folder / model_name / "model.npz", tmp / "model.npz")
        _write_json(tmp / "kind.json", {**stored, "params": params, "codes_of": stored.get("codes_of", model_name),
                                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        os.rename(tmp, folder / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return name


def _training_sample(index, encoding: Encoding, progress: ProgressFactory | None) -> np.ndarray:
    """A uniform-ish sample of the collection's descriptors, at most ``encoding.sample_size``."""
    rng = np.random.default_rng(int(encoding.params.get("seed", 0)))
    rows = np.arange(index.size)
    if encoding.feature_params.dense and len(rows) > _DENSE_TRAIN_IMAGES:
        rows = np.sort(rng.choice(rows, _DENSE_TRAIN_IMAGES, replace=False))
    if len(rows) == 0:
        raise IndexError_(f"index '{index.root}' has no images to learn a codebook from")
    target = encoding.sample_size(index.size)
    per_image = max(1, math.ceil(1.5 * target / len(rows)))
    store = _store(index, encoding)
    items = [_item(index, int(r)) for r in rows]
    advance = progress(len(items), "local features") if progress else None
    parts = []
    for _, features in store.many(items, advance):
        if features is not None and len(features):
            take = rng.choice(len(features), min(per_image, len(features)), replace=False)
            parts.append(features.descriptors[np.sort(take)])
    sample = np.concatenate(parts) if parts else np.zeros((0, 128), np.float32)
    if len(sample) > target:
        sample = sample[np.sort(rng.choice(len(sample), target, replace=False))]
    return np.ascontiguousarray(sample, dtype=np.float32)


def _build(index, folder: Path, model_name: str, progress: ProgressFactory | None) -> None:
    """Encode the index's current generation (reusing codes of known images) and publish it."""
    start = time.monotonic()
    encoding = _load_encoding(folder / model_name)
    previous = _previous_codes(folder, model_name)
    items = [_item(index, r) for r in range(index.size)]
    todo = [i for i, (sha, _) in enumerate(items) if sha not in previous[1]]
    fresh: dict[int, dict[str, np.ndarray]] = {}
    if todo:
        advance = progress(len(todo), f"{folder.name}: encoding") if progress else None
        store = _store(index, encoding)
        for position, features in store.many([items[i] for i in todo], advance):
            feats = features if features is not None else LocalFeatures.empty((1, 1))
            fresh[todo[position]] = encoding.encode(feats)
    codes = Ragged.pack([fresh[i] if i in fresh else _reused(previous[0], previous[1][sha])
                         for i, (sha, _) in enumerate(items)], encoding.code_template())
    data = _search_data(index, encoding, codes)
    built = f"built-{index.generation}-{model_name[len('model-'):]}"
    _publish(folder, built, codes, data, [sha for sha, _ in items], {
        "generation": index.generation, "images": index.size, "encoded": len(todo), "reused": index.size - len(todo),
        "seconds": round(time.monotonic() - start, 2),
    })
    write_json_atomic(folder / CURRENT, {"model": model_name, "built": built, "generation": index.generation,
                                         "images": index.size}, indent=1, sort_keys=True)
    _remove_unreferenced(folder, {model_name, built})


def _search_data(index, encoding: Encoding, codes: Ragged) -> dict[str, np.ndarray]:
    """The encoding's search data; one learned from the index's own descriptors as well as the
    codes (the ensemble kind's PCA) comes from its ``build_with_index(index, codes)``."""
    with_index = getattr(encoding, "build_with_index", None)
    return with_index(index, codes) if with_index is not None else encoding.build(codes)


def _previous_codes(folder: Path, model_name: str) -> tuple[Ragged | None, dict[str, int]]:
    """Codes of the current build if they came from the same codebook: (codes, sha256 → position)."""
    current = _read_current(folder)
    if current is None or not (folder / current["built"]).is_dir():
        return None, {}
    if _codes_of(folder, current["model"]) != _codes_of(folder, model_name):
        return None, {}
    codes, shas = _load_codes(folder / current["built"])
    return codes, {sha: i for i, sha in enumerate(shas)}


def _publish(folder: Path, built: str, codes: Ragged, data: dict[str, np.ndarray], shas: list[str],
             facts: dict[str, Any]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        np.save(tmp / "offsets.npy", codes.offsets)
        for key, value in codes.arrays.items():
            np.save(tmp / f"code_{key}.npy", np.ascontiguousarray(value))
        for key, value in data.items():
            np.save(tmp / f"data_{key}.npy", np.ascontiguousarray(value))
        np.save(tmp / "sha256.npy", np.array(shas, dtype="S64"))
        # Per-image storage (codes, one row per image of search data) and fixed storage (a whitening).
        per_image = [f"code_{key}.npy" for key in codes.arrays] + ["offsets.npy"] + [
            f"data_{key}.npy" for key, value in data.items() if value.ndim == 2 and len(value) == len(codes)]
        facts["bytes"] = sum((tmp / name).stat().st_size for name in per_image)
        facts["fixed_bytes"] = sum(p.stat().st_size for p in tmp.glob("data_*.npy") if p.name not in per_image)
        _write_json(tmp / "built.json", facts)
        target = folder / built
        if target.exists():  # a rebuild for the same generation (e.g. after a crash): replace it
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_unreferenced(folder: Path, keep: set[str]) -> None:
    # Open readers keep working on POSIX: arrays already loaded or memory-mapped outlive the unlink.
    for path in folder.iterdir():
        if path.is_dir() and (path.name.startswith((".tmp-", "built-", "model-"))) and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Reading


class OpenKind:
    """A kind opened for searching: its encoding, per-image codes and search structures."""

    def __init__(self, index, name: str, folder: Path, current: dict[str, Any]) -> None:
        self.index, self.name = index, name
        self.encoding = _load_encoding(folder / current["model"])
        self.codes, _ = _load_codes(folder / current["built"])
        built = folder / current["built"]
        stored = {p.stem[len("data_"):]: np.load(p, mmap_mode="r") for p in built.glob("data_*.npy")}
        self.data = self.encoding.prepare(self.codes, stored)
        self.store = _store(index, self.encoding)

    @property
    def type(self) -> str:
        return self.encoding.type_name

    def query_code(self, query, box: Sequence[float] | None = None) -> dict[str, np.ndarray]:
        """The query's code (its local features are memoised per file and box)."""
        return self.encoding.encode_query(self.store.query(query, box))

    def scores(self, code: dict[str, np.ndarray]) -> np.ndarray:
        """Similarity of the query code to every indexed image (row order of the index)."""
        return self.encoding.scores(self.codes, self.data, code)


def open_kind(index, name: str, refresh: bool = True, progress: ProgressFactory | None = None) -> OpenKind:
    """Open kind ``name`` of ``index``, first bringing it up to date with the index's generation
    when ``refresh`` (otherwise a stale kind is a one-line error)."""
    folder = _existing_folder(index, name)
    current = _existing_current(folder)
    if not _up_to_date(current, index):
        if store.current_generation(Path(index.root)).path.name != index.generation:
            raise IndexError_(f"index '{index.root}' has changed since it was opened; open it again")
        if not refresh:
            raise IndexError_(f"kind {name!r} of index '{index.root}' was built for {current['generation']}; "
                              f"run 'matchlens encode {index.root}' to update it")
        if not os.access(folder, os.W_OK):
            raise IndexError_(f"kind {name!r} of index '{index.root}' is out of date and the index is read-only")
        refresh_kind(index, name, progress)
        current = _existing_current(folder)
    return OpenKind(index, name, folder, current)


def read_stored_kind(index, name: str) -> tuple[Encoding, Ragged, list[str]]:
    """A stored kind as it is on disk, not brought up to date: its encoding, its per-image codes and
    the content hashes of the images they describe (one-line IndexError_ when missing or corrupt)."""
    folder = _existing_folder(index, name)
    current = _existing_current(folder)
    try:
        codes, shas = _load_codes(folder / current["built"])
    except (OSError, ValueError) as exc:
        raise IndexError_(f"descriptor kind {name!r} of index '{index.root}' is corrupt: {exc}") from None
    return _load_encoding(folder / current["model"]), codes, shas


def describe_kind(index, name: str) -> KindInfo:
    folder = _existing_folder(index, name)
    current = _existing_current(folder)
    kind = _read_json(folder / current["model"] / "kind.json")
    built = _read_json(folder / current["built"] / "built.json")
    images = max(int(built["images"]), 1)
    return KindInfo(
        name=name, type=kind["type"], params=kind["params"], generation=current["generation"],
        images=int(built["images"]), bytes_per_image=built["bytes"] / images,
        model_bytes=(folder / current["model"] / "model.npz").stat().st_size + int(built.get("fixed_bytes", 0)),
        up_to_date=_up_to_date(current, index),
        build_seconds=float(built.get("seconds", 0.0)), train_seconds=float(kind.get("train_seconds", 0.0)),
    )


def list_kinds(index) -> list[KindInfo]:
    """Every stored kind of ``index``."""
    return [describe_kind(index, name) for name in kind_names(index)]


# ------------------------------------------------------------------------------------------------
# Helpers


def _existing_folder(index, name: str) -> Path:
    folder = kinds_root(index) / name
    if not (folder / CURRENT).is_file():
        known = ", ".join(["cnn", *kind_names(index)])
        raise IndexError_(f"index '{index.root}' has no descriptor kind {name!r} (it has: {known}); "
                          f"add it with 'matchlens encode {index.root} --kind TYPE'")
    return folder


def _codes_of(folder: Path, model_name: str) -> str:
    """The model whose codebook made the codes (models re-specified with search parameters share it)."""
    return _read_json(folder / model_name / "kind.json").get("codes_of", model_name)


def _up_to_date(current: dict[str, Any], index) -> bool:
    return current["generation"] == index.generation and current.get("images") == index.size


def _item(index, row: int) -> tuple[str, str]:
    entry = index.entry_for_row(row)
    return entry.sha256, entry.path


def _store(index, encoding: Encoding) -> LocalFeatureStore:
    """The encoding's per-image input (RootSIFT for the classic encodings)."""
    return encoding.feature_source(index)


def _load_encoding(model_dir: Path) -> Encoding:
    kind = _read_json(model_dir / "kind.json")
    encoding = ENCODINGS.get(kind["type"])(**kind["params"])
    with np.load(model_dir / "model.npz", allow_pickle=False) as arrays:
        encoding.load_model({key: arrays[key] for key in arrays.files})
    return encoding


def _load_codes(built_dir: Path) -> tuple[Ragged, list[str]]:
    offsets = np.load(built_dir / "offsets.npy")
    arrays = {p.stem[len("code_"):]: np.load(p, mmap_mode="r") for p in built_dir.glob("code_*.npy")}
    shas = [s.decode() for s in np.load(built_dir / "sha256.npy")]
    return Ragged(offsets, arrays), shas


def _read_current(folder: Path) -> dict[str, Any] | None:
    path = folder / CURRENT
    if not path.is_file():
        return None
    current = _read_json(path)
    if not all(isinstance(current.get(k), str) for k in ("model", "built", "generation")):
        raise IndexError_(f"descriptor kind '{folder}' is corrupt: {CURRENT} is incomplete")
    return current


def _existing_current(folder: Path) -> dict[str, Any]:
    """The CURRENT record of a folder that :func:`_existing_folder` returned."""
    current = _read_current(folder)
    assert current is not None  # _existing_folder checked that the file exists
    return current


def _reused(codes: Ragged | None, position: int) -> dict[str, np.ndarray]:
    """Code ``position`` of the previous build."""
    assert codes is not None  # a position was found in the previous build, so it has codes
    return codes.item(position)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexError_(f"descriptor kind file '{path}' is missing or corrupt: {exc}") from None


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params))


@contextlib.contextmanager
def _writer_lock(folder: Path) -> Iterator[None]:
    """One writer per kind; a second one waits (a search refreshing a stale kind, say)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / ".lock", "a+")
    except OSError as exc:
        raise IndexError_(f"cannot write descriptor kind '{folder}': {exc.strerror or exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    except OSError as exc:
        raise IndexError_(f"could not write descriptor kind '{folder}': {exc.strerror or exc}; "
                          "the previous state is intact") from None
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
