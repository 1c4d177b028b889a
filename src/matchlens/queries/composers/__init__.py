"""Composers: a reference image's descriptor and a modification text's vector → a query vector in
the index's own descriptor space (TIRG and its baselines), one module per composer.

Every module of this package registers its class in :data:`COMPOSERS` when imported (no list to
edit): ``tirg`` (gated residual), ``film``, ``concat``, ``image`` (image only), ``text`` (text only).
"""

import sys

from matchlens.queries.composers.base import COMPOSERS, Composer, make_composer
from matchlens.registry import import_submodules

import_submodules(sys.modules[__name__])

__all__ = ["COMPOSERS", "Composer", "make_composer"]
