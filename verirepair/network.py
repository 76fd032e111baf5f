"""ONNX front-end: load a model and lower it to an :class:`AffineReluNet`.

The original ONNX model is kept untouched (repair writes it back with only the patched
initializers replaced). Lowering walks the graph once: every operator between two ReLUs is
affine in the input-dependent tensor, so each segment is summarised by pushing the unit
basis through its *linear part* (biases dropped) and the zero vector through the full
operator (biases kept), in float64. That equals the file's float32 weights when a segment
is one MatMul/Gemm/Conv plus a bias; a Div by a constant (1/c), BatchNormalization
(scale / sqrt(var + eps)) and chained constant operators (MatMul after MatMul, Conv then
Gemm) are rounded once in float64. The network verified is this lowering, compared with
onnxruntime at load and on the property's boxes. Operators are dispatched through
``OPS``; adding one is one table entry.

Convention inside the interpreter: an operator function computes the ONNX operator on
tensors of their true ONNX shapes. The input-dependent tensor is held with one more,
leading axis (the basis axis: one entry per unit vector pushed through, or one for the
offset), and an operator is applied to it under ``torch.vmap`` over that axis, so the
lowering never mistakes an ONNX dimension for the basis axis (a rank-1 tensor, or a
leading dimension other than 1, is computed as onnxruntime computes it). Constant-only
subgraphs are folded in the constants' own dtype (float32 as onnxruntime does); their
values enter the lowering in float64.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from verirepair.bounds import MAX_SUM_TERMS
from verirepair.errors import InputFileError, ModelError
from verirepair.net_types import Affine, AffineReluNet

Tensor = torch.Tensor


@dataclass(frozen=True)
class Segment:
    """Which ONNX nodes and initializers one lowered affine layer came from."""

    node_names: tuple[str, ...]
    initializers: tuple[str, ...]


@dataclass(frozen=True)
class Network:
    """A loaded ONNX model together with its exact lowered affine/ReLU view."""

    source: str
    model: onnx.ModelProto
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    net: AffineReluNet
    segments: tuple[Segment, ...]
    # SHA-256 of the (decompressed) bytes the model was read from ("" if not from a file):
    # lets a caller check that the file on disk is still the one that was verified
    digest: str = ""

    @property
    def n_inputs(self) -> int:
        return self.net.n_inputs

    @property
    def n_outputs(self) -> int:
        return self.net.n_outputs


# --------------------------------------------------------------------------- operators
# An op gets (inputs, attrs, dyn, linear_only). ``inputs`` holds torch tensors of their
# ONNX shapes or None for absent optional inputs; ``dyn`` marks the input-dependent one.
# ``linear_only`` asks for the linear part of an affine op: additive constants dropped.

OpFn = Callable[[list, dict, list, bool], Tensor]


def _attr_dict(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _op_matmul(xs: list, attrs: dict, dyn: list, linear_only: bool) -> Tensor:
    a, b = xs
    if dyn[0] and b.dim() != 2:
        raise ModelError(f"MatMul of the running tensor with a {b.dim()}-D constant is not "
                         "supported (only a 2-D right operand)")
    return torch.matmul(a, b)


def _op_gemm(xs: list, attrs: dict, dyn: list, linear_only: bool) -> Tensor:
    a, b = xs[0], xs[1]
    c = xs[2] if len(xs) > 2 else None
    if attrs.get("transA", 0):
        raise ModelError("Gemm with transA=1 is not supported")
    if attrs.get("transB", 0):
        b = b.T
    y = float(attrs.get("alpha", 1.0)) * torch.matmul(a, b)
    if c is not None and not linear_only:
        y = y + float(attrs.get("beta", 1.0)) * c
    return y


def _binary_affine(kind: str) -> OpFn:
    def op(xs: list, attrs: dict, dyn: list, linear_only: bool) -> Tensor:
        a, b = xs
        if dyn[0] and dyn[1]:
            raise ModelError(f"{kind} of two input-dependent tensors is not supported "
                             "(only feed-forward chains)")
        if kind in ("Add", "Sub"):
            sign = -1.0 if (kind == "Sub" and dyn[1]) else 1.0
            x, c = (a, b) if dyn[0] else (b, a)
            if linear_only:
                return sign * x + torch.zeros_like(c)
            return a + b if kind == "Add" else a - b
        if kind == "Mul":
            return a * b
        if a.is_floating_point() or b.is_floating_point():
            return a / b
        if bool((b == 0).any()):  # integer constants: ONNX divides whole numbers
            raise ModelError("integer Div by zero")
        return torch.div(a, b, rounding_mode="trunc")
    return op


def _op_relu(xs: list, attrs: dict, dyn: list, linear_only: bool) -> Tensor:
    return torch.relu(xs[0])


def _op_identity(xs: list, attrs: dict, dyn: list, linear_only: bool) -> Tensor:
    return xs[0]


def _op_flatten(xs: list, attrs: dict, dyn: list, linear_only: bool) -> Tensor:
    x = xs[0]
    rank, axis = x.dim(), int(attrs.get("axis", 1))
    if not -rank <= axis <= rank:
        raise ModelError(f"Flatten axis {axis} is out of range for a rank-{rank} tensor")
    axis = axis + rank if axis < 0 else axis
    # (d0 * ... * d(axis-1), d(axis) * ... * d(rank-1)); axis = rank gives (N, 1)
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


def _op_reshape(xs: list, attrs: dict, dyn: list, linear_only: bool) -> Tensor:
    x, shape = xs[0], [int(s) for s in xs[1].tolist()]
    if attrs.get("allowzero", 0) and 0 in shape:
        raise ModelError("Reshape with allowzero=1 and a 0 in the shape is not supported")
    return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])


def _op_transpose(xs: list, attrs: dict, dyn: list, linear_only: bool) -> Tensor:
    x = xs[0]
    perm = list(attrs.get("perm", list(reversed(range(x.dim())))))
    return x.permute(*perm)


def _op_conv(xs: list, attrs: dict, dyn: list, linear_only: bool) -> Tensor:
    x, w = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 and not linear_only else None
    if dyn[1]:
        raise ModelError("Conv with input-dependent weights is not supported")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ModelError("Conv with auto_pad is not supported (use explicit pads)")
    spatial = w.dim() - 2
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    begin, end = pads[:spatial], pads[spatial:]
    if begin != end:
        pad_arg: list[int] = []
        for b_, e_ in reversed(list(zip(begin, end))):
            pad_arg += [b_, e_]
        x = F.pad(x, pad_arg)
        begin = [0] * spatial
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(spatial)
    if conv is None:
        raise ModelError(f"Conv with {spatial} spatial dimensions is not supported")
    return conv(x, w, bias, stride=list(attrs.get("strides", [1] * spatial)),
                padding=begin, dilation=list(attrs.get("dilations", [1] * spatial)),
                groups=int(attrs.get("group", 1)))


def _op_batchnorm(xs: list, attrs: dict, dyn: list, linear_only: bool) -> Tensor:
    if attrs.get("training_mode", 0):  # batch statistics, not the stored ones
        raise ModelError("BatchNormalization in training mode is not supported")
    x, scale, bias, mean, var = xs[:5]
    eps = float(attrs.get("epsilon", 1e-5))
    factor = scale / torch.sqrt(var + eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = x * factor.reshape(shape)
    if not linear_only:
        y = y + (bias - mean * factor).reshape(shape)
    return y


OPS: dict[str, OpFn] = {
    "MatMul": _op_matmul,
    "Gemm": _op_gemm,
    "Add": _binary_affine("Add"),
    "Sub": _binary_affine("Sub"),
    "Mul": _binary_affine("Mul"),
    "Div": _binary_affine("Div"),
    "Relu": _op_relu,
    "Identity": _op_identity,
    "Dropout": _op_identity,
    "Flatten": _op_flatten,
    "Reshape": _op_reshape,
    "Transpose": _op_transpose,
    "Conv": _op_conv,
    "BatchNormalization": _op_batchnorm,
}


# Which inputs of an operator the running (input-dependent) tensor may be: the data
# inputs. Anywhere else (a MatMul's right operand, a Gemm's B or C, a divisor, a Conv
# bias, a BatchNormalization mean, a Dropout ratio, a Reshape shape) the operator is not
# affine in it the way the lowering applies it; the operator functions rely on this.
DATA_INPUTS: dict[str, tuple[int, ...]] = {
    "MatMul": (0,), "Gemm": (0,), "Add": (0, 1), "Sub": (0, 1), "Mul": (0, 1), "Div": (0,),
    "Relu": (0,), "Identity": (0,), "Dropout": (0,), "Flatten": (0,), "Reshape": (0,),
    "Transpose": (0,), "Conv": (0,), "BatchNormalization": (0,)}


def _check_data_input(node: onnx.NodeProto, dyn: list[bool]) -> None:
    allowed = DATA_INPUTS[node.op_type]
    for index, is_running in enumerate(dyn):
        if is_running and index not in allowed:
            raise ModelError(f"the input-dependent tensor is input {index} "
                             f"('{node.input[index]}'), where only a constant is supported")


def _check_mul_linear(node: onnx.NodeProto, dyn: list[bool]) -> None:
    if node.op_type == "Mul" and all(dyn[:2]):
        raise ModelError("Mul of two input-dependent tensors is not linear and not "
                         "supported")


def _check_outputs(node: onnx.NodeProto) -> None:
    """Operators whose extra outputs exist only in training mode (BatchNormalization's
    running statistics) are refused with them: their first output then uses batch
    statistics."""
    if node.op_type == "BatchNormalization" and len([o for o in node.output if o]) > 1:
        raise ModelError("BatchNormalization with its training outputs (training mode) is "
                         "not supported")


def _check_dropout(node: onnx.NodeProto, consts: dict) -> None:
    """Dropout is the identity only in inference mode."""
    if node.op_type != "Dropout" or len(node.input) < 3 or not node.input[2]:
        return
    mode = consts.get(node.input[2])
    if mode is None or bool(torch.as_tensor(mode).reshape(-1)[0]):
        raise ModelError("Dropout in training mode (or with an input-dependent mode) is "
                         "not supported")


# --------------------------------------------------------------------------- loading

def read_model_bytes(path: Path) -> bytes:
    """The serialised model of a ``.onnx`` file, or of a ``.onnx.gz`` file decompressed.
    Raises InputFileError for a missing or unreadable file."""
    if not path.is_file():
        raise InputFileError(f"{path}: model file not found")
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputFileError(f"{path}: cannot read model: {exc}") from None


def _read_model(path: Path) -> onnx.ModelProto:
    return _parse_model(read_model_bytes(path), path)


def _parse_model(raw: bytes, path: Path) -> onnx.ModelProto:
    try:
        return onnx.load_from_string(raw)
    except Exception as exc:  # protobuf raises its own DecodeError types
        raise InputFileError(f"{path}: not a valid ONNX model ({type(exc).__name__})") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _initializers(graph: onnx.GraphProto, source: str) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        try:
            arr = numpy_helper.to_array(init)
        except Exception as exc:  # e.g. missing external data, bad data type
            raise ModelError(f"{source}: cannot read initializer '{init.name}': "
                             f"{_first_line(exc)}") from None
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ModelError(f"{source}: initializer '{init.name}' has non-finite values "
                             "(NaN or Inf)")
        values[init.name] = arr
    return values


def _shape_of(value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1
                 for d in dims)


def _to_torch(arr: np.ndarray) -> Tensor:
    """A constant in its own float dtype (folded as onnxruntime folds it); integers and
    booleans as int64."""
    if arr.dtype.kind in "iub":
        return torch.from_numpy(np.array(arr, dtype=np.int64))
    if arr.dtype not in (np.float32, np.float64):  # float16 &c.: onnxruntime decides
        return torch.from_numpy(np.array(arr, dtype=np.float64))
    return torch.from_numpy(np.array(arr))


def _float64(t: Tensor | None) -> Tensor | None:
    """A constant as it enters the lowering: float tensors in float64 (exactly)."""
    return t.to(torch.float64) if t is not None and t.is_floating_point() else t


# The lowering holds one dense float64 matrix per segment (inputs x outputs of the
# segment): a large convolutional layer would need more memory than the machine has and
# the process would be killed without a word. Instead the model is refused when one
# operator would hold more than MAX_LOWERED_BYTES at once (the running matrix, its output
# and the operator's known temporaries) or all segments together more than
# MAX_LOWERED_TOTAL. An operator's output size is learned by running it on one row; an
# operator whose attributes can make that one row huge (a padding of 10^9) has its row
# size bounded from the attributes first (ROW_BOUNDS).
MAX_LOWERED_BYTES = 2e9
MAX_LOWERED_TOTAL = 8e9


def _conv_row_bound(xs: list, attrs: dict) -> int:
    """At most this many values in one run of a Conv on its first input's batch (one row
    for the running tensor): the padded input, the output and the im2col buffer, each
    counted per padded position (strides and dilations of at least 1 only shrink the
    output)."""
    x, w = xs[0], xs[1]
    if x is None or w is None:
        raise ModelError("Conv needs an input and a weight")
    spatial = tuple(int(v) for v in x.shape[2:])
    pads = [int(p) for p in attrs.get("pads", [0] * 2 * len(spatial))]
    padded = [s + max(0, b) + max(0, e)
              for s, b, e in zip(spatial, pads[:len(spatial)], pads[len(spatial):])]
    positions = int(np.prod(padded, dtype=object)) if padded else 1
    im2col = int(w.shape[1]) * int(attrs.get("group", 1)) * int(np.prod(
        tuple(w.shape[2:]), dtype=object))
    return int(x.shape[0]) * (int(x.shape[1]) + int(w.shape[0]) + im2col) * positions


def _output_size(fn: OpFn, xs: list, attrs: dict, dyn: list) -> int:
    """Values of an operator's output, learned on torch's "meta" device (shapes only,
    nothing allocated): a broadcast can make a small row huge. 0 when an operator has
    no meta kernel (its run then raises or is small)."""
    meta = [x.to("meta") if x is not None and x.is_floating_point() else x for x in xs]
    try:
        return int(fn(meta, attrs, dyn, False).numel())
    except (NotImplementedError, RuntimeError, ValueError, IndexError, TypeError):
        return 0


def _broadcast_row_bound(xs: list, attrs: dict) -> int:
    """Values of an elementwise operator's output: its inputs' broadcast shape (from the
    shapes alone, whatever their dtypes; 0 when they do not broadcast: the run says
    why)."""
    try:
        shape = torch.broadcast_shapes(*(tuple(x.shape) for x in xs if x is not None))
    except RuntimeError:
        return 0
    return int(np.prod(shape, dtype=object))


# An upper bound of the values per batch row an operator builds, known before it runs
# (table; the others' output size is learned from a run on the meta device).
ROW_BOUNDS: dict[str, Callable[[list, dict], int]] = {
    "Conv": _conv_row_bound, "Add": _broadcast_row_bound, "Sub": _broadcast_row_bound,
    "Mul": _broadcast_row_bound, "Div": _broadcast_row_bound}


def _conv_columns(names: list, consts: dict, attrs: dict, out_row: Tensor) -> int:
    """Values per batch row of the im2col buffer torch's CPU convolution may build: every
    input channel (all groups) times every kernel position, per output position."""
    w = consts[names[1]]
    groups = int(attrs.get("group", 1))
    per_position = int(w.shape[1]) * groups * int(np.prod(tuple(w.shape[2:])))
    # out_row: (N, C, *spatial) in its ONNX shape
    return int(out_row.shape[0]) * per_position * int(np.prod(tuple(out_row.shape[2:])))


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e8 else f"{n_bytes:,.0f} bytes"


# Values per batch row an operator allocates beyond its output (table; default none).
TEMPORARIES: dict[str, Callable[[list, dict, dict, Tensor], int]] = {
    "Conv": _conv_columns}


class _Lowering:
    """State of one pass over the graph: constants, the running affine map, segments."""

    def __init__(self, source: str, input_name: str, input_shape: tuple[int, ...],
                 consts: dict[str, np.ndarray], max_bytes: float = MAX_LOWERED_BYTES,
                 max_total: float = MAX_LOWERED_TOTAL) -> None:
        self.source = source
        self.max_bytes, self.max_total = max_bytes, max_total
        self.lin: Tensor | None = None
        self.consts: dict[str, Tensor] = {k: _to_torch(v) for k, v in consts.items()}
        self.dynamic_name = input_name
        self.layers: list[Affine] = []
        self.segments: list[Segment] = []
        try:
            self._start_segment(tuple(input_shape))
        except ModelError as exc:
            raise ModelError(f"{source}: input '{input_name}': {exc}") from None

    def _check_size(self, n_in: int, n_out: int, extra: int = 0) -> None:
        """Refuse an operator whose n_in x n_out float64 output, with the running matrix
        still alive and ``extra`` temporary values per row, would exceed the limit."""
        held = 0 if self.lin is None else int(self.lin.numel()) // max(1, n_in)
        need = 8.0 * n_in * (n_out + held + extra)
        if need > self.max_bytes:
            raise ModelError(f"an affine segment maps {n_in:,} to {n_out:,} values: lowering "
                             f"it exactly needs {_size(need)} of float64 at once, more than "
                             f"the {_size(self.max_bytes)} allowed (network too large for "
                             "this verifier)")

    def _check_total(self, n: int) -> None:
        total = sum(layer.weight.nbytes for layer in self.layers) + 8.0 * n * n
        if total > self.max_total:
            raise ModelError(f"the lowered layers would need {_size(total)} in all, more "
                             f"than the {_size(self.max_total)} allowed (network too large "
                             "for this verifier)")

    def _start_segment(self, shape: tuple[int, ...]) -> None:
        """A new affine segment on the running tensor of ONNX shape ``shape``: the basis
        (n, *shape) and the offset (1, *shape)."""
        n = int(np.prod(shape)) if shape else 1
        self.lin = None  # closed: its matrix now lives in self.layers
        self._check_size(n, n)
        self._check_total(n)
        self.lin = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
        self.off = torch.zeros((1, *shape), dtype=torch.float64)
        self.seg_nodes: list[str] = []
        self.seg_inits: list[str] = []

    def _close_segment(self) -> None:
        n_in = self.lin.shape[0]
        weight = self.lin.reshape(n_in, -1).T.contiguous().numpy()
        bias = self.off.reshape(-1).numpy().copy()
        self.layers.append(Affine(weight=weight, bias=bias))
        self.segments.append(Segment(tuple(self.seg_nodes), tuple(self.seg_inits)))

    def _node_label(self, node: onnx.NodeProto) -> str:
        return f"{self.source}: node '{node.name or node.output[0]}' ({node.op_type})"

    def visit(self, node: onnx.NodeProto) -> None:
        if node.op_type == "Constant":
            self._constant(node)
            return
        fn = OPS.get(node.op_type)
        if fn is None:
            raise ModelError(f"{self._node_label(node)}: unsupported operator "
                             f"'{node.op_type}' (supported: {', '.join(sorted(OPS))}, "
                             "Constant)")
        names = [n for n in node.input]
        dyn = [n == self.dynamic_name for n in names]
        missing = [n for n, d in zip(names, dyn) if n and not d and n not in self.consts]
        if missing:
            raise ModelError(f"{self._node_label(node)}: input '{missing[0]}' is neither "
                             "a constant nor the running tensor (graph is not a "
                             "feed-forward chain)")
        attrs = _attr_dict(node)
        try:
            _check_data_input(node, dyn)
            self._check_row_bound(node.op_type, names, dyn, attrs)
            if not any(dyn):
                xs = [self.consts[n] if n else None for n in names]
                self.consts[node.output[0]] = fn(xs, attrs, dyn, False)
                return
            _check_mul_linear(node, dyn)
            _check_outputs(node)
            _check_dropout(node, self.consts)
            self._apply_dynamic(node, fn, names, dyn, attrs)
        except ModelError as exc:
            raise ModelError(f"{self._node_label(node)}: {exc}") from None
        except RuntimeError as exc:
            raise ModelError(f"{self._node_label(node)}: shape error: "
                             f"{_first_line(exc)}") from None
        except (ValueError, IndexError, TypeError, ArithmeticError) as exc:  # malformed
            raise ModelError(f"{self._node_label(node)}: malformed node: "
                             f"{_first_line(exc)}") from None

    def _check_row_bound(self, op: str, names: list[str], dyn: list[bool],
                         attrs: dict) -> None:
        """Refuse an operator whose attributes or broadcasts would make even its one-row
        run (or its run on constants) too large."""
        xs = [self.off[0] if d else self.consts.get(n) for n, d in zip(names, dyn)]
        bound = ROW_BOUNDS.get(op)
        row = bound(xs, attrs) if bound is not None else _output_size(OPS[op], xs, attrs, dyn)
        if 8.0 * row > self.max_bytes:
            raise ModelError(f"its inputs and attributes make a run of {row:,} values "
                             f"({_size(8.0 * row)} of float64), more than the "
                             f"{_size(self.max_bytes)} allowed")

    def _apply_dynamic(self, node: onnx.NodeProto, fn: OpFn, names: list[str],
                       dyn: list[bool], attrs: dict) -> None:
        self.dynamic_name = node.output[0]
        if node.op_type == "Relu":
            self._close_segment()
            self._start_segment(tuple(self.off.shape[1:]))
            return
        self.seg_nodes.append(node.name or node.output[0])
        self.seg_inits.extend(n for n, d in zip(names, dyn) if n and not d)

        consts = [None if d or not n else _float64(self.consts[n]) for n, d in zip(names, dyn)]

        def run(rows: Tensor, linear_only: bool) -> Tensor:
            def one(x: Tensor) -> Tensor:  # x: the running tensor in its ONNX shape
                xs = [x if d else c for c, d in zip(consts, dyn)]
                return fn(xs, attrs, dyn, linear_only)
            return torch.vmap(one)(rows)

        self.off = run(self.off, False)  # one row first: the output size, cheaply
        temporaries = TEMPORARIES.get(node.op_type)
        extra = temporaries(names, self.consts, attrs, self.off[0]) if temporaries else 0
        self._check_size(self.lin.shape[0], int(self.off[0].numel()), extra)
        self.lin = run(self.lin, True)

    def _constant(self, node: onnx.NodeProto) -> None:
        attrs = {a.name: a for a in node.attribute}
        if "value" not in attrs:
            raise ModelError(f"{self._node_label(node)}: only Constant with 'value' is "
                             "supported")
        try:
            arr = numpy_helper.to_array(attrs["value"].t)
        except Exception as exc:  # a value of the wrong kind or size
            raise ModelError(f"{self._node_label(node)}: malformed constant: "
                             f"{_first_line(exc)}") from None
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ModelError(f"{self._node_label(node)}: non-finite constant values")
        self.consts[node.output[0]] = _to_torch(arr)

    def finish(self, output_name: str) -> tuple[AffineReluNet, tuple[Segment, ...]]:
        if self.dynamic_name != output_name:
            raise ModelError(f"{self.source}: graph output '{output_name}' does not depend "
                             "on the input through a single chain")
        self._close_segment()
        return AffineReluNet(tuple(self.layers)), tuple(self.segments)


def _graph_input(graph: onnx.GraphProto, consts: dict, source: str) -> onnx.ValueInfoProto:
    real = [i for i in graph.input if i.name not in consts]
    if len(real) != 1:
        raise ModelError(f"{source}: expected exactly one graph input, found "
                         f"{[i.name for i in real]}")
    return real[0]


def _check_names(graph: onnx.GraphProto, source: str) -> None:
    """Every node output names a new tensor: onnxruntime resolves a name defined twice
    (an initializer also produced by a Constant node, say) its own way, which the
    lowering, reading the file in order, could not follow."""
    defined = {i.name: "an initializer" for i in graph.initializer}
    defined |= {i.name: "a graph input" for i in graph.input if i.name not in defined}
    for node in graph.node:
        for name in node.output:
            if name and name in defined:
                raise ModelError(f"{source}: node '{node.name or name}' ({node.op_type}) "
                                 f"defines '{name}', which is already {defined[name]}")
            if name:
                defined[name] = f"the output of node '{node.name or name}'"


def _check_consumers(graph: onnx.GraphProto, input_name: str, source: str) -> None:
    """Reject graphs where an input-dependent tensor feeds two nodes (no branching).

    Constants (initializers, Constant nodes and tensors computed from constants only) may
    be shared freely.
    """
    dynamic = {input_name}
    for node in graph.node:  # ONNX nodes are topologically sorted
        if any(name in dynamic for name in node.input):
            dynamic.update(node.output)
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:  # twice in one node (Add(x, x)) counts twice
            uses[name] = uses.get(name, 0) + 1
    for name, count in uses.items():
        if count > 1 and name in dynamic:
            raise ModelError(f"{source}: tensor '{name}' feeds {count} nodes (or node "
                             "inputs); only feed-forward chains are supported")


def load_network(path: str | Path, max_lowered_bytes: float = MAX_LOWERED_BYTES,
                 max_lowered_total: float = MAX_LOWERED_TOTAL) -> Network:
    """Load an ONNX (or .onnx.gz) file and lower it. Raises a VerirepairError on bad input,
    including a network too large to lower (see ``MAX_LOWERED_BYTES``)."""
    path = Path(path)
    source = str(path)
    raw = read_model_bytes(path)
    model = _parse_model(raw, path)
    graph = model.graph
    consts = _initializers(graph, source)
    inp = _graph_input(graph, consts, source)
    if len(graph.output) != 1:
        raise ModelError(f"{source}: expected exactly one graph output, found "
                         f"{len(graph.output)}")
    _check_names(graph, source)
    _check_consumers(graph, inp.name, source)
    input_shape = _shape_of(inp) or (1,)
    lowering = _Lowering(source, inp.name, input_shape, consts, max_lowered_bytes,
                         max_lowered_total)
    for node in graph.node:
        lowering.visit(node)
    net, segments = lowering.finish(graph.output[0].name)
    if not all(np.all(np.isfinite(l.weight)) and np.all(np.isfinite(l.bias))
               for l in net.layers):
        raise ModelError(f"{source}: lowered network has non-finite weights")
    _check_widths(net, segments, source)
    try:  # counterexamples are re-checked in onnxruntime: it must accept the model
        session = onnx_session(model)
    except Exception as exc:
        raise ModelError(f"{source}: onnxruntime cannot load the model: "
                         f"{_first_line(exc)}") from None
    network = Network(source=source, model=model, input_name=inp.name,
                      input_shape=input_shape, output_name=graph.output[0].name, net=net,
                      segments=segments, digest=hashlib.sha256(raw).hexdigest())
    _check_against_onnxruntime(network, session)
    return network


def _check_widths(net: AffineReluNet, segments: tuple[Segment, ...], source: str) -> None:
    """Refuse a lowered layer wider than the bounds' rounding margin covers."""
    for index, (layer, segment) in enumerate(zip(net.layers, segments)):
        if max(layer.weight.shape) > MAX_SUM_TERMS:
            what = (f"node {segment.node_names[0]!r}" if segment.node_names
                    else f"affine layer {index}")
            raise ModelError(f"{source}: {what} lowers to a layer "
                             f"{layer.weight.shape[1]} -> {layer.weight.shape[0]}; the "
                             f"rounding margin of the bounds covers sums of at most "
                             f"{MAX_SUM_TERMS} terms")


