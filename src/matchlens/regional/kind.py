"""The regional descriptor kind: stored beside an index like the classic kinds, read region by region.

Storage and updating are :mod:`matchlens.classic.kinds`' (``DIR/kinds/NAME/``: CURRENT.json, a
model folder with kind.json, a built folder with per-image codes keyed by content hash; images
already encoded keep their codes when the index gains or loses images). The regional layer sits
above :mod:`matchlens.classic`, so :class:`RegionalEncoding` is a classic
:class:`~matchlens.classic.base.Encoding` registered in the same registry (``ENCODINGS``): importing
this package (the search pipeline does when it opens a kind) makes ``matchlens encode IDX --kind
regional --params layout=garment5`` store it and ``--kind regional`` / ``--fuse cnn+regional``
search by it. :func:`open_regional` reads the stored codes with the classic kinds' reader
(:func:`~matchlens.classic.kinds.read_stored_kind`), so region similarities are available to any
layer above this one without the search pipeline. Images the stored kind does not have yet (the
index changed since it was last updated) are described on the fly, never written.

A code is the image's (R, d) region descriptors (:mod:`matchlens.regional.descriptors`); the
kind's score of an image is Σ_r λ_r cos (:mod:`matchlens.regional.scoring`), uniform λ unless a
search sets others (:func:`use_weights`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from matchlens.classic.base import ENCODINGS, Encoding
from matchlens.classic.kinds import describe_kind, kind_names, read_stored_kind
from matchlens.components import integer
from matchlens.errors import ConfigError, IndexError_, MatchlensError
from matchlens.extract.light import shared_query_encoder
from matchlens.io.collection import file_memo_key
from matchlens.io.images import crop_to_box, image_size, load_image
from matchlens.regional.descriptors import POOLS, regional_descriptors
from matchlens.regional.layouts import Box, Layout, make_layout, region_label
from matchlens.regional.scoring import RegionWeights, cosines, read_weights, uniform, weighted_scores

__all__ = ["RegionalEncoding", "RegionalKind", "RegionalSource", "is_regional", "open_regional",
           "regional_kind_names", "use_weights"]

log = logging.getLogger(__name__)

DEFAULT_NAME = "regional"
_CHUNK = 2048           # images scored at once: bounded memory on large collections
_QUERY_MEMO = 64



@ENCODINGS.register("regional")
class RegionalEncoding(Encoding):
    """Region descriptors of a layout, ROI-pooled on the index's backbone feature map.

    Parameters: ``layout`` (a name of ``REGION_LAYOUTS``), ``keypoints`` (the JSON file of the
    ``keypoints`` layout), ``pool`` (auto | gem | max; auto follows the index's pooling),
    ``side`` (longest image side the map is computed at: 640 gives the default backbone a
    20×15 map, fine enough for five regions — at 128 px a collar band is one row of 4 cells and
    replaced regions no longer stand out (docs/regional.md, "Calibration"); 0: the index's
    ``max_side``).
    """

    kind: ClassVar[str] = "encoding"
    feature_defaults: ClassVar[dict[str, Any]] = {}  # no RootSIFT: the regions come from the CNN map
    defaults: ClassVar[dict[str, Any]] = {"layout": "garment5", "keypoints": "", "pool": "auto", "side": 640}
    search_params: ClassVar[frozenset[str]] = frozenset()
    trains: ClassVar[bool] = False  # nothing to learn: the kinds machinery stores an empty model

    def __init__(self, **params: Any) -> None:
        if params.get("keypoints"):  # stored in kind.json: must not depend on the working directory
            params["keypoints"] = os.path.abspath(os.path.expanduser(str(params["keypoints"])))
        self.weights: np.ndarray | None = None  # None: uniform; set per search by use_weights()
        super().__init__(**params)

    def validate(self) -> None:
        if self.config["pool"] not in POOLS:
            raise ConfigError(f"{self.label()}: pool must be one of {', '.join(POOLS)}, got {self.config['pool']!r}")
        side = self.check("side", integer, minimum=0, maximum=4096)
        if 0 < side < 32:
            raise ConfigError(f"{self.label()}: side must be 0 (the index's max_side) or from 32 to 4096, got {side}")
        extra = {"keypoints": self.config["keypoints"]} if self.config["keypoints"] else {}
        if self.config["layout"] != "keypoints" and extra:
            raise ConfigError(f"{self.label()}: keypoints= goes with layout=keypoints, not {self.config['layout']!r}")
        self.layout: Layout = make_layout(self.config["layout"], **extra)

    @property
    def type_name(self) -> str:
        """The type the stored kind records."""
        return self.name

    @property
    def names(self) -> list[str]:
        return self.layout.names()

    # --- what the kinds machinery calls (see matchlens.classic.base.Encoding) ------------------
    def feature_source(self, index: Any) -> "RegionalSource":
        """The per-image input: region descriptors computed with the index's network."""
        return RegionalSource(index, self)

    def train(self, sample: np.ndarray, advance: Any = None) -> dict[str, np.ndarray]:
        return {}

    def train_steps(self) -> int:
        return 0

    def load_model(self, arrays: dict[str, np.ndarray]) -> None:
        """Nothing to load: the model is the index's own network."""

    def encode(self, regions: np.ndarray) -> dict[str, np.ndarray]:
        """The stored code: (R, d) float16 (half the bytes; cosines change by < 1e-3)."""
        return {"vectors": np.asarray(regions, np.float16)}

    def encode_query(self, regions: np.ndarray) -> dict[str, np.ndarray]:
        return {"vectors": np.asarray(regions, np.float32)}

    def code_template(self) -> dict[str, np.ndarray]:
        return {"vectors": np.zeros((0, 0), np.float16)}

    def build(self, codes: Any) -> dict[str, np.ndarray]:
        return {}

    def prepare(self, codes: Any, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return data

    def scores(self, codes: Any, data: dict[str, np.ndarray], query: dict[str, np.ndarray]) -> np.ndarray:
        """Σ_r λ_r cos of the query to every image (λ: :attr:`weights`, else uniform)."""
        flat = codes.arrays["vectors"]
        return chunked_scores(flat, len(codes), query["vectors"], self.region_weights())

    def region_weights(self) -> np.ndarray:
        """The λ in use (uniform unless a search set others)."""
        return self.weights if self.weights is not None else uniform(len(self.names))


def is_regional(type_name: Any) -> bool:
    """Whether a stored kind's type is a regional encoding (the registry is the only list of types)."""
    return isinstance(type_name, str) and type_name in ENCODINGS and issubclass(ENCODINGS.get(type_name),
                                                                                 RegionalEncoding)

def chunked_scores(flat: np.ndarray, n: int, query: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ λ cos over ``n`` images stored as (n·R, d) rows, a chunk of images at a time."""
    regions = len(weights)
    if n == 0:
        return np.zeros(0, np.float32)
    cube = flat.reshape(n, regions, -1)
    return np.concatenate([weighted_scores(cube[i:i + _CHUNK], query, weights) for i in range(0, n, _CHUNK)])


# ------------------------------------------------------------------------------------------------
# Describing images


_QUERIES: dict[tuple, np.ndarray] = {}
_LOCK = threading.Lock()


def index_encoder(store: Any) -> Any:
    """The index's query encoder, shared in the process (one network load)."""
    return shared_query_encoder(store.spec, store.model_dir())


class RegionalSource:
    """Region descriptors of indexed images (``many``) and of queries (``query``, memoised)."""

    def __init__(self, index: Any, encoding: RegionalEncoding) -> None:
        self.store = getattr(index, "store", index)  # a matchlens.Index or its VectorIndex
        self.encoding = encoding

    @property
    def extractor(self) -> Any:
        return index_encoder(self.store)

    @property
    def side(self) -> int:
        """The longest side the regional map is computed at."""
        return int(self.encoding.params["side"]) or self.store.spec.max_side

    def load(self, source: Any, box: Sequence[float] | None = None) -> Image.Image:
        """The image as the regions see it: cropped to ``box``; a whole image decoded at (at least)
        twice the regional side, as the extractor decodes for its own side (see extract.preprocess)."""
        if box is not None:
            return crop_to_box(load_image(source), box)
        return load_image(source, max_side=2 * round(self.side * max(self.store.spec.scales)))

    def describe(self, source: Any, box: Sequence[float] | None = None) -> np.ndarray:
        """(R, d) of an image (path, bytes, PIL image or array), relative to ``box`` when given."""
        image = self.load(source, box)
        return regional_descriptors(self.extractor, image, self.boxes(source, image, box), self.encoding.params["pool"],
                                    self.side)

    def boxes(self, source: Any, image: Image.Image | None = None, box: Sequence[float] | None = None) -> list[Box]:
        """The relative boxes of one image (keypoints layouts need its path and full size)."""
        if not isinstance(source, (str, os.PathLike)):
            return self.encoding.layout.boxes()
        size = image_size(source) if self.encoding.params["layout"] == "keypoints" else None
        return self.encoding.layout.boxes(os.fspath(source), size, box)

    def many(self, items: Sequence[tuple[str, str]],
             advance: Callable[[int], None] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(position, (R, d))`` for ``(sha256, path)`` items; an unreadable file gets zeros
        (cosine 0 with everything), logged."""
        for i, (_, path) in enumerate(items):
            try:
                regions = self.describe(path)
            except MatchlensError as exc:
                log.warning("no regional descriptors for %s: %s", path, exc)
                regions = np.zeros((len(self.encoding.names), self.extractor.dim), np.float32)
            yield i, regions
            if advance:
                advance(1)

    def query(self, source: Any, box: Sequence[float] | None = None) -> np.ndarray:
        """(R, d) of a query, memoised (a search and its per-result display share it)."""
        key = _memo_key(source, box)
        if key is not None:
            key = (key, json.dumps(self.encoding.params(), sort_keys=True), self.store.spec.fingerprint())
            with _LOCK:
                hit = _QUERIES.get(key)
            if hit is not None:
                return hit
        regions = self.describe(source, box)
        if key is not None:
            with _LOCK:
                if len(_QUERIES) >= _QUERY_MEMO:
                    _QUERIES.clear()
                _QUERIES[key] = regions
        return regions


def _memo_key(source: Any, box: Sequence[float] | None) -> tuple | None:
    """A file by path, size and time; in-memory queries (the service's decoded uploads) by content."""
    frame = None if box is None else tuple(float(v) for v in box)
    if isinstance(source, Image.Image):
        return ("pixels", source.size, source.mode, hashlib.sha1(source.tobytes()).hexdigest(), frame)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return ("bytes", hashlib.sha1(bytes(source)).hexdigest(), frame)
    if isinstance(source, np.ndarray):
        return ("array", source.shape, str(source.dtype), hashlib.sha1(np.ascontiguousarray(source).tobytes()).hexdigest(), frame)
    return file_memo_key(source, box)


# ------------------------------------------------------------------------------------------------
# Reading a stored kind


class RegionalKind:
    """A stored regional kind opened for region-by-region comparison (see :func:`open_regional`)."""

    def __init__(self, store: Any, name: str, encoding: RegionalEncoding, vectors: np.ndarray,
                 positions: np.ndarray) -> None:
        self.store, self.name, self.encoding = store, name, encoding
        self._vectors = vectors        # (m, R, d) float16, memory-mapped
        self._positions = positions    # index row → stored position, -1: not stored yet
        self._fresh: dict[int, np.ndarray] = {}
        self.source = RegionalSource(store, encoding)

    @property
    def names(self) -> list[str]:
        """Region names, in descriptor-row order."""
        return self.encoding.names

    @property
    def labels(self) -> list[str]:
        """Region names as verdicts write them (``left sleeve``)."""
        return [region_label(n) for n in self.names]

    @property
    def layout(self) -> str:
        return str(self.encoding.params["layout"])

    @property
    def size(self) -> int:
        return len(self._positions)

    def query_code(self, image_or_path: Any, box: Sequence[float] | None = None) -> np.ndarray:
        """(R, d) region descriptors of a query (path, bytes, PIL image or array; ``box`` in its pixels)."""
        return self.source.query(image_or_path, box)

    def vectors(self, row: int) -> np.ndarray:
        """(R, d) float32 region descriptors of the indexed image at ``row``."""
        if not 0 <= row < self.size:
            raise IndexError_(f"row {row} is outside the index ({self.size} images)")
        position = int(self._positions[row])
        if position >= 0:
            return np.asarray(self._vectors[position], np.float32)
        if row not in self._fresh:  # the index changed since the kind was updated
            self._fresh[row] = self.source.describe(self.store.entry_for_row(row).path)
        return self._fresh[row]

    def similarities(self, a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
        """Per-region cosines (R,) of two (R, d) region descriptor sets (an int: that index row's)."""
        return cosines(self._code(a), self._code(b))

    def _code(self, value: np.ndarray | int) -> np.ndarray:
        return self.vectors(int(value)) if isinstance(value, (int, np.integer)) else value

    def scores(self, query_code: np.ndarray, weights: Any = None) -> np.ndarray:
        """Σ_r λ_r cos of ``query_code`` (R, d) to every indexed image, (n,) in row order.
        ``weights``: None (uniform), a sequence of R numbers or {region: λ}; normalised to sum 1."""
        w = self.weight_vector(weights)
        stored = self._positions >= 0
        out = np.empty(self.size, np.float32)
        if stored.all() and np.array_equal(self._positions, np.arange(self.size)):
            return chunked_scores(self._vectors.reshape(-1, self._vectors.shape[-1]), self.size, query_code, w)
        for row in range(self.size):  # a stale kind: stored rows by position, new ones described now
            out[row] = float(cosines(self.vectors(row), query_code) @ w)
        return out

    def weight_vector(self, weights: Any) -> np.ndarray:
        """λ as an (R,) array summing to 1."""
        if weights is None:
            return uniform(len(self.names))
        if isinstance(weights, Mapping):
            weights = [weights[n] if n in weights else _missing(n, self.names) for n in self.names]
        w = np.asarray(weights, np.float64)
        if w.shape != (len(self.names),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ConfigError(f"region weights must be {len(self.names)} numbers >= 0 with a positive sum "
                              f"(regions: {', '.join(self.names)}), got {np.asarray(weights).tolist()}")
        return (w / w.sum()).astype(np.float32)

    def read_weights(self, path: str | os.PathLike | None) -> RegionWeights:
        """A weights file (``lambdas.json``) checked against this kind's layout (uniform without one)."""
        return read_weights(path, self.names, self.layout)

    def boxes(self, row: int) -> list[Box]:
        """Relative region boxes of the indexed image at ``row`` (for drawing)."""
        return self.source.boxes(self.store.entry_for_row(row).path)

    def query_boxes(self, image_or_path: Any, box: Sequence[float] | None = None) -> list[Box]:
        """Relative region boxes of a query, in the frame of ``box`` when given."""
        return self.source.boxes(image_or_path, None, box)


def _missing(name: str, names: list[str]) -> float:
    raise ConfigError(f"region weights lack region {name!r} (regions: {', '.join(names)})")


def open_regional(index: Any, name: str = DEFAULT_NAME) -> RegionalKind:
    """Open the regional kind ``name`` of ``index`` (a ``matchlens.Index`` or its ``VectorIndex``),
    as stored (the classic kinds' reader; images added since are described on the fly).

    One-line IndexError_ when the index has no such kind or it is not a regional one."""
    store = getattr(index, "store", index)
    if name not in kind_names(store):
        raise IndexError_(f"index '{store.root}' has no regional kind {name!r}; add it with "
                          f"'matchlens encode {store.root} --kind regional --params layout=garment5'")
    encoding, codes, shas = read_stored_kind(store, name)
    if not isinstance(encoding, RegionalEncoding):
        raise IndexError_(f"kind {name!r} of index '{store.root}' is a {encoding.type_name} kind, not a regional "
                          f"one; add one with 'matchlens encode {store.root} --kind regional --params layout=garment5'")
    regions = len(encoding.names)
    flat = codes.arrays["vectors"]
    vectors = flat.reshape(len(shas), regions, -1) if len(shas) else np.zeros((0, regions, 0), np.float16)
    return RegionalKind(store, name, encoding, vectors, _positions(store, shas))


def regional_kind_names(index: Any) -> list[str]:
    """Names of the regional kinds stored with ``index`` (e.g. to offer a regional search)."""
    store = getattr(index, "store", index)
    names = []
    for name in kind_names(store):
        try:
            kind_type = describe_kind(store, name).type
        except (IndexError_, OSError, KeyError, ValueError):
            continue  # a kind being written: not offered
        if is_regional(kind_type):
            names.append(name)
    return names


def _positions(store: Any, shas: list[str]) -> np.ndarray:
    """Index row → stored position, by content hash (-1 where the kind lacks the image)."""
    where = {sha: i for i, sha in enumerate(shas)}
    return np.array([where.get(store.entry_for_row(row).sha256, -1) for row in range(store.size)], np.int64)


def use_weights(searcher: Any, weights: np.ndarray) -> int:
    """Rank the regional kinds of a search pipeline (``Index.searcher("regional")`` or a fusion
    with one) by Σ λ_r cos with ``weights``; returns how many kinds were set."""
    ranking = getattr(searcher, "ranking", None)
    count = 0
    for ranker in getattr(ranking, "rankers", []):
        encoding = getattr(getattr(ranker, "kind", None), "encoding", None)
        if isinstance(encoding, RegionalEncoding):
            encoding.weights = np.asarray(weights, np.float32)
            count += 1
    return count
