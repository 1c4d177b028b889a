"""CNN backbones (feature-map extractors) and weights loading; nothing is ever downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm is imported anywhere below

from matchlens.models.backbones import Backbone, backbone_names, load_backbone  # noqa: E402

__all__ = ["Backbone", "backbone_names", "load_backbone"]
