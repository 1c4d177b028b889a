"""The descriptor pipeline: decode, resize, backbone, pooling, multi-scale, query boxes.

Importing this package imports no torch, timm or torchvision (tests/test_light_encoder.py checks):
the Extractor imports them when one is built, and queries against an index that carries its
query model (:func:`write_query_model`) are described by :func:`open_query_encoder`'s torch-free
:class:`LightEncoder`.
"""

from matchlens.extract.extractor import Described, Extractor, l2_normalize
from matchlens.extract.light import (LightEncoder, open_query_encoder, read_query_model, shared_query_encoder,
                                     write_query_model)

__all__ = ["Described", "Extractor", "LightEncoder", "l2_normalize", "open_query_encoder", "read_query_model",
           "shared_query_encoder", "write_query_model"]
