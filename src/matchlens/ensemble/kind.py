"""The ensemble descriptor kind: the index's own descriptor and a second pipeline's, concatenated
and PCA-whitened (P4), stored beside an index like the classic and regional kinds.

Storage and updating are :mod:`matchlens.classic.kinds`' (``DIR/kinds/NAME/``): the per-image
*code* is the second pipeline's raw descriptor (images already encoded keep theirs when the
index gains or loses images); the *search data*, rebuilt for every index generation, is the PCA
learned without labels on the concatenation [index's raw descriptor, second descriptor] of the
whole collection (:class:`~matchlens.ensemble.vectors.Ensemble`) and the collection's whitened
vectors. The first part is read from the index (``descriptors()``), never recomputed, so the
kind's search data needs the index as well as the codes: :meth:`EnsembleEncoding.build_with_index`.

A query is described by both pipelines (the index's own query encoder for the first part),
whitened the same way and scored by inner product with the stored vectors.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np

from matchlens.classic.base import ENCODINGS, Encoding, Ragged, SearchData
from matchlens.components import in_range, integer, positive_float
from matchlens.config import PARTIAL_PCAW, PipelineSpec, spec_from_preset
from matchlens.errors import ConfigError, IndexError_
from matchlens.extract import Extractor, shared_query_encoder
from matchlens.ensemble.vectors import Ensemble
from matchlens.pooling.specs import POOLINGS

__all__ = ["EnsembleEncoding", "EnsembleSource", "second_spec", "same_pipeline"]

log = logging.getLogger(__name__)

DEFAULT_NAME = "ensemble"
# The presets' partial PCAw: full whitening (power 0.5) at the width of the concatenation, learned
# on the 1009 images of oxford5k_subset, fell to 26.5 mAP from the parts' 60.5/60.8 (full-image
# queries); 256-d at power 0.25 gave 62.3 (docs/contrastive.md, "Ensembles as an index kind").
AUTO_DIM, DEFAULT_POWER = int(PARTIAL_PCAW["dim"]), float(PARTIAL_PCAW["power"])


def second_spec(params: dict[str, Any]) -> PipelineSpec:
    """The second pipeline of an ensemble kind's parameters: ``preset``'s pipeline, or the plain
    one (GeM, one scale, 640 px) with ``backbone``, then ``weights``/``max_side``/``pooling``
    given over it. Never whitened: the ensemble's PCA is the whitening."""
    overrides: dict[str, Any] = {"backbone": params["backbone"] or None, "weights": params["weights"] or None,
                                 "max_side": params["max_side"] or None, "whitening": "none", "whitening_params": {}}
    if params["pooling"]:
        overrides.update(pooling=params["pooling"], pooling_params={})  # that pooling's own defaults
    if params["preset"]:
        return spec_from_preset(params["preset"], **overrides)
    return PipelineSpec(**{key: value for key, value in overrides.items() if value is not None})


def same_pipeline(a: PipelineSpec, b: PipelineSpec) -> bool:
    """Whether two specs give the same raw descriptor (weights compared by file, pooling
    parameters with their defaults filled in; the weights id is only known once loaded)."""
    return _identity(a) == _identity(b)


def _identity(spec: PipelineSpec) -> tuple:
    pooling = {**POOLINGS.get(spec.pooling).defaults, **spec.pooling_params}
    weights = os.path.abspath(os.path.expanduser(spec.weights)) if spec.weights else None
    return spec.backbone, weights, spec.max_side, tuple(spec.scales), spec.pooling, sorted(pooling.items())


