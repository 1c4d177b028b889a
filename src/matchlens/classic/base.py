"""What every classic encoding provides, and the packed per-image storage they share.

An encoding (BoW, VLAD, ASMK) turns the local features of one image into a small per-image
*code* (a few arrays whose rows belong to that image), learns a *model* (its codebook and the
like) once from a sample of descriptors, and builds *search data* (IDF, postings, whitening)
from the codes of a whole collection. Codes are stored per image so a new index generation only
encodes the images it has not seen; search data is rebuilt from the codes, which is cheap.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from matchlens.classic.codebook import DEFAULT_NPROBE, Codebook, codebook_steps
from matchlens.classic.features import FeatureParams, LocalFeatureStore
from matchlens.components import Component
from matchlens.errors import ConfigError
from matchlens.local.features import CACHE_KIND
from matchlens.registry import Registry

__all__ = ["Encoding", "ENCODINGS", "Ragged", "SearchData"]

Advance = Callable[[int], None]
SearchData = dict[str, np.ndarray]


@dataclass
class Ragged:
    """Per-image codes packed end to end: image ``i`` owns rows ``offsets[i]:offsets[i+1]`` of
    every array in ``arrays`` (all arrays have the same number of rows)."""

    offsets: np.ndarray            # (n_images + 1,) int64
    arrays: dict[str, np.ndarray]

    @classmethod
    def pack(cls, codes: Sequence[dict[str, np.ndarray]], template: dict[str, np.ndarray]) -> "Ragged":
        """Concatenate per-image codes; ``template`` gives dtype and row shape when ``codes`` is empty."""
        lengths = [len(next(iter(code.values()))) for code in codes]
        offsets = np.zeros(len(codes) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        arrays = {}
        for key, empty in template.items():
            parts = [np.asarray(code[key], dtype=empty.dtype) for code in codes]
            arrays[key] = np.concatenate(parts) if parts else empty
        return cls(offsets, arrays)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def item(self, i: int) -> dict[str, np.ndarray]:
        """The code of image ``i`` (views, not copies)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return {key: value[a:b] for key, value in self.arrays.items()}

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def image_of_row(self) -> np.ndarray:
        """The image index of every packed row."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths())

    def nbytes(self) -> int:
        return int(self.offsets.nbytes + sum(a.nbytes for a in self.arrays.values()))


class Encoding(Component, ABC):
    """A descriptor kind built from local features. Subclasses set ``defaults`` (their registry
    name comes from ``@ENCODINGS.register``) and implement training, per-image encoding,
    search-data building and scoring. ``feature_defaults`` are accepted parameters too.

    :mod:`matchlens.classic.kinds` stores any registered class that offers this interface
    (``trains``, ``feature_source``, ``train``, ``load_model``, ``encode``, ``encode_query``,
    ``code_template``, ``build``, ``prepare``, ``scores``, ``search_params``), also one from a
    package that may not import this one (``matchlens.regional``'s, registered by the layers
    above both)."""

    kind: ClassVar[str] = "encoding"
    feature_defaults: ClassVar[dict[str, Any]] = {"max_keypoints": 2000, "max_side": 1024}
    # Parameters that only shape the search data or the query: changing them keeps model and codes.
    search_params: ClassVar[frozenset[str]] = frozenset()
    # False: nothing to learn from a sample (a kind pooled from the index's CNN, e.g. the
    # regional kind): the stored model is empty.
    trains: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        self.model: dict[str, np.ndarray] = {}
        self._codebook: Codebook | None = None
        super().__init__(**params)

    @classmethod
    def parameter_defaults(cls) -> dict[str, Any]:
        """The local-feature parameters, then the encoding's own."""
        return {**cls.feature_defaults, **cls.defaults}

    @property
    def type_name(self) -> str:
        """The registry name (what the stored kind records as its type)."""
        return self.name

    # --- configuration ---------------------------------------------------------------------
    def validate(self) -> None:
        """Check ``self.params`` (one-line ConfigError); override and call super()."""
        self.feature_params  # noqa: B018 — FeatureParams validates its own fields

    @property
    def feature_params(self) -> FeatureParams:
        """How this encoding's local features are extracted."""
        keys = ("max_keypoints", "max_side", "dense", "dense_step", "dense_sizes")
        given = {k: self.params[k] for k in keys if k in self.params}
        if isinstance(given.get("dense_sizes"), str):
            given["dense_sizes"] = tuple(int(s) for s in given["dense_sizes"].split("/") if s)
        elif "dense_sizes" in given:
            given["dense_sizes"] = tuple(given["dense_sizes"])
        if "dense" in given:
            given["dense"] = bool(given["dense"])
        return FeatureParams(**given)

    def feature_source(self, index: Any) -> Any:
        """Where the input of :meth:`encode` comes from: ``many(items, advance)`` yields
        ``(position, input)`` for ``(sha256, path)`` items, ``query(source, box)`` a query's.
        Here: RootSIFT, cached in the index's ``cache/local_features`` (not when read-only)."""
        folder = Path(index.root) / "cache" / CACHE_KIND
        try:
            folder.mkdir(parents=True, exist_ok=True)
            writable = os.access(folder, os.W_OK)
        except OSError:
            writable = False
        return LocalFeatureStore(folder if writable else None, self.feature_params)

    def sample_size(self, n_images: int) -> int:
        """How many descriptors to learn the model from."""
        return int(self.params.get("sample", 200_000))

    # --- model -----------------------------------------------------------------------------
    @abstractmethod
    def train(self, sample: np.ndarray, advance: Advance | None = None) -> dict[str, np.ndarray]:
        """Learn the model (codebook, projections) from descriptors (n, 128); sets and returns it."""

    def train_steps(self) -> int:
        """Progress steps :meth:`train` reports (k-means iterations or sub-clusterings)."""
        return codebook_steps(int(self.params["k"]), int(self.params["niter"]))

    def load_model(self, arrays: dict[str, np.ndarray]) -> None:
        """Use a model read back from disk."""
        self.model = dict(arrays)
        self._codebook = None

    @property
    def codebook(self) -> Codebook:
        """The visual words of the model (``model["centroids"]``), with their assignment index."""
        if self._codebook is None:
            if "centroids" not in self.model:
                raise ConfigError(f"{self.label()} has no trained codebook")
            self._codebook = Codebook(self.model["centroids"], self.model.get("coarse"), self.model.get("parents"),
                                      nprobe=int(self.params.get("nprobe", DEFAULT_NPROBE)))
        return self._codebook

    # --- per image -----------------------------------------------------------------------------
    @abstractmethod
    def encode(self, features: Any) -> dict[str, np.ndarray]:
        """The stored code of one database image, from the input :meth:`feature_source` gives
        (LocalFeatures for the RootSIFT kinds, region descriptors for the regional kind)."""

    @abstractmethod
    def code_template(self) -> dict[str, np.ndarray]:
        """Empty arrays with the dtype and row shape of a code."""

    def encode_query(self, features: Any) -> dict[str, np.ndarray]:
        """The code of a query (the database code unless the method treats queries differently)."""
        return self.encode(features)

    # --- collection ------------------------------------------------------------------------------
    def build(self, codes: Ragged) -> SearchData:
        """Search data derived from all codes that is worth storing (e.g. a fitted whitening)."""
        return {}

    @abstractmethod
    def scores(self, codes: Ragged, data: SearchData, query: dict[str, np.ndarray]) -> np.ndarray:
        """Similarity of the query code to every image, (n_images,) float32, higher is better."""

    def prepare(self, codes: Ragged, data: SearchData) -> SearchData:
        """Search structures computed when a kind is opened (not stored): postings, IDF."""
        return data


ENCODINGS: Registry[type[Encoding]] = Registry("encoding")
