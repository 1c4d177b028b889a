"""The thresholds that turn a candidate pair's evidence into a copy kind, and where they come from.

``--auto`` uses :data:`CALIBRATED` (:mod:`matchlens.copies.calibrated`, written by
``python benchmarks/copies.py --calibrate`` from a generated set of redistributable photos: the
scikit-image and scikit-learn sample images and the tests' synthetic scenes, never the evaluation
data); ``--threshold T`` replaces the global cosine floor only, the geometric and regional
thresholds stay calibrated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from matchlens.components import in_range
from matchlens.copies import calibrated

__all__ = ["CALIBRATED", "Thresholds", "thresholds_for"]


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds of :func:`~matchlens.copies.kinds.classify`.

    ``cosine_floor``: global cosine below which a kNN neighbour is not a candidate at all;
    ``exact_cosine``: cosine above which two files with different bytes are decoded and compared pixel by pixel;
    ``min_inliers`` / ``min_ratio``: matches the near-copy transform (an affine map) explains, as a count
    and as a share of the ratio-test matches; ``max_perspective``: how far a homography fitted to
    the same matches departs from that affine map (share of the matched area's diagonal) — zero for
    a copy, larger for another photograph of the same scene; ``max_residual``: median distance (px)
    of the inliers from the affine map — sub-pixel for the same pixels, larger for a picture taken
    again through a lens even square-on; ``partial_min_ratio``: the looser
    share accepted when the regional kind shows one or two replaced regions; ``region_gap``: a
    region differs when its cosine is this far below the pair's median region cosine (relative,
    since re-encoding or resizing lowers every region alike; at most ``max_differ`` may differ for
    a partial copy); ``region_agree``: the median region cosine must reach it (most regions
    agree); ``max_frame_offset``: how far the copy's frame may be from the original's (share of
    its sides) for regions to be compared at all.
    """

    cosine_floor: float
    exact_cosine: float
    min_inliers: int
    min_ratio: float
    max_perspective: float
    max_residual: float
    partial_min_ratio: float
    region_agree: float
    region_gap: float
    max_differ: int = 2
    max_frame_offset: float = 0.05

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return asdict(self)


#: The calibrated thresholds (see :mod:`matchlens.copies.calibrated` for the command and the set).
CALIBRATED = Thresholds(**calibrated.THRESHOLDS)  # type: ignore[arg-type]  # the generated dict holds floats and ints


def thresholds_for(threshold: float | None = None, base: Thresholds = CALIBRATED) -> Thresholds:
    """``base`` with its cosine floor replaced by ``threshold`` when one is given (one-line
    ConfigError when it is not a cosine in [0, 1])."""
    if threshold is None:
        return base
    floor = in_range(threshold, "duplicates: --threshold (a global cosine floor)", 0.0, 1.0)
    return replace(base, cosine_floor=floor)
