"""Late fusion of several descriptor kinds of one index (CNN global descriptor, BoW, VLAD, ASMK).

``FUSIONS`` maps operator names (``ghm``, ``mean_power``, ``min_max``, ``min``, ``max``, ``mean``,
``round_robin``) to implementations; ``MultiKindSearcher`` ranks an index by an expression such
as ``cnn+asmk:ghm``.
"""

from matchlens.fusion.normalise import NORMALISERS, normalise
from matchlens.fusion.operators import FUSIONS, Fusion, normalised_weights
from matchlens.fusion.search import FusionSpec, MultiKindSearcher, parse_fusion

__all__ = ["FUSIONS", "NORMALISERS", "Fusion", "FusionSpec", "MultiKindSearcher", "normalise", "normalised_weights",
           "parse_fusion"]
