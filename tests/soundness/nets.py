"""Random tiny ReLU networks, their ONNX export, and random properties (seeded numpy).

Weights are generated in float32 and cast to float64, so the lowered float64 network is
exactly the network onnxruntime evaluates (up to float32 arithmetic).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from verirepair.net_types import Affine, AffineReluNet
from verirepair.network import Network, load_network
from verirepair.spec_types import Box, Halfspaces, Spec, SpecCase


def random_net(rng: np.random.Generator, n_in: int | None = None,
               n_out: int | None = None, hidden: list[int] | None = None,
               weight_scale: float = 1.0) -> AffineReluNet:
    """1-4 inputs, 1-3 hidden layers of 2-8 neurons, 1-4 outputs; float32-exact weights."""
    n_in = int(rng.integers(1, 5)) if n_in is None else n_in
    n_out = int(rng.integers(1, 5)) if n_out is None else n_out
    if hidden is None:
        hidden = [int(rng.integers(2, 9)) for _ in range(int(rng.integers(1, 4)))]
    sizes = [n_in, *hidden, n_out]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        w = (weight_scale * rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32)
        bias = (0.5 * weight_scale * rng.standard_normal(b)).astype(np.float32)
        if rng.random() < 0.2:  # some exact zeros (dead connections) now and then
            w[rng.random(w.shape) < 0.3] = 0.0
        layers.append(Affine(weight=w.astype(np.float64), bias=bias.astype(np.float64)))
    return AffineReluNet(tuple(layers))


def to_onnx(net: AffineReluNet) -> onnx.ModelProto:
    """MatMul + Add (+ Relu) per layer; input 'x' of shape [1, n_in], output 'y'."""
    nodes, inits = [], []
    current = "x"
    last = len(net.layers) - 1
    for i, layer in enumerate(net.layers):
        w_name, b_name = f"W{i}", f"B{i}"
        inits.append(numpy_helper.from_array(layer.weight.T.astype(np.float32), w_name))
        inits.append(numpy_helper.from_array(layer.bias.astype(np.float32), b_name))
        mm, add = f"mm{i}", ("y" if i == last else f"add{i}")
        nodes.append(helper.make_node("MatMul", [current, w_name], [mm], name=f"MatMul{i}"))
        nodes.append(helper.make_node("Add", [mm, b_name], [add], name=f"Add{i}"))
        current = add
        if i < last:
            relu = f"relu{i}"
            nodes.append(helper.make_node("Relu", [current], [relu], name=f"Relu{i}"))
            current = relu
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, net.n_inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, net.n_outputs])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def export_and_load(net: AffineReluNet, path: Path) -> Network:
    """Write ``net`` as ONNX to ``path``, load it back, and check the lowering is exact."""
    onnx.save(to_onnx(net), str(path))
    network = load_network(path)
    assert len(network.net.layers) == len(net.layers)
    for got, want in zip(network.net.layers, net.layers):
        assert got.weight.dtype == np.float64 and got.bias.dtype == np.float64
        np.testing.assert_array_equal(got.weight, want.weight)
        np.testing.assert_array_equal(got.bias, want.bias)
    return network


def random_box(rng: np.random.Generator, n_in: int, zero_width_prob: float = 0.15,
               tiny_prob: float = 0.1, float32_points: bool = False) -> Box:
    """A random box in roughly [-2, 2]^n; some dimensions zero-width or tiny.

    Bounds are arbitrary float64 values. With ``float32_points`` every dimension is
    guaranteed to contain float32 values: zero-width dimensions sit on a float32 value
    and no dimension is tiny (a box without float32 points has no counterexample that
    onnxruntime could confirm, so no engine can answer "violated" on it).
    """
    centre = rng.uniform(-1.0, 1.0, n_in)
    radius = rng.uniform(0.0, 1.0, n_in)
    kind = rng.random(n_in)
    zero = kind < zero_width_prob
    tiny = (~zero) & (kind < zero_width_prob + tiny_prob)
    if float32_points:
        centre = np.where(zero, centre.astype(np.float32).astype(np.float64), centre)
        tiny[:] = False
        radius = np.maximum(radius, 1e-3)
    radius = np.where(zero, 0.0, np.where(tiny, radius * 1e-7, radius))
    return Box(lower=centre - radius, upper=centre + radius)


def sample_box(rng: np.random.Generator, box: Box, n: int) -> np.ndarray:
    return box.lower + (box.upper - box.lower) * rng.random((n, box.dim))


def corners(box: Box) -> np.ndarray:
    n = box.dim
    bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1
    return np.where(bits == 1, box.upper, box.lower)


def hidden_preactivations(net: AffineReluNet, x: np.ndarray) -> list[np.ndarray]:
    """Pre-activations of every hidden layer, float64, for a batch (N, n_in)."""
    pre = []
    h = np.asarray(x, dtype=np.float64)
    for layer in net.layers[:-1]:
        z = h @ layer.weight.T + layer.bias
        pre.append(z)
        h = np.maximum(z, 0.0)
    return pre


def random_rows(rng: np.random.Generator, n_rows: int, n_out: int) -> np.ndarray:
    """Spec rows: a mix of dense random rows, single outputs and VNN-LIB-style y_i - y_j."""
    rows = np.zeros((n_rows, n_out))
    for r in range(n_rows):
        kind = rng.random()
        if kind < 0.4 or n_out == 1:
            rows[r] = rng.standard_normal(n_out)
            if kind < 0.2:
                rows[r] = np.sign(rows[r]) * (np.abs(rows[r]) > 0.5)
                if not rows[r].any():
                    rows[r, int(rng.integers(n_out))] = 1.0
        elif kind < 0.7:
            rows[r, int(rng.integers(n_out))] = rng.choice([-1.0, 1.0])
        else:
            i, j = rng.choice(n_out, 2, replace=False)
            rows[r, i], rows[r, j] = 1.0, -1.0
    return rows.astype(np.float32).astype(np.float64)


def random_case(rng: np.random.Generator, net: AffineReluNet, n_samples: int = 256
                ) -> SpecCase:
    """A random box and 1-3 disjuncts of 1-2 rows; thresholds from the sampled outputs.

    Each threshold d is placed relative to the sampled range of its row on the box: most
    of the time a bit below the sampled minimum (so the answer is not decided by the
    samples and needs a proof or a real search), sometimes inside the range.
    """
    box = random_box(rng, net.n_inputs, float32_points=True)
    y = net.forward(np.vstack([sample_box(rng, box, n_samples), corners(box)]))
    disjuncts = []
    for _ in range(int(rng.integers(1, 4))):
        c = random_rows(rng, int(rng.integers(1, 3)), net.n_outputs)
        vals = y @ c.T
        lo, hi = vals.min(0), vals.max(0)
        spread = np.maximum(hi - lo, 1e-3)
        u = rng.uniform(-0.25, 0.25, c.shape[0])
        if rng.random() < 0.25:  # hug the sampled minimum: boundary cases
            u = rng.uniform(-0.02, 0.0, c.shape[0])
        d = lo + u * spread
        disjuncts.append(Halfspaces(matrix=c, rhs=d))
    return SpecCase(box=box, unsafe=tuple(disjuncts))


def spec_of(net: AffineReluNet, *cases: SpecCase) -> Spec:
    return Spec(n_inputs=net.n_inputs, n_outputs=net.n_outputs, cases=tuple(cases),
                source="<random>")


def random_spec(rng: np.random.Generator, net: AffineReluNet) -> Spec:
    """One case (sometimes two) from :func:`random_case`."""
    n_cases = 2 if rng.random() < 0.2 else 1
    return spec_of(net, *[random_case(rng, net) for _ in range(n_cases)])


def describe(net: AffineReluNet, spec: Spec) -> str:
    """A reproducer: the exact weights and the spec, as Python literals (repr of floats)."""
    lines = ["layers = ["]
    for layer in net.layers:
        lines.append(f"  (np.array({layer.weight.tolist()!r}),")
        lines.append(f"   np.array({layer.bias.tolist()!r})),")
    lines.append("]")
    for i, case in enumerate(spec.cases):
        lines.append(f"case {i}: lower={case.box.lower.tolist()!r} "
                     f"upper={case.box.upper.tolist()!r}")
        for k, hs in enumerate(case.unsafe):
            lines.append(f"  disjunct {k}: C={hs.matrix.tolist()!r} d={hs.rhs.tolist()!r}")
    return "\n".join(lines)
