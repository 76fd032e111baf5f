"""Write the ORIGINAL ONNX graph with only the patched layers' initializers replaced.

Layer i of the lowered network is ``network.segments[i]`` (the lowering closes one
segment per affine layer, at each Relu). Supported segments: ``MatMul(h, W[in,out]) +
Add(B)`` or ``Gemm(h, W, B)`` with alpha = beta = 1 (transB either way), all parameters
initializers used by no other node (Identity/Flatten/Reshape nodes in the segment are
ignored).
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from verirepair.errors import InputFileError, ModelError
from verirepair.network import Network
from verirepair.report import default_file_mode


def _nodes(model: onnx.ModelProto, names: tuple[str, ...]) -> list[onnx.NodeProto]:
    """The nodes of a segment (named as the lowering names them: name, else first output),
    without the shape-only ones."""
    by_name = {n.name or (n.output[0] if n.output else ""): n for n in model.graph.node}
    nodes = [by_name[n] for n in names if n in by_name]
    return [n for n in nodes if n.op_type not in ("Identity", "Flatten", "Reshape")]


def _uses(model: onnx.ModelProto, name: str) -> int:
    return sum(list(n.input).count(name) for n in model.graph.node)


def _layer_label(network: Network, index: int) -> str:
    last = len(network.segments) - 1
    return "the last layer" if index == last else f"layer {index}"


def layer_initializers(network: Network, index: int) -> tuple[str, str, bool]:
    """(weight name, bias name, weight stored transposed as [out,in]) of the affine layer
    ``network.net.layers[index]`` (= ``network.segments[index]``: one segment per layer).

    Raises ModelError when that segment is not MatMul/Gemm + Add of initializers.
    """
    n_layers = len(network.segments)
    if not -n_layers <= index < n_layers:
        raise ModelError(f"repair: layer {index} does not exist (the network has "
                         f"{n_layers} affine layers)")
    index %= n_layers
    label = _layer_label(network, index)
    model, seg = network.model, network.segments[index]
    inits = {i.name for i in model.graph.initializer}
    nodes = _nodes(model, seg.node_names)
    kinds = [n.op_type for n in nodes]
    if kinds == ["MatMul", "Add"]:
        w, add = nodes[0].input[1], nodes[1]
        b = next((x for x in add.input if x in inits), None)
        transposed = False
    elif kinds == ["Gemm"]:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 \
                or attrs.get("transA", 0) or len(nodes[0].input) < 3:
            raise ModelError(f"repair: {label}'s Gemm must have alpha=beta=1, no transA, "
                             "a bias")
        w, b = nodes[0].input[1], nodes[0].input[2]
        transposed = bool(attrs.get("transB", 0))
    else:
        raise ModelError(f"repair: {label} must be MatMul+Add or Gemm of "
                         f"initializers, found {kinds}")
    if w not in inits or b is None or b not in inits:
        raise ModelError(f"repair: {label}'s weight and bias must be initializers")
    if _uses(model, w) != 1 or _uses(model, b) != 1:
        raise ModelError(f"repair: {label}'s initializers are shared with other nodes")
    return w, b, transposed


def last_layer_initializers(network: Network) -> tuple[str, str, bool]:
    """``layer_initializers`` of the last layer (raises ModelError when unsupported)."""
    return layer_initializers(network, len(network.segments) - 1)


def _replacements(network: Network, new: dict[int, tuple[np.ndarray, np.ndarray]]
                  ) -> dict[str, np.ndarray]:
    """Initializer name -> new value (as stored: [in,out] unless transposed)."""
    out: dict[str, np.ndarray] = {}
    for index, (weight, bias) in new.items():
        w_name, b_name, transposed = layer_initializers(network, index)
        out[w_name] = np.asarray(weight if transposed else np.asarray(weight).T)
        out[b_name] = np.asarray(bias)
    return out


def patched_layers(network: Network, new: dict[int, tuple[np.ndarray, np.ndarray]]
                   ) -> onnx.ModelProto:
    """A copy of the original model with the layers ``new`` (index into
    ``network.net.layers`` -> (weight (out, in), bias (out,)), negative indices allowed)
    set to float32 values; every other initializer and node is kept as it is.

    Raises ModelError when a layer is not MatMul/Gemm + Add of its own initializers or a
    new value does not have the initializer's size.
    """
    values = _replacements(network, new)
    model = copy.deepcopy(network.model)
    for init in model.graph.initializer:
        if init.name not in values:
            continue
        old = numpy_helper.to_array(init)
        value = values[init.name]
        if value.size != old.size:
            raise ModelError(f"repair: initializer {init.name} has {old.size} values, the "
                             f"patch gives {value.size}")
        value = np.asarray(value, dtype=np.float32).reshape(old.shape)
        init.CopyFrom(numpy_helper.from_array(value.astype(old.dtype), init.name))
    return model


def patched_model(network: Network, weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """A copy of the original model with the last layer set to float32 (weight, bias).

    ``weight`` is (out, in) as in the lowered network.
    """
    return patched_layers(network, {len(network.segments) - 1: (weight, bias)})


def save_temp(model: onnx.ModelProto, out_path: str | Path) -> Path:
    """Serialise into a temporary file beside ``out_path`` (renamed later by the caller).
    Raises InputFileError (one line) when the file cannot be written."""
    out_path = Path(out_path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".onnx",
                                   dir=out_path.parent if str(out_path.parent) else ".")
    except OSError as exc:
        raise InputFileError(f"{out_path}: cannot write the model: "
                             f"{exc.strerror or exc}") from None
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(model.SerializeToString())
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the caller renames it
    except OSError as exc:
        os.unlink(tmp)
        raise InputFileError(f"{out_path}: cannot write the model: "
                             f"{exc.strerror or exc}") from None
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)
