"""Classic local-feature retrieval: RootSIFT bag of words with an inverted file, VLAD / DenseVLAD
and ASMK* with Hamming embedding, each a descriptor kind stored beside an index.

Importing the package registers the encodings (``bow``, ``vlad``, ``densevlad``, ``asmk``).
"""

from matchlens.classic import asmk, bow, vlad  # noqa: F401  (registration)
from matchlens.classic.base import ENCODINGS, Encoding, Ragged
from matchlens.classic.kinds import KindInfo, OpenKind, encode_kind, kind_names, list_kinds, open_kind, refresh_kind

__all__ = ["ENCODINGS", "Encoding", "KindInfo", "OpenKind", "Ragged", "encode_kind", "kind_names", "list_kinds",
           "open_kind", "refresh_kind"]
