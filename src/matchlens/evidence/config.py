"""The verifier's configuration: everything needed to rebuild a model from a checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from matchlens.errors import ConfigError
from matchlens.evidence.tensor import METRICS

METRIC_NAMES = METRICS.ordered()  # the registry is the only list of them; this is the default channel order
ARCHS = ("resnet18", "conv4d")
SOURCES = ("pixels", "backbone")


@dataclass(frozen=True)
class VerifierConfig:
    """How a pair becomes a 4D tensor and which network reads it.

    Attributes:
        rows, cols: the patch grid m×n laid over each image (P0's grid size is lost; a parameter).
        patch_px: side in pixels of one patch for raw-pixel descriptors (the image is resized to
            ``cols*patch_px`` × ``rows*patch_px``), so a descriptor has ``3*patch_px²`` values.
        source: ``pixels`` (P0) or ``backbone`` (feature-map cells pooled to the grid; our extension).
        backbone: backbone name for ``source="backbone"`` (:func:`matchlens.models.load_backbone`).
        backbone_side: input side in pixels given to the backbone.
        metrics: channels of the tensor, any of cosine, euclidean, manhattan, mahalanobis.
        arch: ``resnet18`` (the tensor reshaped to (mn)×(mn)) or ``conv4d`` (4D convolutions).
        har: hypersphere attention regulation on every layer.
        shrinkage: weight of the scaled identity in the Mahalanobis covariance (0 < s <= 1); the
            covariance is estimated from the pair's own 2mn patches, far fewer than dimensions.
    """

    rows: int = 8
    cols: int = 8
    patch_px: int = 12
    source: str = "pixels"
    backbone: str = "tf_efficientnet_lite0"
    backbone_side: int = 256
    metrics: tuple[str, ...] = field(default=METRIC_NAMES)
    arch: str = "resnet18"
    har: bool = True
    shrinkage: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        for name in ("rows", "cols", "patch_px", "backbone_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"verifier: {name} must be an integer >= 1, got {value!r}")
        if self.rows * self.cols < 4:
            raise ConfigError(f"verifier: the grid {self.rows}x{self.cols} needs at least 4 patches")
        if not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise ConfigError(f"verifier: metrics must be a non-empty set, got {','.join(self.metrics)!r}")
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise ConfigError(f"verifier: unknown metric {bad[0]!r}; known: {', '.join(METRIC_NAMES)}")
        if self.arch not in ARCHS:
            raise ConfigError(f"verifier: arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.source not in SOURCES:
            raise ConfigError(f"verifier: features must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if not 0 < float(self.shrinkage) <= 1:
            raise ConfigError(f"verifier: shrinkage must be in (0, 1], got {self.shrinkage!r}")

    @property
    def patches(self) -> int:
        """m·n, the number of patches per image."""
        return self.rows * self.cols

    def to_dict(self) -> dict[str, Any]:
        """JSON/torch-safe dictionary (lists, numbers, strings)."""
        out = asdict(self)
        out["metrics"] = list(self.metrics)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VerifierConfig":
        """Rebuild from :meth:`to_dict` output; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"verifier configuration has unknown key(s) {', '.join(sorted(unknown))}")
        return cls(**data)


def parse_grid(text: str) -> tuple[int, int]:
    """``"8x8"`` → (8, 8); a one-line ConfigError otherwise."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"grid must be written ROWSxCOLS (e.g. 8x8), got {text!r}") from None
    return rows, cols