LOWERING_CHECK_POINTS = 6  # seeded random inputs on which lowering and onnxruntime agree
# A difference is a lowering error when it exceeds both LOWERING_RTOL of that output's
# largest |value| over the compared points and LOWERING_TERMS_RTOL of the magnitude of
# the terms summed into it (|W_L|(...|W_1||x| + |b_1|...) + |b_L|: float32 rounding in
# onnxruntime is a few eps32 = 6e-8 of that per operation, so an output that is a small
# difference of large terms is not flagged for its rounding; a bug moves an output by a
# sizeable part of its terms).
LOWERING_RTOL = 1e-3
LOWERING_TERMS_RTOL = 1e-4


def _tolerance(net: AffineReluNet, x: np.ndarray, want: np.ndarray, got: np.ndarray
               ) -> np.ndarray:
    """Per point and output: the largest difference the comparison accepts."""
    terms = np.abs(x)
    for layer in net.layers:
        terms = terms @ np.abs(layer.weight).T + np.abs(layer.bias)
    terms = np.where(np.isfinite(terms), terms, 0.0)  # overflowed: the column rule alone
    finite_want = np.where(np.isfinite(want), np.abs(want), 0.0)
    finite_got = np.where(np.isfinite(got), np.abs(got), 0.0)
    column = np.maximum(finite_want.max(axis=0), finite_got.max(axis=0))
    return np.maximum(LOWERING_RTOL * column[None, :], LOWERING_TERMS_RTOL * terms)


