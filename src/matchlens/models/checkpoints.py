"""Self-supervised checkpoint layouts (P4): MoCo, SimCLR, BYOL, DINO and ``backbone.`` wrappers
turned into the plain backbone state dict the builders of :mod:`matchlens.models.backbones` load.

Self-supervised training code saves the whole learner: the encoder under a prefix
(``module.encoder_q.`` for MoCo, ``online_network.encoder.`` for BYOL, ``backbone.`` in DINO's
``teacher``/``student`` entries, ...) beside a projection head, a momentum encoder, a queue and the
optimizer. A :class:`Layout` says where the encoder is and which of its tensors are the head; the
registry :data:`LAYOUTS` is the one list of them. ``--weights FILE`` detects the layout
(:func:`detect_layout`, the first of :data:`LAYOUTS` in registration order that holds tensors);
``--weights FILE#LAYOUT`` names it (e.g. ``ckpt.pth#dino-student``: DINO's student, not its
teacher). Only the tensors under the encoder's prefix are kept; the head is dropped, so an
unknown architecture or missing tensor is then reported by the loader
(:func:`matchlens.models.weights.load_checked`) in one line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from matchlens.errors import WeightsError
from matchlens.models.weights import StateDict, split_layout
from matchlens.registry import Registry

__all__ = ["LAYOUTS", "Layout", "convert_checkpoint", "detect_layout", "layout_names", "split_layout"]

# Training scripts nest the learner's tensors under one of these keys (or none).
_NESTING = ("state_dict", "model", "model_state_dict", "net", "network")
# torchvision ResNet children in order: BYOL implementations keep ``nn.Sequential(*children[:-1])``.
_RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")
_POSITIONAL = re.compile(r"^(\d+)\.(.+)$")


@dataclass(frozen=True)
class Layout:
    """Where a learner keeps its encoder.

    ``sections``: top-level entries that may hold the learner (``None``: the file itself or its
    ``state_dict``/``model`` wrapper); ``prefixes``: the encoder's key prefix, the first present
    wins; ``drop``: heads under that prefix (projection MLPs, classifier) that a backbone does not
    have.
    """

    description: str
    prefixes: tuple[str, ...]
    drop: tuple[str, ...] = ("fc.", "head.")
    sections: tuple[str | None, ...] = (None,)

    def find(self, content: Any) -> tuple[Mapping[str, Any], str] | None:
        """The learner's state dict and the encoder prefix it uses, or None if this is not the layout."""
        for section in self.sections:
            state = _learner(content, section)
            if state is None:
                continue
            for prefix in self.prefixes:
                if any(isinstance(k, str) and k.startswith(prefix) for k in state):
                    return state, prefix
        return None

    def encoder(self, state: Mapping[str, Any], prefix: str) -> StateDict:
        """The encoder's tensors with ``prefix`` removed and the heads dropped."""
        kept = {k[len(prefix):]: v for k, v in state.items()
                if isinstance(k, str) and k.startswith(prefix) and isinstance(v, torch.Tensor)}
        return {k: v for k, v in kept.items() if not k.startswith(self.drop)}


LAYOUTS: Registry[Layout] = Registry("checkpoint layout")
# Registration order is the detection order: specific prefixes before the generic ``backbone.``;
# SimCLR's top-level ``encoder.`` before BYOL, whose ``encoder.`` is inside online_network_state_dict.
LAYOUTS.register("moco")(Layout(
    "MoCo v1/v2 (module.encoder_q.*, fc head dropped) and v3 (module.base_encoder.*)",
    ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder.")))
LAYOUTS.register("dino")(Layout(
    "DINO checkpoint.pth: the teacher's backbone.* (head dropped)",
    ("module.backbone.", "backbone."), sections=("teacher",)))
LAYOUTS.register("dino-student")(Layout(
    "DINO checkpoint.pth: the student's backbone.* (head dropped)",
    ("module.backbone.", "backbone."), sections=("student",)))
LAYOUTS.register("simclr")(Layout(
    "SimCLR: encoder.* beside projector.* (Spijkervet), fc MLP dropped",
    ("module.encoder.", "encoder."), drop=("fc.", "projector.", "projection_head.")))
LAYOUTS.register("byol")(Layout(
    "BYOL: online_network.encoder.* (sthalles, also in online_network_state_dict) or net.* (lucidrains)",
    ("module.online_network.encoder.", "online_network.encoder.", "encoder.", "net."),
    drop=("fc.", "projection.", "projetion.", "predictor."), sections=("online_network_state_dict", None)))
LAYOUTS.register("backbone")(Layout(
    "a plain backbone.* wrapper (sthalles SimCLR, solo-learn, mmselfsup), fc/head dropped",
    ("module.backbone.", "backbone.")))


def layout_names() -> list[str]:
    """The layout names ``--weights FILE#LAYOUT`` accepts."""
    return LAYOUTS.names()


def detect_layout(content: Any) -> str | None:
    """The first registered layout that finds an encoder in ``content`` (None: a plain state dict)."""
    for name in LAYOUTS.ordered():
        if LAYOUTS.get(name).find(content) is not None:
            return name
    return None


def convert_checkpoint(content: Any, path: Path, layout: str | None = None) -> Any:
    """``content`` as ``{"state_dict": backbone tensors}`` when it is a self-supervised learner
    (``layout`` named, or detected), else unchanged (plain, cirtorch and matchlens files).

    Raises ConfigError for an unknown layout name and WeightsError when the named layout is not
    in the file or leaves no tensor.
    """
    name = layout or detect_layout(content)
    if name is None:
        return content
    spec = LAYOUTS.get(name)  # a one-line ConfigError listing the names for an unknown one
    found = spec.find(content)
    if found is None:
        raise WeightsError(f"weights file {path} is not a {name} checkpoint: no tensor under "
                           f"{' / '.join(spec.prefixes)}{_where(spec)}; its keys start with {_sample(content)}")
    state = spec.encoder(*found)
    if not state:
        raise WeightsError(f"weights file {path}: the {name} encoder under {found[1]!r} holds only head tensors "
                           f"({', '.join(spec.drop)}); pass the checkpoint of a trained encoder")
    return {"state_dict": _resnet_names(state)}


def _learner(content: Any, section: str | None) -> Mapping[str, Any] | None:
    """The mapping of tensors inside ``content[section]`` (or ``content``), through one wrapper."""
    obj = content.get(section) if section is not None and isinstance(content, Mapping) else content
    for _ in range(3):
        if not isinstance(obj, Mapping):
            return None
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        obj = next((obj[k] for k in _NESTING if isinstance(obj.get(k), Mapping)), None)
    return None


def _resnet_names(state: StateDict) -> StateDict:
    """Keys of an ``nn.Sequential(*resnet.children())`` (``0.weight``, ``4.0.conv1.weight``) renamed
    to torchvision's (``conv1.weight``, ``layer1.0.conv1.weight``); other layouts unchanged."""
    matches = [_POSITIONAL.match(k) for k in state]
    if not all(matches) or any(int(m.group(1)) >= len(_RESNET_CHILDREN) for m in matches if m):
        return state
    return {f"{_RESNET_CHILDREN[int(m.group(1))]}.{m.group(2)}": v for m, v in zip(matches, state.values()) if m}


def _where(spec: Layout) -> str:
    sections = [s for s in spec.sections if s is not None]
    return f" in its {' / '.join(repr(s) for s in sections)} entry" if sections else ""


def _sample(content: Any) -> str:
    keys = [str(k) for k in content][:4] if isinstance(content, Mapping) else []
    return ", ".join(repr(k) for k in keys) if keys else f"nothing (a {type(content).__name__})"

