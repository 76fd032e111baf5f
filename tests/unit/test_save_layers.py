"""patched_layers / layer_initializers: several layers of the ORIGINAL ONNX graph replaced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from verirepair.errors import ModelError
from verirepair.net_types import Affine, AffineReluNet
from verirepair.network import load_network, onnx_session
from verirepair.repair.save import (last_layer_initializers, layer_initializers,
                                    patched_layers, patched_model, save_temp)

SIZES = (3, 5, 4, 2)


def _weights(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """float32-exact (weight (out, in), bias) per layer."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((b, a)).astype(np.float32),
             rng.standard_normal(b).astype(np.float32)) for a, b in zip(SIZES[:-1], SIZES[1:])]


def _model(seed: int = 0, named: bool = True) -> onnx.ModelProto:
    """x -> MatMul+Add -> Relu -> Gemm(transB=1) -> Relu -> MatMul+Add -> y."""
    (w0, b0), (w1, b1), (w2, b2) = _weights(seed)

    def node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output], name=output.upper() if named else "",
                                **attrs)

    inits = [numpy_helper.from_array(w0.T.copy(), "W0"), numpy_helper.from_array(b0, "B0"),
             numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "B1"),
             numpy_helper.from_array(w2.T.copy(), "W2"), numpy_helper.from_array(b2, "B2")]
    nodes = [node("MatMul", ["x", "W0"], "m0"), node("Add", ["m0", "B0"], "a0"),
             node("Relu", ["a0"], "r0"),
             node("Gemm", ["r0", "W1", "B1"], "g1", transB=1), node("Relu", ["g1"], "r1"),
             node("MatMul", ["r1", "W2"], "m2"), node("Add", ["m2", "B2"], "y")]
    graph = helper.make_graph(
        nodes, "layers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _load(tmp_path: Path, model: onnx.ModelProto, name: str = "m.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return load_network(path)


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = onnx_session(model)
    return np.stack([sess.run(None, {"x": row.reshape(1, -1)})[0].reshape(-1)
                     for row in x.astype(np.float32)])


def _new_values(network, seed: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {i: (layer.weight + 0.5 * rng.standard_normal(layer.weight.shape),
                layer.bias + 0.5 * rng.standard_normal(layer.bias.shape))
            for i, layer in enumerate(network.net.layers)}


def _patched_net(net: AffineReluNet, new: dict[int, tuple[np.ndarray, np.ndarray]]
                 ) -> AffineReluNet:
    layers = list(net.layers)
    for i, (w, b) in new.items():
        layers[i] = Affine(weight=w.astype(np.float32).astype(np.float64),
                           bias=b.astype(np.float32).astype(np.float64))
    return AffineReluNet(tuple(layers))


def test_one_segment_per_layer(tmp_path: Path) -> None:
    network = _load(tmp_path, _model())
    assert len(network.segments) == len(network.net.layers) == 3
    assert layer_initializers(network, 0) == ("W0", "B0", False)
    assert layer_initializers(network, 1) == ("W1", "B1", True)
    assert layer_initializers(network, 2) == ("W2", "B2", False)
    assert layer_initializers(network, -1) == last_layer_initializers(network)


@pytest.mark.parametrize("named", [True, False])
@pytest.mark.parametrize("layers", [(0, 2), (1, -1), (0, 1, 2)])
def test_patched_layers_match_lowered_forward(tmp_path: Path, named: bool,
                                              layers: tuple[int, ...]) -> None:
    model = _model(named=named)
    network = _load(tmp_path, model)
    before = network.model.SerializeToString()
    values = _new_values(network, seed=1)
    new = {i: values[i % 3] for i in layers}
    patched = patched_layers(network, new)
    assert network.model.SerializeToString() == before  # original untouched
    tmp = save_temp(patched, tmp_path / "out.onnx")
    reloaded = load_network(tmp)
    want_net = _patched_net(network.net, {i % 3: v for i, v in new.items()})
    for got, want in zip(reloaded.net.layers, want_net.layers):
        np.testing.assert_array_equal(got.weight, want.weight)
        np.testing.assert_array_equal(got.bias, want.bias)
    x = np.random.default_rng(2).uniform(-2, 2, (32, 3)).astype(np.float32)
    want = want_net.forward(x.astype(np.float64))
    np.testing.assert_allclose(_ort(patched, x), want, rtol=1e-5, atol=1e-5)
    assert np.abs(want - network.net.forward(x.astype(np.float64))).max() > 1e-2


def test_patched_model_is_last_layer_only(tmp_path: Path) -> None:
    network = _load(tmp_path, _model())
    w, b = _new_values(network, seed=3)[2]
    a = patched_model(network, w, b)
    c = patched_layers(network, {2: (w, b)})
    assert a.SerializeToString() == c.SerializeToString()
    got = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    orig = {i.name: numpy_helper.to_array(i) for i in network.model.graph.initializer}
    for name in ("W0", "B0", "W1", "B1"):
        np.testing.assert_array_equal(got[name], orig[name])
    np.testing.assert_array_equal(got["W2"], w.T.astype(np.float32))


def test_bad_layer_index_and_shape(tmp_path: Path) -> None:
    network = _load(tmp_path, _model())
    with pytest.raises(ModelError, match="layer 3 does not exist"):
        layer_initializers(network, 3)
    w, b = _new_values(network, seed=4)[0]
    with pytest.raises(ModelError, match="W0"):
        patched_layers(network, {0: (w[:, :-1], b)})


def test_shared_initializer_is_refused(tmp_path: Path) -> None:
    model = _model()
    # the first layer's bias is also used by an extra Add on the constant path
    extra = helper.make_node("Add", ["B0", "B0"], ["unused"], name="EXTRA")
    model.graph.node.insert(0, extra)
    network = _load(tmp_path, model)
    with pytest.raises(ModelError, match="layer 0's initializers are shared"):
        layer_initializers(network, 0)
    assert layer_initializers(network, 2) == ("W2", "B2", False)