def _check_against_onnxruntime(network: Network, session) -> None:
    """Every verdict is about the lowered network, so it must compute what onnxruntime
    computes: compared on seeded random inputs (scales 1 and 100). Raises ModelError on
    a mismatch (a construct the lowering gets wrong) instead of verifying another
    function."""
    rng = np.random.default_rng(20261126)
    n, half = network.n_inputs, LOWERING_CHECK_POINTS // 2
    _compare(network, session, [rng.uniform(-1, 1, (half, n)),
                                rng.uniform(-100, 100, (half, n))], "a random input")


# Input boxes of a property on which the lowering is compared again (at most; evenly
# spread over the property's boxes), and points per box (its centre and random ones).
BOX_CHECK_BOXES = 64
BOX_CHECK_POINTS = 4
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_lowering_on_boxes(network: Network, boxes: list[tuple[np.ndarray, np.ndarray]]
                            ) -> None:
    """The load-time comparison again, on points of the property's own input boxes
    (``(lower, upper)`` pairs): a lowering error hidden behind ReLUs that the load-time
    points leave inactive shows where the verdict is decided. Raises ModelError on a
    mismatch."""
    if not boxes:
        return
    rng = np.random.default_rng(20261127)
    picks = np.unique(np.linspace(0, len(boxes) - 1, min(len(boxes), BOX_CHECK_BOXES))
                      .round().astype(int))
    groups = []
    for i in picks:
        lo, hi = (np.asarray(v, dtype=np.float64) for v in boxes[i])
        mid, rad = lo / 2 + hi / 2, hi / 2 - lo / 2  # no overflow for bounds near 1.8e308
        spread = rng.uniform(-1.0, 1.0, (BOX_CHECK_POINTS - 1, lo.size))
        points = np.clip(np.vstack([mid, mid + rad * spread]), lo, hi)
        groups.append(np.clip(points, -FLOAT32_MAX, FLOAT32_MAX))  # onnxruntime's inputs
    _compare(network, onnx_session(network.model), groups, "a point of the property's "
             "input box")


