"""Write the ORIGINAL ONNX graph with only the last layer's initializers replaced.

Supported last segments: ``MatMul(h, W[in,out]) + Add(B)`` or ``Gemm(h, W, B)`` with
alpha = beta = 1 (transB either way), all parameters initializers used by no other node.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from verirepair.errors import ModelError
from verirepair.network import Network


def _nodes(model: onnx.ModelProto, names: tuple[str, ...]) -> list[onnx.NodeProto]:
    by_name = {n.name: n for n in model.graph.node}
    nodes = [by_name[n] for n in names if n in by_name]
    return [n for n in nodes if n.op_type not in ("Identity", "Flatten", "Reshape")]


def _uses(model: onnx.ModelProto, name: str) -> int:
    return sum(list(n.input).count(name) for n in model.graph.node)


def last_layer_initializers(network: Network) -> tuple[str, str, bool]:
    """(weight name, bias name, weight stored transposed as [out,in]) of the last layer.

    Raises ModelError when the last segment is not MatMul/Gemm + Add of initializers.
    """
    model, seg = network.model, network.segments[-1]
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
            raise ModelError("repair: last Gemm must have alpha=beta=1, no transA, a bias")
        w, b = nodes[0].input[1], nodes[0].input[2]
        transposed = bool(attrs.get("transB", 0))
    else:
        raise ModelError(f"repair: the last layer must be MatMul+Add or Gemm of "
                         f"initializers, found {kinds}")
    if w not in inits or b is None or b not in inits:
        raise ModelError("repair: the last layer's weight and bias must be initializers")
    if _uses(model, w) != 1 or _uses(model, b) != 1:
        raise ModelError("repair: the last layer's initializers are shared with other nodes")
    return w, b, transposed


def patched_model(network: Network, weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """A copy of the original model with the last layer set to float32 (weight, bias).

    ``weight`` is (out, in) as in the lowered network.
    """
    w_name, b_name, transposed = last_layer_initializers(network)
    model = copy.deepcopy(network.model)
    for init in model.graph.initializer:
        old = numpy_helper.to_array(init)
        if init.name == w_name:
            new = weight if transposed else weight.T
        elif init.name == b_name:
            new = bias
        else:
            continue
        if new.size != old.size:
            raise ModelError(f"repair: initializer {init.name} has an unexpected shape")
        new = np.asarray(new, dtype=np.float32).reshape(old.shape)
        init.CopyFrom(numpy_helper.from_array(new.astype(old.dtype), init.name))
    return model


def save_temp(model: onnx.ModelProto, out_path: str | Path) -> Path:
    """Serialise into a temporary file beside ``out_path`` (renamed later by the caller)."""
    out_path = Path(out_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".onnx",
                               dir=out_path.parent if str(out_path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(model.SerializeToString())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)
