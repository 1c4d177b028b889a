"""BatchNorm statistics re-estimated on the collection before indexing (P4, LITERATURE.md "Input":
one pass in train() mode before eval()).

A network trained on other images (ImageNet, or a self-supervised run) normalises the
collection's activations with the training images' means and variances; re-estimating them on the
collection is free of labels and of gradients. ``matchlens index SOURCE -i INDEX --bn-recalibrate N``
runs N images of SOURCE (a fixed random sample, each image at the spec's scales, one image per
forward pass as the extractor sees them) through the backbone with only its BatchNorm layers in
training mode, and sets every layer's running mean and variance to those of its inputs over all
the passes, pooled (images have different sizes, so they cannot share a batch; averaging each
one-image pass's own statistics would leave the variance between images out). The backbone with those
statistics is written as a weights file inside the index (``INDEX/cache/bn/``), and the index's
pipeline names it as its weights: every later search, update and ONNX export of the index loads
the same network, and the weights id in the index's fingerprint tells the two networks apart.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from matchlens.config import PipelineSpec
from matchlens.errors import ConfigError, SourceError
from matchlens.extract.preprocess import load_for_spec, normaliser, scale_side, to_array
from matchlens.models import Backbone, load_backbone
from matchlens.models.backbones import backbone_state_dict
from matchlens.train.persist import atomic_torch_save

__all__ = ["BN_FOLDER", "batchnorm_layers", "recalibrate_batchnorm", "recalibrated_spec", "spec_inputs"]

BN_FOLDER = Path("cache") / "bn"  # inside the index: one of its own folders, never scanned as images
# Inputs with a shorter side are skipped: a stride-32 network's last maps would be 1×1, and one
# value per channel has no variance (BatchNorm refuses it in training mode).
MIN_SIDE = 64


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``module``."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, inputs: Iterable[torch.Tensor], pooled: bool = True) -> int:
    """Replace the running mean/variance of every BatchNorm of ``module`` by the statistics of its
    inputs over the forward passes of ``inputs`` (each a network input batch); returns the number
    of passes.

    ``pooled`` (default): the mean and (unbiased) variance over every position of every pass, so
    the variance between images counts as it does at search time; ``pooled=False``: PyTorch's
    cumulative average of each pass's batch statistics, which with one image per pass leaves the
    between-image variance out and under-estimates every variance (measured in docs/contrastive.md).
    Only BatchNorm layers run in training mode (dropout and drop-path stay off), so each layer
    sees its inputs normalised by batch statistics as in P4's pass; ``module`` is left in eval mode
    with each layer's momentum as it was.
    """
    norms = batchnorm_layers(module)
    if not norms:
        raise ConfigError(f"{type(module).__name__} has no BatchNorm layer whose statistics could be re-estimated")
    momenta = [bn.momentum for bn in norms]
    moments: dict[nn.Module, list[torch.Tensor]] = {}
    hooks = [bn.register_forward_pre_hook(_accumulate(moments)) for bn in norms] if pooled else []
    module.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every pass weighs the same
        bn.train()
    passes = 0
    try:
        for batch in inputs:
            module(batch)
            passes += 1
    finally:
        for hook in hooks:
            hook.remove()
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        module.eval()
    for layer, (total, squares, count) in moments.items():
        _set_statistics(layer, total, squares, count)
    return passes


def _set_statistics(bn: nn.Module, total: torch.Tensor, squares: torch.Tensor, count: torch.Tensor) -> None:
    """Running mean and unbiased variance from per-channel sums over ``count`` positions."""
    mean = total / count
    var = (squares / count - mean * mean).clamp(min=0) * (count / (count - 1).clamp(min=1.0))
    for name, value in (("running_mean", mean), ("running_var", var)):
        buffer = getattr(bn, name)
        buffer.copy_(value.to(buffer.dtype))


def _accumulate(moments: dict[nn.Module, list[torch.Tensor]]):
    """A BatchNorm forward pre-hook adding its input's per-channel sum, sum of squares and count."""
    def hook(bn: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().double()
        dims = [0, *range(2, x.dim())]
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=torch.float64)
        update = [x.sum(dims), (x * x).sum(dims), count]
        moments[bn] = [a + b for a, b in zip(moments[bn], update)] if bn in moments else update
    return hook


def spec_inputs(spec: PipelineSpec, backbone: Backbone, paths: Sequence[str],
                advance: Callable[[int], None] | None = None) -> Iterator[torch.Tensor]:
    """The network inputs the extractor would feed for ``paths``: each image decoded, resized at
    every scale of ``spec`` and normalised (one (1, 3, h, w) tensor per image and scale; those
    under :data:`MIN_SIDE` pixels on a side are left out)."""
    scale, offset = normaliser(backbone.mean, backbone.std)
    for path in paths:
        image = load_for_spec(spec, path)
        for s in spec.scales:
            array = to_array(image, scale_side(spec, s), scale, offset)
            if min(array.shape[2:]) >= MIN_SIDE:
                yield torch.from_numpy(array)
        if advance:
            advance(1)


def sample_paths(paths: Sequence[str], count: int, seed: int = 0) -> list[str]:
    """``count`` of ``paths`` drawn at random (fixed by ``seed`` and the sorted paths), all if fewer."""
    ordered = sorted(set(paths))
    if count >= len(ordered):
        return ordered
    rng = np.random.default_rng(seed)
    return [ordered[i] for i in sorted(rng.choice(len(ordered), count, replace=False))]


def recalibrated_spec(spec: PipelineSpec, paths: Sequence[str], count: int, index_dir: str | Path,
                      progress: Callable[[int, str], Callable[[int], None]] | None = None,
                      seed: int = 0, pooled: bool = True) -> PipelineSpec:
    """``spec`` with its backbone's BatchNorm statistics re-estimated on ``count`` of ``paths``:
    the network is written to ``INDEX/cache/bn/`` and the returned spec names it as its weights."""
    if count < 1:
        raise ConfigError(f"--bn-recalibrate needs a number of images of at least 1, got {count}")
    chosen = sample_paths(paths, count, seed)
    if not chosen:
        raise SourceError("no image to re-estimate BatchNorm statistics on; check SOURCE")
    backbone = load_backbone(spec.backbone, spec.weights)
    if backbone.onnx_only:
        raise ConfigError(f"backbone {spec.backbone} runs only as ONNX; its BatchNorm statistics cannot be re-estimated")
    advance = progress(len(chosen), "re-estimating BatchNorm") if progress else None
    if recalibrate_batchnorm(backbone, spec_inputs(spec, backbone, chosen, advance), pooled) == 0:
        raise ConfigError(f"every image is under {MIN_SIDE} px on a side at --max-side {spec.max_side}; "
                          "BatchNorm statistics need larger inputs")
    state = backbone_state_dict(backbone)
    digest = _digest(state)
    path = Path(index_dir).expanduser().resolve() / BN_FOLDER / f"{spec.backbone.replace(':', '_')}-{digest}.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"state_dict": state, "bn_recalibration": {
            "images": len(chosen), "seed": seed, "pooled": pooled, "base_weights": spec.weights or "", "base_weights_id": backbone.weights_id,
            "max_side": spec.max_side, "scales": list(spec.scales)}}, path)
    return spec.replace(weights=str(path), weights_id="")


def _digest(state: dict[str, torch.Tensor]) -> str:
    """A content hash of the tensors (the file name: equal statistics share one file)."""
    sha = hashlib.sha256()
    for key in sorted(state):
        sha.update(key.encode())
        sha.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]