def _compare(network: Network, session, groups: list[np.ndarray], where: str) -> None:
    """Lowered network vs onnxruntime on float32 ``groups`` of inputs, each group against
    its own output scale. Outputs onnxruntime's float32 overflows are left out (that is no
    lowering error), each on its own: the others are still compared; if nothing is left
    to compare, the model is refused."""
    x = np.concatenate(groups).astype(np.float32)
    try:
        want = run_onnxruntime(network, x, session).astype(np.float64)
    except Exception as exc:
        raise ModelError(f"{network.source}: onnxruntime cannot run the model on an input "
                         f"of shape {list(network.input_shape)}: {_first_line(exc)}") from None
    got = network.net.forward(x.astype(np.float64))
    if want.shape != got.shape:
        raise ModelError(f"{network.source}: onnxruntime gives {want.shape[1]} outputs per "
                         f"input, the lowered network {got.shape[1]}")
    start, compared = 0, False
    for size in (len(g) for g in groups):
        w, g = want[start:start + size], got[start:start + size]
        start += size
        finite = np.isfinite(w)
        if not finite.any():
            continue
        compared = True
        with np.errstate(all="ignore"):
            tol = _tolerance(network.net, x[start - size:start].astype(np.float64), w, g)
            diff = np.abs(w - g)
        bad = finite & ~(diff <= tol)  # a non-finite lowered value is bad too
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ModelError(f"{network.source}: the lowered network differs from "
                             f"onnxruntime by {diff[i, j]:.3g} in output {j} (onnxruntime "
                             f"{w[i, j]:.6g}, tolerance {tol[i, j]:.3g}) on {where}; the "
                             "model uses a construct verirepair does not lower exactly")
    if not compared:
        raise ModelError(f"{network.source}: onnxruntime's outputs are not finite on "
                         f"{where} (nothing to compare the lowered network with)")


