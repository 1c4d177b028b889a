"""The pipeline spec: everything that decides what a descriptor is, validated, hashable, storable.

An index stores its spec in its manifest and refuses queries made with any other spec, so two
descriptors are only ever compared when they come from the same backbone, weights, input size,
scales, pooling and whitening.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from matchlens.errors import ConfigError
from matchlens.pooling.specs import POOLINGS
from matchlens.registry import Registry
from matchlens.whitening import WHITENINGS

DEFAULT_BACKBONE = "tf_efficientnet_lite0"


def _poolings() -> Registry:
    """The pooling registry (torch-free)."""
    return POOLINGS


def _whitenings() -> Registry:
    """The whitening registry (``lw``: learned from pairs by `matchlens train`)."""
    return WHITENINGS


def __getattr__(name: str) -> Any:
    """``POOLING_NAMES`` / ``WHITENING_NAMES``: read from the registries (kept for old imports)."""
    if name == "POOLING_NAMES":
        return tuple(_poolings().names())
    if name == "WHITENING_NAMES":
        return tuple(_whitenings().names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class PipelineSpec:
    """What turns an image into a descriptor.

    ``max_side`` is the longest image side (pixels) at scale 1; each scale in ``scales`` resizes
    to ``round(max_side * scale)`` keeping the aspect ratio. Per-scale descriptors are
    L2-normalised, summed and L2-normalised again. ``whitening_source`` is ``"collection"``
    (learned on the indexed images, no labels used) or a folder of other images.
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    weights_id: str = ""
    max_side: int = 640
    scales: tuple[float, ...] = (1.0,)
    pooling: str = "gem"
    pooling_params: Mapping[str, Any] = field(default_factory=lambda: {"p": 3.0})
    whitening: str = "none"
    whitening_params: Mapping[str, Any] = field(default_factory=dict)
    whitening_source: str = "collection"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "pooling_params", dict(self.pooling_params))
        object.__setattr__(self, "whitening_params", dict(self.whitening_params))
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.max_side, int) or not 32 <= self.max_side <= 4096:
            raise ConfigError(f"max_side must be an integer from 32 to 4096, got {self.max_side!r}")
        if not self.scales or any(not (0.1 <= s <= 4.0) or math.isnan(s) for s in self.scales):
            raise ConfigError(f"scales must be non-empty, each from 0.1 to 4, got {self.scales}")
        for value, registry in ((self.pooling, _poolings()), (self.whitening, _whitenings())):
            if value not in registry.names():  # exact (lower-case) names: the spec is hashed as written
                raise ConfigError(f"unknown {registry.kind} {value!r}; choose one of: {registry.choices()}")
        # A pooling with a file of its own records which file (its id), so the spec names the weights.
        object.__setattr__(self, "pooling_params", _poolings().get(self.pooling).pin(self.pooling_params))
        if self.whitening == "lw" and not self.weights:
            raise ConfigError("whitening 'lw' needs --weights CHECKPOINT from 'matchlens train' (Lw is stored there)")

    # --- identity -------------------------------------------------------------------------
    def descriptor_fields(self) -> dict[str, Any]:
        """The fields that change the raw (pre-whitening) descriptor of an image."""
        return {
            "backbone": self.backbone,
            "weights_id": self.weights_id,
            "max_side": self.max_side,
            "scales": list(self.scales),
            "pooling": self.pooling,
            "pooling_params": dict(sorted(self.pooling_params.items())),
        }

    def raw_fingerprint(self) -> str:
        """Hash of :meth:`descriptor_fields`: equal raw fingerprints mean reusable descriptors."""
        return _hash(self.descriptor_fields())

    def fingerprint(self) -> str:
        """Hash of everything that makes two descriptors comparable (raw fields + whitening)."""
        return _hash(
            {
                **self.descriptor_fields(),
                "whitening": self.whitening,
                "whitening_params": dict(sorted(self.whitening_params.items())),
                "whitening_source": self.whitening_source,
            }
        )

    def describe(self) -> str:
        """A short human-readable summary, e.g. ``tf_efficientnet_lite0 640px ×(1,0.707) gem(p=3) pcaw``."""
        scales = ",".join(f"{s:g}" for s in self.scales)
        params = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.pooling_params.items())
        pool = f"{self.pooling}({params})" if params else self.pooling
        white = self.whitening
        if self.whitening_params:
            white += "(" + ",".join(f"{k}={v}" for k, v in self.whitening_params.items()) + ")"
        return f"{self.backbone} {self.max_side}px x({scales}) {pool} {white}"

    # --- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in the index manifest)."""
        data = dataclasses.asdict(self)
        data["scales"] = list(self.scales)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PipelineSpec":
        """Inverse of :meth:`to_dict`; unknown keys are a ConfigError (a foreign or newer manifest)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown pipeline spec fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        if "scales" in values:
            values["scales"] = tuple(values["scales"])
        return cls(**values)

    def replace(self, **changes: Any) -> "PipelineSpec":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


MULTI_SCALES = (1.0, 2**-0.5, 0.5)

# Named presets: the useful combinations, measured by benchmarks/quality.py (README table).
# PCAw here is partial (eigenvalue power 0.25, 256-d): full whitening (power 0.5) learned on a
# collection of about a thousand images cost 20-30 mAP points on oxford5k_subset.
PARTIAL_PCAW = {"dim": 256, "power": 0.25}
PRESETS: dict[str, dict[str, Any]] = {
    "mac": {"pooling": "mac", "pooling_params": {}},
    "spoc": {"pooling": "spoc", "pooling_params": {}},
    "gem": {"pooling": "gem", "pooling_params": {"p": 3.0}},
    "gem-ms": {"pooling": "gem", "pooling_params": {"p": 3.0}, "scales": MULTI_SCALES},
    "gem-ms-pcaw": {"pooling": "gem", "pooling_params": {"p": 3.0}, "scales": MULTI_SCALES,
                    "whitening": "pcaw", "whitening_params": PARTIAL_PCAW},
    "rmac": {"pooling": "rmac", "pooling_params": {"levels": 3}},
    "rmac-ms": {"pooling": "rmac", "pooling_params": {"levels": 3}, "scales": MULTI_SCALES},
    "rmac-ms-pcaw": {"pooling": "rmac", "pooling_params": {"levels": 3}, "scales": MULTI_SCALES,
                     "whitening": "pcaw", "whitening_params": PARTIAL_PCAW},
    "crow": {"pooling": "crow", "pooling_params": {}},
    "crow-ms": {"pooling": "crow", "pooling_params": {}, "scales": MULTI_SCALES},
}
# The best measured on oxford5k_subset (whole-image and cropped queries) at its cost: see README.
DEFAULT_PRESET = "rmac-ms"
# The default preset's pipeline (pooling, scales, whitening, 640 px) on the larger embedded
# backbones, whose weights come with the ``lite`` extra; measured in docs/backbones.md.
PRESETS["lite1"] = {**PRESETS[DEFAULT_PRESET], "backbone": "tf_efficientnet_lite1"}
PRESETS["lite2"] = {**PRESETS[DEFAULT_PRESET], "backbone": "tf_efficientnet_lite2"}
# The same pipeline on SSCD (an int8 ONNX ResNet-50 trained for copy detection), from the
# optional ``sscd`` extra (proprietary licence) or --weights PATH/sscd.onnx; ONNX Runtime only.
PRESETS["sscd"] = {**PRESETS[DEFAULT_PRESET], "backbone": "sscd"}


def preset_names() -> list[str]:
    """Names accepted by ``--preset`` (``default`` is an alias of the best measured preset)."""
    return ["default", *sorted(PRESETS)]


def spec_from_preset(name: str = "default", **overrides: Any) -> PipelineSpec:
    """Build a spec from a preset name plus explicit overrides (``None`` overrides are ignored)."""
    key = DEFAULT_PRESET if name == "default" else name
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    values = dict(PRESETS[key])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PipelineSpec(**values)


def parse_params(text: str | None) -> dict[str, Any]:
    """Parse ``"p=3,levels=2"`` into ``{"p": 3.0, "levels": 2}`` (ints stay ints)."""
    if not text:
        return {}
    params: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad parameter {item!r}; write name=value[,name=value]")
        params[key.strip()] = parse_value(value.strip())
    return params


def parse_value(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_scales(text: str | None) -> tuple[float, ...] | None:
    """Parse ``"1,0.707,0.5"`` (or ``"ms"`` for the standard 1, 1/√2, 1/2); None: not given."""
    if text is None:
        return None
    if not text.strip():  # `--scales ""` is a mistake, not "the default scales"
        raise ConfigError("empty scales; write e.g. 1,0.707,0.5 (or ms), or leave --scales out")
    if text.strip() == "ms":
        return MULTI_SCALES
    try:
        return tuple(float(s) for s in text.split(","))
    except ValueError:
        raise ConfigError(f"bad scales {text!r}; write e.g. 1,0.707,0.5") from None


def resolve_whitening_source(source: str) -> str:
    """``collection`` or an existing folder (made absolute so the spec means the same anywhere)."""
    if source == "collection":
        return source
    path = Path(source).expanduser()
    if not path.is_dir():
        raise ConfigError(f"whitening source {source!r} is not a folder (or say 'collection')")
    return str(path.resolve())
