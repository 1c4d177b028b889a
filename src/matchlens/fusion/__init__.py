"""Late fusion of several descriptor kinds of one index (CNN global descriptor, BoW, VLAD, ASMK).

``FUSIONS`` maps operator names (``ghm``, ``mean_power``, ``min_max``, ``min``, ``max``, ``mean``,
``round_robin``) to implementations; :func:`parse_fusion` reads an expression such as
``cnn+asmk:ghm``; :class:`matchlens.pipeline.SearchPipeline` ranks by it.
"""

from matchlens.fusion.expression import CNN, FusionSpec, parse_fusion
from matchlens.fusion.normalise import NORMALISERS, normalise
from matchlens.fusion.operators import FUSIONS, Fusion, normalised_weights

__all__ = ["CNN", "FUSIONS", "NORMALISERS", "Fusion", "FusionSpec", "normalise", "normalised_weights", "parse_fusion"]
