"""The descriptor pipeline: decode, resize, backbone, pooling, multi-scale, query boxes."""

from matchlens.extract.extractor import Described, Extractor, l2_normalize

__all__ = ["Described", "Extractor", "l2_normalize"]
