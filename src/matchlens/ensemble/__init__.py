"""Ensembles of two pipelines (P4) as an index kind: concatenation, then PCA-whitening.

The public API::

    from matchlens.ensemble import Ensemble, concatenate, EnsembleEncoding

    concatenate([a, b], weights=[1, 1])      # (n, da + db): each part L2-normalised, × √w, L2 again
    Ensemble(dim, power=0.5, weights).fit([a, b]).transform([a, b])   # (n, dim) whitened, L2-normalised

The kind is stored with ``matchlens encode IDX --kind ensemble --params preset=lite1`` (or
``backbone=NAME[,weights=FILE][,max_side=N][,pooling=NAME]``, plus ``dim=``, ``power=``,
``weight=``) through the classic kinds' machinery and kept up to date like them (``matchlens
encode IDX`` after images were added or removed encodes only the new ones and refits the PCA);
``matchlens search IDX Q --kind ensemble`` (or ``--fuse cnn+ensemble``) ranks by it. Importing
this package registers the kind (the search pipeline does when it opens a kind).
"""

from matchlens.ensemble.kind import EnsembleEncoding, EnsembleSource, same_pipeline, second_spec
from matchlens.ensemble.vectors import Ensemble, concatenate

__all__ = ["Ensemble", "EnsembleEncoding", "EnsembleSource", "concatenate", "same_pipeline", "second_spec"]