# --------------------------------------------------------------------------- runtime

def onnx_session(model: onnx.ModelProto):
    """An onnxruntime session on the given model (single-threaded, CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts,
                                providers=["CPUExecutionProvider"])


def run_model_file(path: str | Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime on the model file alone (no lowering; ``.onnx.gz`` too): one flattened
    input -> the flattened float32 output. Raises InputFileError for an unreadable file;
    onnxruntime's own errors (e.g. a size that does not fit) pass through."""
    sess = onnx_session(_read_model(Path(path)))
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    feed = {inp.name: np.asarray(x, dtype=np.float32).reshape(shape)}
    return np.asarray(sess.run(None, feed)[0], dtype=np.float32).reshape(-1)


def run_onnxruntime(network: Network, x: np.ndarray, session=None) -> np.ndarray:
    """Evaluate the ORIGINAL ONNX model on flattened float32 inputs (N, n) -> (N, m)."""
    sess = session or onnx_session(network.model)
    x = np.asarray(x, dtype=np.float32).reshape(-1, network.n_inputs)
    shape = list(network.input_shape)
    outs = []
    for row in x:  # VNN-COMP models usually fix the batch size at 1
        feed = {network.input_name: row.reshape(shape)}
        outs.append(np.asarray(sess.run(None, feed)[0], dtype=np.float32).reshape(-1))
    return np.stack(outs) if outs else np.zeros((0, network.n_outputs), np.float32)


def torch_layers(net: AffineReluNet, dtype: torch.dtype = torch.float64
                 ) -> list[tuple[Tensor, Tensor]]:
    """The torch view of the lowered network: (weight, bias) per layer."""
    return [(torch.as_tensor(l.weight, dtype=dtype), torch.as_tensor(l.bias, dtype=dtype))
            for l in net.layers]


def torch_forward(layers: list[tuple[Tensor, Tensor]], x: Tensor) -> Tensor:
    """Batched forward pass; ReLU after all but the last layer."""
    h = x
    last = len(layers) - 1
    for i, (w, b) in enumerate(layers):
        h = torch.addmm(b, h, w.T)
        if i < last:
            h = torch.relu(h)
    return h

