"""Regional descriptors (PS-Net, P1d): region layouts, ROI pooling on the backbone map, the regional kind.

A design copied with one or two regions changed (a new collar, a replaced print) scores low as
a whole but high region by region. This package describes an image by R region descriptors and
compares two images region by region: ``s = Σ_r λ_r cos(f_r(I), f_r(I'))`` (PS-Net eq. 1).

The public API (stable; ``matchlens.copies`` and the CLI use it)::

    from matchlens.regional import REGION_LAYOUTS, region_names, regional_descriptors, open_regional

    REGION_LAYOUTS                 # Registry: the only list of layout names
                                   #   garment5 (collar, left_sleeve, right_sleeve, chest, hem),
                                   #   grid2x2, grid3x3, keypoints (landmark-guided, from a JSON file)
    region_names("garment5")       # ['collar', 'left_sleeve', 'right_sleeve', 'chest', 'hem']

    regional_descriptors(extractor, image, boxes, pool="auto", side=None)
        # (R, d) float32, rows L2-normalised: the regions ``boxes`` (relative (x0, y0, x1, y1),
        # e.g. make_layout("garment5").boxes()) ROI-pooled on the backbone map of one decoded
        # image; ``extractor`` is the index's query encoder (``Index.extractor``)

    kind = open_regional(index, name="regional")   # a matchlens.Index or its VectorIndex
    kind.names                     # region names (row order of every (R, d) array)
    kind.labels                    # as verdicts write them ("left sleeve")
    q = kind.query_code("query.jpg", box=None)     # (R, d) of any image (path, bytes, PIL, array)
    v = kind.vectors(row)          # (R, d) of the indexed image at ``row``
    kind.similarities(q, v)        # (R,) cosines, one per region
    kind.scores(q, weights)        # (n,) Σ λ_r cos over the whole index, row order;
                                   # weights: None (uniform), R numbers or {region: λ}
    kind.read_weights("lambdas.json").for_category("tshirt")   # λ from a fit-regions file
    kind.boxes(row), kind.query_boxes("query.jpg", box)       # relative boxes, for drawing
    verdict(dict(zip(kind.names, sims)))           # "left sleeve differs, the rest matches"
    regional_kind_names(index)     # the regional kinds an index stores, e.g. ['regional']

The kind is stored with ``matchlens encode IDX --kind regional --params layout=garment5`` (or
``layout=keypoints,keypoints=points.json``; ``pool=gem|max``, ``side=PIXELS``) through the
classic kinds' machinery and kept up to date like them: opened for a search after images were
added or removed, it encodes only the new images. ``matchlens search IDX Q --regional`` ranks by
it (see docs/regional.md); ``matchlens fit-regions`` learns λ (:mod:`matchlens.regional.fit`).
"""

from matchlens.regional.descriptors import pool_regions, regional_descriptors
from matchlens.regional.kind import (RegionalEncoding, RegionalKind, is_regional, open_regional, regional_kind_names,
                                     use_weights)
from matchlens.regional.layouts import REGION_LAYOUTS, Layout, make_layout, read_keypoints, region_label, region_names
from matchlens.regional.scoring import DIFFERS_BELOW, RegionWeights, cosines, read_weights, verdict

__all__ = ["DIFFERS_BELOW", "REGION_LAYOUTS", "Layout", "RegionWeights", "RegionalEncoding",
           "RegionalKind", "cosines", "make_layout", "open_regional", "pool_regions", "read_keypoints", "read_weights",
           "region_label", "region_names", "regional_descriptors", "regional_kind_names", "is_regional",
           "use_weights", "verdict"]