@ENCODINGS.register("ensemble")
class EnsembleEncoding(Encoding):
    """The index's descriptor and a second pipeline's, concatenated, PCA-whitened (P4).

    Parameters: the second pipeline — ``preset`` (a ``--preset`` name) and/or ``backbone`` (a
    backbone name), with ``weights`` (a checkpoint file), ``max_side`` (0: the preset's, else
    640) and ``pooling`` over it; the ensemble — ``dim`` (PCA dimension; 0: 256, at most the
    concatenation's width and the number of images - 1), ``power`` (eigenvalue power; 0.25:
    partial whitening like the ``-pcaw`` presets, 0.5: full) and ``weight`` (weight of the
    second part; the index's part has 1).
    """

    kind: ClassVar[str] = "encoding"
    feature_defaults: ClassVar[dict[str, Any]] = {}  # no local features: both parts are CNN descriptors
    defaults: ClassVar[dict[str, Any]] = {"preset": "", "backbone": "", "weights": "", "max_side": 0, "pooling": "",
                                          "dim": 0, "power": DEFAULT_POWER, "weight": 1.0}
    # The PCA is rebuilt from the stored codes: these change the search data only.
    search_params: ClassVar[frozenset[str]] = frozenset({"dim", "power", "weight"})
    trains: ClassVar[bool] = False  # the PCA is search data (rebuilt per generation), not a model

    def __init__(self, **params: Any) -> None:
        if isinstance(params.get("weights"), str) and params["weights"]:  # kind.json must not depend on the cwd
            params["weights"] = os.path.abspath(os.path.expanduser(params["weights"]))
        self.ensemble: Ensemble | None = None  # set by prepare() when a stored kind is opened
        super().__init__(**params)

    def validate(self) -> None:
        for key in ("preset", "backbone", "weights", "pooling"):
            if not isinstance(self.config[key], str):
                raise ConfigError(f"{self.label()}: {key} must be a name, got {self.config[key]!r}")
        side = self.check("max_side", integer, minimum=0, maximum=4096)
        if 0 < side < 32:
            raise ConfigError(f"{self.label()}: max_side must be 0 (the preset's) or from 32 to 4096, got {side}")
        self.check("dim", integer, minimum=0)
        self.check("power", in_range, 0.0, 0.5)
        self.check("weight", positive_float)
        # Unknown preset or pooling: one-line ConfigError. Neither preset nor backbone is refused
        # when the kind is built (check_index), not here: `--params dim=64` changes a stored kind.
        given = self.config["preset"] or self.config["backbone"]
        self._spec = second_spec(self.config) if given else None

    @property
    def spec(self) -> PipelineSpec:
        """The second pipeline."""
        if self._spec is None:
            raise ConfigError(f"{self.label()} needs its second pipeline: preset=NAME (e.g. lite1) or backbone=NAME")
        return self._spec

    @property
    def part_weights(self) -> list[float]:
        """The parts' weights: the index's descriptor 1, the second ``weight``."""
        return [1.0, float(self.params["weight"])]

    # --- what the kinds machinery calls (see matchlens.classic.base.Encoding) ------------------
    def feature_source(self, index: Any) -> "EnsembleSource":
        """The per-image input: the second pipeline's raw descriptor (queries: both pipelines')."""
        self.check_index(index)
        return EnsembleSource(index, self)

    def check_index(self, index: Any) -> None:
        """Refuse (one line) a second pipeline equal to the index's or a collection too small for the PCA."""
        store = getattr(index, "store", index)
        if same_pipeline(store.spec, self.spec):
            raise ConfigError(f"{self.label()}: the second pipeline ({self.spec.describe()}) is the index's own; "
                              "choose another preset, backbone, weights, max_side or pooling")
        self.pca_dim(None, store.size)

    def pca_dim(self, width: int | None, images: int) -> int:
        """The PCA dimension for ``images`` images of concatenation ``width`` (None: not known yet)."""
        dim = int(self.params["dim"])
        if images < 2 or dim + 1 > images:
            need = max(2, dim + 1)
            raise ConfigError(f"{self.label()}: the PCA{f' to dim={dim}' if dim else ''} needs at least {need} "
                              f"images; the index has {images}")
        if width is not None and dim > width:
            raise ConfigError(f"{self.label()}: dim={dim} exceeds the concatenation's width {width}")
        return dim or min(AUTO_DIM, width or AUTO_DIM, images - 1)

    def train(self, sample: np.ndarray, advance: Any = None) -> dict[str, np.ndarray]:
        return {}

    def train_steps(self) -> int:
        return 0

    def load_model(self, arrays: dict[str, np.ndarray]) -> None:
        """Nothing to load: the PCA is search data."""

    def encode(self, descriptor: np.ndarray) -> dict[str, np.ndarray]:
        """The stored code: the second pipeline's raw descriptor, (1, d) float32."""
        return {"vectors": np.asarray(descriptor, np.float32).reshape(1, -1)}

    def encode_query(self, pair: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        """Both parts of a query: the index's raw descriptor and the second pipeline's."""
        first, second = pair
        return {"first": np.asarray(first, np.float32).reshape(1, -1),
                "second": np.asarray(second, np.float32).reshape(1, -1)}

    def code_template(self) -> dict[str, np.ndarray]:
        return {"vectors": np.zeros((0, 0), np.float32)}  # an empty collection: the PCA refuses it

    def build(self, codes: Ragged) -> SearchData:
        raise IndexError_(f"{self.label()} needs the index's own descriptors to build its search data")

    def build_with_index(self, index: Any, codes: Ragged) -> SearchData:
        """The PCA learned on [index's raw descriptors, codes] and the collection's whitened vectors
        (``vectors``, (n, dim) float32, row order of the index)."""
        store = getattr(index, "store", index)
        self.check_index(store)
        first = np.asarray(store.descriptors(), np.float32)
        second = np.asarray(codes.arrays["vectors"], np.float32)
        if len(first) != len(codes) or len(second) != len(codes):
            raise IndexError_(f"{self.label()}: {len(codes)} codes for {len(first)} index descriptors")
        dim = self.pca_dim(first.shape[1] + second.shape[1], len(codes))
        ensemble = Ensemble(dim, float(self.params["power"]), self.part_weights).fit([first, second])
        return {**ensemble.state(), "vectors": ensemble.transform([first, second])}

    def prepare(self, codes: Ragged, data: SearchData) -> SearchData:
        """The fitted ensemble, kept for the queries of this opened kind."""
        self.ensemble = Ensemble.from_state(data, float(self.params["power"]), self.part_weights)
        return data

    def scores(self, codes: Ragged, data: SearchData, query: dict[str, np.ndarray]) -> np.ndarray:
        """Inner products of the query's ensemble vector with every image's."""
        ensemble = self.ensemble or Ensemble.from_state(data, float(self.params["power"]), self.part_weights)
        vector = ensemble.transform([query["first"], query["second"]])[0]
        return np.asarray(data["vectors"], np.float32) @ vector


# ------------------------------------------------------------------------------------------------
# Describing images


_ENCODERS: dict[tuple[str, ...], Any] = {}
_LOCK = threading.Lock()


def index_encoder(store: Any) -> Any:
    """The index's query encoder, shared in the process (one network load)."""
    return shared_query_encoder(store.spec, store.model_dir())


def second_extractor(spec: PipelineSpec) -> Extractor:
    """The second pipeline's Extractor, shared in the process (unknown backbone: one-line ConfigError)."""
    key = ("second", spec.fingerprint(), spec.weights or "")
    with _LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = Extractor(spec)
        return _ENCODERS[key]


class EnsembleSource:
    """The second pipeline's descriptors of indexed images (``many``); both pipelines' of a query."""

    def __init__(self, index: Any, encoding: EnsembleEncoding) -> None:
        self.store = getattr(index, "store", index)  # a matchlens.Index or its VectorIndex
        self.encoding = encoding

    @property
    def second(self) -> Extractor:
        return second_extractor(self.encoding.spec)

    def many(self, items: Sequence[tuple[str, str]],
             advance: Callable[[int], None] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(position, (d,))`` for ``(sha256, path)`` items; a file that cannot be read now gets
        zeros (its ensemble vector is then the index's part alone), logged."""
        extractor = self.second
        for i, item in enumerate(extractor.describe_files([path for _, path in items])):
            vector = item.vector
            if vector is None:
                log.warning("no %s descriptor for %s: %s", self.encoding.spec.describe(), item.path, item.error)
                vector = np.zeros(extractor.dim, np.float32)
            yield i, vector
            if advance:
                advance(1)

    def query(self, source: Any, box: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The raw descriptors of a query (path, bytes, PIL image or array) by the index's pipeline
        and by the second one, cropped to ``box`` when given."""
        return index_encoder(self.store).describe(source, box), self.second.describe(source, box)
