"""The ONNX lowering in :mod:`verirepair.network` agrees with onnxruntime.

Every test builds a small ONNX graph in code (opset 13, float32), loads it with
``load_network`` and compares the lowered float64 ``AffineReluNet`` with onnxruntime on the
original model, on random float32 inputs. One test per operator or graph feature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from verirepair.errors import ModelError
from verirepair.network import Network, load_network, run_onnxruntime

N_SAMPLES = 64
RTOL = 1e-5


# --------------------------------------------------------------------------- helpers

def rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    """float32 values uniform in [-scale, scale]."""
    return (rng.uniform(-scale, scale, size=shape)).astype(np.float32)


def init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def shape_init(name: str, shape: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(shape, dtype=np.int64), name)


def save_model(tmp_path: Path, nodes: list[onnx.NodeProto], in_shape: list[int],
               out_shape: list[int] | None, inits: list[onnx.TensorProto],
               inits_as_inputs: bool = False, name: str = "m.onnx") -> Path:
    """Build a one-input, one-output graph ``input -> ... -> output`` and save it."""
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)]
    if inits_as_inputs:  # like the ACAS Xu files (IR version 3 style)
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in inits]
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(nodes, "g", inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def assert_agrees(network: Network, x: np.ndarray) -> np.ndarray:
    """Lowered forward (float64 on float32 inputs) equals onnxruntime on every row."""
    x = np.asarray(x, dtype=np.float32)
    ours = network.net.forward(x.astype(np.float64))
    ort = run_onnxruntime(network, x)
    assert ours.shape == ort.shape == (x.shape[0], network.n_outputs)
    scale = max(1.0, float(np.max(np.abs(ort))))
    np.testing.assert_allclose(ours, ort, rtol=RTOL, atol=RTOL * scale)
    return ort


def check(path: Path, n_inputs: int, n_outputs: int, seed: int = 0,
          scale: float = 1.0) -> Network:
    """Load ``path`` and compare with onnxruntime on ``N_SAMPLES`` random inputs."""
    network = load_network(path)
    assert (network.n_inputs, network.n_outputs) == (n_inputs, n_outputs)
    x = rand(np.random.default_rng(seed), N_SAMPLES, n_inputs, scale=scale)
    y = assert_agrees(network, x)
    # the test is only meaningful if the output actually varies with the input
    assert np.ptp(y, axis=0).max() > 1e-3
    return network


def mlp_nodes(first_input: str, sizes: list[int], rng: np.random.Generator,
              final_relu: bool = False) -> tuple[list, list]:
    """MatMul+Add(+Relu) layers from ``first_input`` to ``output``."""
    nodes, inits = [], []
    cur = first_input
    for k, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        last = k == len(sizes) - 2
        inits += [init(f"W{k}", rand(rng, n_in, n_out)), init(f"B{k}", rand(rng, n_out))]
        nodes.append(helper.make_node("MatMul", [cur, f"W{k}"], [f"mm{k}"], name=f"mm{k}"))
        add_out = "output" if last and not final_relu else f"add{k}"
        nodes.append(helper.make_node("Add", [f"mm{k}", f"B{k}"], [add_out], name=f"add{k}"))
        cur = add_out
        if not last or final_relu:
            relu_out = "output" if last else f"relu{k}"
            nodes.append(helper.make_node("Relu", [add_out], [relu_out], name=f"relu{k}"))
            cur = relu_out
    return nodes, inits


# --------------------------------------------------------------------------- MatMul / Gemm

def test_matmul_add_relu_chain(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    nodes, inits = mlp_nodes("input", [4, 8, 6, 3], rng)
    path = save_model(tmp_path, nodes, [1, 4], [1, 3], inits)
    network = check(path, 4, 3)
    assert len(network.net.layers) == 3
    assert [len(s.node_names) for s in network.segments] == [2, 2, 2]


def test_lowered_first_layer_equals_float32_initializer_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    nodes, inits = mlp_nodes("input", [5, 7, 2], rng)
    path = save_model(tmp_path, nodes, [1, 5], [1, 2], inits)
    network = load_network(path)
    w0 = numpy_helper.to_array(inits[0])
    b0 = numpy_helper.to_array(inits[1])
    first = network.net.layers[0]
    assert first.weight.dtype == np.float64
    np.testing.assert_array_equal(first.weight, w0.astype(np.float64).T)
    np.testing.assert_array_equal(first.bias, b0.astype(np.float64))
    assert np.all(first.weight.astype(np.float32).astype(np.float64) == first.weight)
    assert network.segments[0].initializers == ("W0", "B0")


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, -2.0)])
@pytest.mark.parametrize("with_c", [True, False])
def test_gemm(tmp_path: Path, trans_b: int, alpha: float, beta: float, with_c: bool) -> None:
    rng = np.random.default_rng(3)
    w = rand(rng, 4, 6)  # (in, out)
    b = w.T.copy() if trans_b else w
    inits = [init("B", b)]
    gemm_in = ["h", "B"]
    if with_c:
        inits.append(init("C", rand(rng, 6)))
        gemm_in.append("C")
    nodes = [
        helper.make_node("Relu", ["input"], ["h"], name="relu_in"),
        helper.make_node("Gemm", gemm_in, ["output"], name="gemm", alpha=alpha, beta=beta,
                         transB=trans_b),
    ]
    # a leading Relu on the input makes the first layer the identity; also test
    # Gemm directly on the input
    path = save_model(tmp_path, nodes, [1, 4], [1, 6], inits)
    check(path, 4, 6)
    direct = [helper.make_node("Gemm", ["input"] + gemm_in[1:], ["output"], name="gemm",
                               alpha=alpha, beta=beta, transB=trans_b)]
    path2 = save_model(tmp_path, direct, [1, 4], [1, 6], inits, name="direct.onnx")
    check(path2, 4, 6)


# --------------------------------------------------------------------------- elementwise

def test_sub_and_div_by_constants(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    mean = rand(rng, 1, 5)
    std = (rng.uniform(0.5, 3.0, size=(5,))).astype(np.float32)
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centred"], name="sub"),
        helper.make_node("Div", ["centred", "std"], ["scaled"], name="div"),
    ]
    more, inits = mlp_nodes("scaled", [5, 6, 3], rng)
    path = save_model(tmp_path, nodes + more, [1, 5], [1, 3],
                      [init("mean", mean), init("std", std)] + inits)
    check(path, 5, 3, scale=3.0)


def test_constant_minus_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    c = rand(rng, 5, scale=2.0)
    nodes = [helper.make_node("Sub", ["c", "input"], ["d"], name="sub_rev")]
    more, inits = mlp_nodes("d", [5, 6, 3], rng)
    path = save_model(tmp_path, nodes + more, [1, 5], [1, 3], [init("c", c)] + inits)
    network = check(path, 5, 3)
    # the linear part of c - x is -I
    x = rand(rng, 3, 5)
    rev_only = [helper.make_node("Sub", ["c", "input"], ["output"], name="sub_rev")]
    path2 = save_model(tmp_path, rev_only, [1, 5], [1, 5], [init("c", c)], name="rev.onnx")
    net2 = load_network(path2)
    np.testing.assert_array_equal(net2.net.layers[0].weight, -np.eye(5))
    np.testing.assert_array_equal(net2.net.forward(x.astype(np.float64)),
                                  c.astype(np.float64) - x.astype(np.float64))
    assert network.n_inputs == 5


def test_add_constant_first_operand(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Add", ["c", "input"], ["a"], name="add_rev")]
    more, inits = mlp_nodes("a", [4, 5, 2], rng)
    path = save_model(tmp_path, nodes + more, [1, 4], [1, 2],
                      [init("c", rand(rng, 4))] + inits)
    check(path, 4, 2)


def test_mul_by_constant(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Mul", ["input", "s"], ["m1"], name="mul_vec"),
        helper.make_node("Mul", ["k", "m1"], ["m2"], name="mul_scalar_first"),
    ]
    more, inits = mlp_nodes("m2", [4, 6, 3], rng)
    path = save_model(tmp_path, nodes + more, [1, 4], [1, 3],
                      [init("s", rand(rng, 4, scale=3.0)),
                       init("k", np.array(-1.5, np.float32))] + inits)
    check(path, 4, 3)


# --------------------------------------------------------------------------- shapes

def test_flatten_of_acasxu_style_input_with_initializers_as_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    nodes = [
        helper.make_node("Sub", ["input", "avg"], ["centred"], name="sub"),
        helper.make_node("Flatten", ["centred"], ["flat"], name="flatten", axis=1),
    ]
    more, inits = mlp_nodes("flat", [5, 8, 8, 5], rng)
    inits = [init("avg", np.zeros((1, 1, 1, 5), np.float32) + 0.25)] + inits
    path = save_model(tmp_path, nodes + more, [1, 1, 1, 5], [1, 5], inits,
                      inits_as_inputs=True)
    network = check(path, 5, 5)
    assert network.input_name == "input"
    assert network.input_shape == (1, 1, 1, 5)


@pytest.mark.parametrize("target", [[1, -1], [-1]], ids=["1x-1", "-1"])
def test_reshape(tmp_path: Path, target: list[int]) -> None:
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["flat"], name="reshape")]
    more, inits = mlp_nodes("flat", [6, 7, 3], rng)
    out_shape = [1, 3] if len(target) == 2 else [3]
    path = save_model(tmp_path, nodes + more, [1, 2, 3], out_shape,
                      [shape_init("shape", target)] + inits)
    check(path, 6, 3)


def test_identity_and_dropout(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    nodes = [
        helper.make_node("Identity", ["input"], ["i1"], name="identity"),
        helper.make_node("Dropout", ["i1"], ["d1"], name="dropout"),
    ]
    more, inits = mlp_nodes("d1", [4, 6, 3], rng)
    relu_pos = [i for i, n in enumerate(more) if n.op_type == "Relu"][0]
    more.insert(relu_pos + 1, helper.make_node("Dropout", ["relu0"], ["relu0_d"],
                                               name="dropout2"))
    more[relu_pos + 2].input[0] = "relu0_d"  # the next MatMul reads the Dropout output
    path = save_model(tmp_path, nodes + more, [1, 4], [1, 3], inits)
    check(path, 4, 3)


def test_constant_node_supplies_weight(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    w = rand(rng, 4, 5)
    b = rand(rng, 5)
    nodes = [
        helper.make_node("Constant", [], ["W"], name="const_w",
                         value=numpy_helper.from_array(w, "W")),
        helper.make_node("Constant", [], ["Bc"], name="const_b",
                         value=numpy_helper.from_array(b, "Bc")),
        helper.make_node("MatMul", ["input", "W"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "Bc"], ["h"], name="add"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "W2"], ["output"], name="mm2"),
    ]
    path = save_model(tmp_path, nodes, [1, 4], [1, 3], [init("W2", rand(rng, 5, 3))])
    network = check(path, 4, 3)
    np.testing.assert_array_equal(network.net.layers[0].weight, w.astype(np.float64).T)


def test_transpose_keeping_batch_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    nodes = [
        helper.make_node("Transpose", ["input"], ["t"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("Flatten", ["t"], ["flat"], name="flatten", axis=1),
    ]
    more, inits = mlp_nodes("flat", [6, 5, 2], rng)
    path = save_model(tmp_path, nodes + more, [1, 2, 3], [1, 2], inits)
    network = check(path, 6, 2)
    # the transpose is a permutation: pure input 0 of the ONNX layout (row-major [1,2,3])
    nodes_only = [helper.make_node("Transpose", ["input"], ["output"], name="transpose",
                                   perm=[0, 2, 1])]
    path2 = save_model(tmp_path, nodes_only, [1, 2, 3], [1, 3, 2], [], name="t.onnx")
    net2 = load_network(path2)
    x = np.arange(6, dtype=np.float64).reshape(1, 6)
    np.testing.assert_array_equal(net2.net.forward(x), [[0, 3, 1, 4, 2, 5]])
    assert network.n_inputs == 6


# --------------------------------------------------------------------------- convolution

def conv_head(rng: np.random.Generator, conv_out: int, n_flat: int) -> tuple[list, list]:
    """Relu -> Flatten -> Gemm(transB=1) after the tensor ``conv``."""
    nodes = [
        helper.make_node("Relu", ["conv"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "Wg", "Bg"], ["output"], name="gemm", transB=1),
    ]
    inits = [init("Wg", rand(rng, 3, n_flat)), init("Bg", rand(rng, 3))]
    return nodes, inits


@pytest.mark.parametrize("strides,pads,out_hw", [
    ([2, 2], [1, 1, 1, 1], 3),
    ([1, 1], [1, 0, 0, 2], (5, 6)),
    ([2, 1], [0, 2, 1, 0], (3, 6)),
], ids=["stride2-pad1", "asym-pads", "asym-stride-pads"])
def test_conv_relu_flatten_gemm(tmp_path: Path, strides: list[int], pads: list[int],
                                out_hw: int | tuple[int, int]) -> None:
    rng = np.random.default_rng(13)
    h, w = (out_hw, out_hw) if isinstance(out_hw, int) else out_hw
    channels = 2
    conv = helper.make_node("Conv", ["input", "Wc", "Bc"], ["conv"], name="conv",
                            kernel_shape=[3, 3], strides=strides, pads=pads)
    head, head_inits = conv_head(rng, channels, channels * h * w)
    inits = [init("Wc", rand(rng, channels, 1, 3, 3)), init("Bc", rand(rng, channels))]
    path = save_model(tmp_path, [conv] + head, [1, 1, 6, 6], [1, 3], inits + head_inits)
    check(path, 36, 3)


def test_batchnorm_after_conv(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    channels = 2
    nodes = [
        helper.make_node("Conv", ["input", "Wc"], ["c0"], name="conv", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c0", "scale", "bias", "mean", "var"],
                         ["conv"], name="bn", epsilon=1e-3),
    ]
    head, head_inits = conv_head(rng, channels, channels * 9)
    inits = [
        init("Wc", rand(rng, channels, 1, 3, 3)),
        init("scale", rand(rng, channels, scale=2.0)),
        init("bias", rand(rng, channels)),
        init("mean", rand(rng, channels)),
        init("var", rng.uniform(0.1, 2.0, size=channels).astype(np.float32)),
    ]
    path = save_model(tmp_path, nodes + head, [1, 1, 6, 6], [1, 3], inits + head_inits)
    check(path, 36, 3)


# --------------------------------------------------------------------------- ReLU placement

def test_net_ending_in_relu(tmp_path: Path) -> None:
    rng = np.random.default_rng(15)
    nodes, inits = mlp_nodes("input", [4, 6, 5], rng, final_relu=True)
    path = save_model(tmp_path, nodes, [1, 4], [1, 5], inits)
    network = check(path, 4, 5)
    x = rand(rng, N_SAMPLES, 4)
    assert np.all(network.net.forward(x) >= 0.0)


def test_two_consecutive_relus(tmp_path: Path) -> None:
    rng = np.random.default_rng(16)
    nodes, inits = mlp_nodes("input", [4, 6, 3], rng)
    relu_pos = [i for i, n in enumerate(nodes) if n.op_type == "Relu"][0]
    nodes.insert(relu_pos + 1, helper.make_node("Relu", ["relu0"], ["relu0b"], name="relu_b"))
    nodes[relu_pos + 2].input[0] = "relu0b"
    path = save_model(tmp_path, nodes, [1, 4], [1, 3], inits)
    check(path, 4, 3)


def test_relu_directly_on_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(17)
    nodes, inits = mlp_nodes("r_in", [4, 6, 3], rng)
    nodes.insert(0, helper.make_node("Relu", ["input"], ["r_in"], name="relu_in"))
    path = save_model(tmp_path, nodes, [1, 4], [1, 3], inits)
    check(path, 4, 3)


# --------------------------------------------------------------------------- ACAS Xu

@pytest.mark.parametrize("ab", ["1_1", "2_9", "5_3"])
def test_acasxu_networks_agree_with_onnxruntime(benchmarks_dir: Path, ab: str) -> None:
    path = benchmarks_dir / "acasxu" / f"ACASXU_run2a_{ab}_batch_2000.onnx"
    network = load_network(path)
    assert (network.n_inputs, network.n_outputs) == (5, 5)
    assert len(network.net.layers) == 7
    x = np.random.default_rng(18).uniform(-0.5, 0.5, size=(200, 5)).astype(np.float32)
    assert_agrees(network, x)


# --------------------------------------------------------------------------- sharing

def test_constant_computed_from_constants_may_feed_two_nodes(tmp_path: Path) -> None:
    """A derived constant (Mul of two initializers) used by two layers is not branching."""
    rng = np.random.default_rng(19)
    nodes = [
        helper.make_node("Mul", ["Q", "two"], ["Q2"], name="scale_q"),
        helper.make_node("MatMul", ["input", "Q2"], ["a"], name="mm1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "Q2"], ["output"], name="mm2"),
    ]
    inits = [init("Q", rand(rng, 5, 5)), init("two", np.array(2.0, np.float32))]
    path = save_model(tmp_path, nodes, [1, 5], [1, 5], inits)
    check(path, 5, 5)


def test_input_dependent_tensor_feeding_two_nodes_is_rejected(tmp_path: Path) -> None:
    rng = np.random.default_rng(20)
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "h"], ["output"], name="residual"),
    ]
    path = save_model(tmp_path, nodes, [1, 4], [1, 4], [init("W", rand(rng, 4, 4))])
    with pytest.raises(ModelError, match="'h' feeds 2 nodes"):
        load_network(path)


# ------------------------------------- constructs the lowering used to get wrong silently

def test_gemm_whose_c_is_the_running_tensor_is_rejected(tmp_path: Path) -> None:
    """y = r W^T + r: C was dropped from the lowering (a wrong 'holds' followed)."""
    w = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    nodes = [helper.make_node("Relu", ["input"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "W", "r"], ["output"], name="gemm", transB=1)]
    path = save_model(tmp_path, nodes, [1, 2], [1, 2], [init("W", w)])
    with pytest.raises(ModelError, match="'r' feeds 2 nodes"):
        load_network(path)


@pytest.mark.parametrize("op, const_shape, out_shape", [("Add", [2, 1, 2], [2, 1, 2]),
                                                        ("Mul", [2, 1], [2, 2]),
                                                        ("Sub", [3, 2], [3, 2])])
def test_broadcasts_that_change_the_running_shape_are_lowered_exactly(
        tmp_path: Path, op: str, const_shape: list[int], out_shape: list[int]) -> None:
    """relu(x) (shape [1, 2]) op c: a constant that adds a dimension or grows the leading
    dimension (once mixed with the lowering's basis axis, a wrong 'holds'; then refused)
    is computed as onnxruntime computes it: the basis axis is separate from every ONNX
    dimension."""
    rng = np.random.default_rng(31)
    nodes = [helper.make_node("Relu", ["input"], ["r"], name="relu"),
             helper.make_node(op, ["r", "c"], ["output"], name="op")]
    path = save_model(tmp_path, nodes, [1, 2], out_shape,
                      [init("c", rand(rng, *const_shape, scale=2.0))])
    check(path, 2, int(np.prod(out_shape)))


def test_a_rank_1_tensor_is_not_taken_for_a_batch(tmp_path: Path) -> None:
    """Reshape to [-1] leaves a rank-1 tensor (4,); Reshape [0, 1, -1] then copies its 4
    (onnxruntime: four length-1 signals, shape (4, 1, 1)). Lowered as if a batch of 1
    led the tensor, the Conv saw one length-4 signal: outputs 250.5 / 300.5 instead of
    100.5 at x = 200, and `check` said 'holds' behind a ReLU gate that the load-time
    comparison with onnxruntime never opened."""
    nodes = [helper.make_node("Add", ["input", "gate"], ["g"], name="gate"),
             helper.make_node("Relu", ["g"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "flat"], ["v"], name="flat"),
             helper.make_node("Reshape", ["v", "sig"], ["s"], name="signals"),
             helper.make_node("Conv", ["s", "Wc", "Bc"], ["c"], name="conv",
                              kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Reshape", ["c", "row"], ["output"], name="row")]
    inits = [init("gate", np.full(4, -150.0, dtype=np.float32)),
             shape_init("flat", [-1]), shape_init("sig", [0, 1, -1]),
             init("Wc", np.array([[[1.0, 2.0, 3.0]]], dtype=np.float32)),
             init("Bc", np.array([0.5], dtype=np.float32)), shape_init("row", [1, -1])]
    path = save_model(tmp_path, nodes, [1, 4], [1, 4], inits)
    network = load_network(path)
    x = np.array([[200.0, 200.0, 200.0, 200.0], [151.0, 170.0, 190.0, 210.0]])
    np.testing.assert_array_equal(assert_agrees(network, x)[0], [100.5] * 4)
    # and a rank-1 graph input flattened with axis 1: (4,) -> (4, 1), then (4, 1) @ (1, 3)
    nodes = [helper.make_node("Flatten", ["input"], ["f"], name="flatten", axis=1),
             helper.make_node("MatMul", ["f", "W"], ["output"], name="mm")]
    path = save_model(tmp_path, nodes, [4], [4, 3],
                      [init("W", rand(np.random.default_rng(2), 1, 3))], name="r1.onnx")
    check(path, 4, 12)


def test_flatten_with_axis_equal_to_the_rank(tmp_path: Path) -> None:
    """ONNX Flatten with axis = rank gives (N, 1): a constant (2, 3) becomes a (6, 1)
    weight."""
    rng = np.random.default_rng(32)
    nodes = [helper.make_node("Flatten", ["Wc"], ["W"], name="flatten", axis=2),
             helper.make_node("MatMul", ["input", "W"], ["output"], name="mm")]
    check(save_model(tmp_path, nodes, [1, 6], [1, 1], [init("Wc", rand(rng, 2, 3))]), 6, 1)


def test_constants_are_folded_in_float32_as_onnxruntime_does(tmp_path: Path) -> None:
    """(1e8 + 1) - 1e8 is 0 in float32 (1 in float64): the weight the model multiplies by."""
    nodes = [helper.make_node("Add", ["big", "one"], ["sum"], name="sum"),
             helper.make_node("Sub", ["sum", "big"], ["w"], name="w"),
             helper.make_node("Mul", ["input", "w"], ["output"], name="mul")]
    inits = [init("big", np.array([1e8], dtype=np.float32)),
             init("one", np.array([1.0], dtype=np.float32))]
    network = load_network(save_model(tmp_path, nodes, [1, 2], [1, 2], inits))
    assert not network.net.layers[0].weight.any()


def test_a_name_defined_twice_is_refused(tmp_path: Path) -> None:
    """An initializer W that a Constant node also defines: onnxruntime takes the node's
    value, a lowering reading the file in order took the initializer."""
    nodes = [helper.make_node("Relu", ["input"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W"], ["output"], name="mm"),
             helper.make_node("Constant", [], ["W"], name="five",
                              value=numpy_helper.from_array(5 * np.eye(2, dtype=np.float32)))]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])]
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph(nodes, "g", inputs, [output],
                              initializer=[init("W", np.eye(2, dtype=np.float32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "twice.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=r"node 'five' \(Constant\) defines 'W', which is "
                                         "already an initializer"):
        load_network(path)


@pytest.mark.parametrize("outputs, attrs", [(["output"], {"training_mode": 1}),
                                            (["output", "mean_out", "var_out"], {})])
def test_batchnorm_in_training_mode_is_rejected(tmp_path: Path, outputs: list[str],
                                                attrs: dict) -> None:
    """Training mode normalises with the batch's statistics (with batch 1 the output is
    the bias), not the stored ones."""
    nodes = [helper.make_node("Relu", ["input"], ["r"], name="relu"),
             helper.make_node("BatchNormalization", ["r", "scale", "bias", "mean", "var"],
                              outputs, name="bn", **attrs)]
    inits = [init(n, np.ones(2, dtype=np.float32)) for n in ("scale", "bias", "mean", "var")]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])]
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph(nodes, "g", inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    path = tmp_path / "bn.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="BatchNormalization .*training"):
        load_network(path)


def test_dropout_in_training_mode_is_rejected(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["input"], ["r"], name="relu"),
             helper.make_node("Dropout", ["r", "ratio", "mode"], ["output"], name="drop")]
    inits = [init("ratio", np.array(0.5, dtype=np.float32)), init("mode", np.array(True))]
    path = save_model(tmp_path, nodes, [1, 4], [1, 4], inits)
    with pytest.raises(ModelError, match="Dropout in training mode"):
        load_network(path)


def test_a_lowering_that_differs_from_onnxruntime_is_refused(tmp_path: Path) -> None:
    """The safety net behind every operator: load_network compares the lowered network
    with onnxruntime on seeded random inputs."""
    from dataclasses import replace

    from verirepair.net_types import Affine, AffineReluNet
    from verirepair.network import _check_against_onnxruntime, onnx_session

    rng = np.random.default_rng(21)
    nodes = [helper.make_node("MatMul", ["input", "W"], ["output"], name="mm")]
    path = save_model(tmp_path, nodes, [1, 3], [1, 2], [init("W", rand(rng, 3, 2))])
    network = load_network(path)  # agrees: no error
    layer = network.net.layers[0]
    off = AffineReluNet((Affine(layer.weight, layer.bias + 0.01),))
    with pytest.raises(ModelError, match="differs from onnxruntime"):
        _check_against_onnxruntime(replace(network, net=off), onnx_session(network.model))


def test_a_segment_too_large_to_lower_is_one_clear_error(tmp_path: Path) -> None:
    """One dense float64 matrix per segment: an operator that would hold more than the
    limit at once (running matrix + output) is refused, naming the node, before the
    memory is taken. Peaks of this [4, 8, 6, 3] MLP: 896 bytes at mm1 (8 x (8 + 6))."""
    rng = np.random.default_rng(3)
    nodes, inits = mlp_nodes("input", [4, 8, 6, 3], rng)
    path = save_model(tmp_path, nodes, [1, 4], [1, 3], inits)
    assert len(load_network(path, max_lowered_bytes=896).net.layers) == 3
    with pytest.raises(ModelError, match=r"node 'mm1' \(MatMul\): an affine segment maps 8 "
                                         r"to 6 values: .* more than"):
        load_network(path, max_lowered_bytes=895)
    with pytest.raises(ModelError, match=r"input 'input': an affine segment maps 4 to 4"):
        load_network(path, max_lowered_bytes=127)
    # all segments together: 256 + 384 bytes of closed layers + the 6 x 6 identity
    assert len(load_network(path, max_lowered_total=928).net.layers) == 3
    with pytest.raises(ModelError, match=r"node 'relu1' \(Relu\): the lowered layers "
                                         r"would need"):
        load_network(path, max_lowered_total=927)


def test_a_huge_input_is_refused_without_allocating_its_identity(tmp_path: Path) -> None:
    n = 200_000  # the identity alone would take 320 GB
    w = np.zeros((n, 1), dtype=np.float32)
    node = helper.make_node("MatMul", ["input", "W"], ["output"], name="mm")
    path = save_model(tmp_path, [node], [1, n], [1, 1], [init("W", w)])
    with pytest.raises(ModelError, match=r"input 'input': an affine segment maps 200,000"):
        load_network(path)


def test_the_convolution_buffer_counts_towards_the_limit(tmp_path: Path) -> None:
    """Conv on 1x6x6 -> 2x3x3 (stride 2, pad 1): output 18 + running 36 values per row fit
    in 20,000 bytes, but not with the 81 im2col values (9 kernel positions x 9 outputs)."""
    rng = np.random.default_rng(13)
    conv = helper.make_node("Conv", ["input", "Wc", "Bc"], ["conv"], name="conv",
                            kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    head, head_inits = conv_head(rng, 2, 18)
    inits = [init("Wc", rand(rng, 2, 1, 3, 3)), init("Bc", rand(rng, 2))]
    path = save_model(tmp_path, [conv] + head, [1, 1, 6, 6], [1, 3], inits + head_inits)
    assert len(load_network(path, max_lowered_bytes=8 * 36 * (18 + 36 + 81)).net.layers) == 2
    with pytest.raises(ModelError, match=r"node 'conv' \(Conv\)"):
        load_network(path, max_lowered_bytes=20_000)


def test_a_hostile_padding_is_refused_before_it_is_allocated(tmp_path: Path) -> None:
    """pads of 10^6 on a 6x6 image would make one padded row of 10^12 values (8 TB):
    refused from the attributes alone, on the running tensor and on a constant."""
    rng = np.random.default_rng(13)
    huge = [10**6, 10**6, 10**6, 10**6]
    conv = helper.make_node("Conv", ["input", "Wc"], ["output"], name="conv",
                            kernel_shape=[3, 3], pads=huge)
    side = 6 + 2 * 10**6 - 2
    path = save_model(tmp_path, [conv], [1, 1, 6, 6], [1, 2, side, side],
                      [init("Wc", rand(rng, 2, 1, 3, 3))])
    with pytest.raises(ModelError,
                       match=r"node 'conv' \(Conv\): its inputs and attributes make a run"):
        load_network(path)
    const = helper.make_node("Conv", ["Xc", "Wc"], ["unused"], name="const_conv",
                             kernel_shape=[3, 3], pads=huge)
    relu = helper.make_node("Relu", ["input"], ["output"], name="relu")
    inits = [init("Xc", rand(rng, 1, 1, 6, 6)), init("Wc", rand(rng, 1, 1, 3, 3))]
    path = save_model(tmp_path, [const, relu], [1, 1, 6, 6], [1, 1, 6, 6], inits,
                      name="c.onnx")
    with pytest.raises(ModelError,
                       match=r"node 'const_conv' \(Conv\): its inputs and attributes"):
        load_network(path)


def test_the_lowering_is_compared_again_on_the_property_boxes(tmp_path: Path) -> None:
    """A difference behind a ReLU that the load-time points leave inactive (inputs of at
    most 100 against a threshold of 150) shows on the property's own box, and `verify`
    refuses to decide about the lowered function."""
    from dataclasses import replace

    from verirepair.net_types import Affine, AffineReluNet
    from verirepair.network import check_lowering_on_boxes
    from verirepair.spec import parse_vnnlib_text
    from verirepair.verify.engine import verify

    nodes = [helper.make_node("Add", ["input", "gate"], ["g"], name="gate"),
             helper.make_node("Relu", ["g"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W"], ["output"], name="mm")]
    inits = [init("gate", np.full(2, -150.0, dtype=np.float32)),
             init("W", np.eye(2, dtype=np.float32))]
    network = load_network(save_model(tmp_path, nodes, [1, 2], [1, 2], inits))
    box = (np.array([200.0, 200.0]), np.array([201.0, 201.0]))
    check_lowering_on_boxes(network, [box])  # the true lowering agrees
    first, last = network.net.layers
    wrong = replace(network, net=AffineReluNet((first, Affine(2 * last.weight, last.bias))))
    check_lowering_on_boxes(wrong, [(-box[1], -box[0])])  # gate closed: no difference
    with pytest.raises(ModelError, match="differs from onnxruntime .* on a point of the "
                                         "property's input box"):
        check_lowering_on_boxes(wrong, [(-box[1], -box[0]), box])
    spec = parse_vnnlib_text("(declare-const X_0 Real)(declare-const X_1 Real)"
                             "(declare-const Y_0 Real)(declare-const Y_1 Real)"
                             "(assert (>= X_0 200))(assert (<= X_0 201))"
                             "(assert (>= X_1 200))(assert (<= X_1 201))"
                             "(assert (<= Y_0 -1))")
    with pytest.raises(ModelError, match="differs from onnxruntime"):
        verify(wrong, spec)
    # a certificate that covers the whole box never calls verify(): compared there too
    from verirepair.verify.certificate import (Certificate, check_certificate,
                                               verify_with_certificate)

    cert = Certificate(box[0][None], box[1][None], np.array([0]), last.weight.copy(),
                       last.bias.copy())
    assert check_certificate(wrong.net, spec, cert).holds  # alone it would say holds
    with pytest.raises(ModelError, match="differs from onnxruntime"):
        verify_with_certificate(wrong, spec, cert, 10.0,
                                lambda *args: pytest.fail("the certificate covers it"))
    # a property that does not fit the model is still that, not an onnxruntime error
    from verirepair.errors import MismatchError

    one_input = parse_vnnlib_text("(declare-const X_0 Real)(declare-const Y_0 Real)"
                                  "(declare-const Y_1 Real)(assert (>= X_0 200))"
                                  "(assert (<= X_0 201))(assert (<= Y_0 -1))")
    with pytest.raises(MismatchError, match="declares 1 inputs"):
        verify_with_certificate(wrong, one_input, cert, 10.0,
                                lambda *args: pytest.fail("never reached"))


@pytest.mark.parametrize("node", [
    helper.make_node("Conv", ["Xc", "Wc", "r"], ["output"], name="op", kernel_shape=[1]),
    helper.make_node("BatchNormalization", ["Xc", "one", "one", "r", "one"], ["output"],
                     name="op")])
def test_the_running_tensor_only_as_a_data_input(tmp_path: Path, node) -> None:
    """As a Conv bias or a BatchNormalization mean the running tensor is not transformed
    the way the lowering applies an operator (its linear part would be dropped with the
    bias): refused, naming the input."""
    nodes = [helper.make_node("Relu", ["input"], ["r"], name="relu"), node]
    inits = [init("Xc", np.ones((1, 1, 3), dtype=np.float32)),
             init("Wc", np.ones((1, 1, 1), dtype=np.float32)),
             init("one", np.ones(1, dtype=np.float32))]
    path = save_model(tmp_path, nodes, [1], [1, 1, 3], inits)
    with pytest.raises(ModelError, match=r"node 'op' .*input-dependent tensor is input \d "
                                         r"\('r'\), where only a constant is supported"):
        load_network(path)


def test_an_output_onnxruntime_overflows_does_not_hide_the_others(tmp_path: Path) -> None:
    """Output 0 is 6e38 (inf in float32, for every input): it is left out of the
    comparison, output 1 is still compared."""
    from dataclasses import replace

    from verirepair.net_types import Affine, AffineReluNet
    from verirepair.network import _check_against_onnxruntime, onnx_session

    big = np.array([[3e38, 0.0]], dtype=np.float32)
    nodes = [helper.make_node("Add", ["input", "big"], ["a"], name="a"),
             helper.make_node("Add", ["a", "big"], ["output"], name="b")]
    network = load_network(save_model(tmp_path, nodes, [1, 2], [1, 2], [init("big", big)]))
    (layer,) = network.net.layers
    wrong = AffineReluNet((Affine(layer.weight, layer.bias + np.array([0.0, 0.5])),))
    with pytest.raises(ModelError, match="differs from onnxruntime"):
        _check_against_onnxruntime(replace(network, net=wrong), onnx_session(network.model))


def test_a_broadcast_that_grows_the_running_tensor_is_bounded_before_it_runs(
        tmp_path: Path) -> None:
    """(1,) + (k,1,1) + (1,k,1) + (1,1,k): a 3 KB file whose one-row run would hold k^3
    values; refused from the shapes alone (the meta device) before any is allocated."""
    k = 200
    shapes = [(k, 1, 1), (1, k, 1), (1, 1, k)]
    nodes = [helper.make_node("Add", ["input", "c0"], ["t0"], name="add0"),
             helper.make_node("Add", ["t0", "c1"], ["t1"], name="add1"),
             helper.make_node("Add", ["t1", "c2"], ["output"], name="add2")]
    inits = [init(f"c{i}", np.zeros(s, dtype=np.float32)) for i, s in enumerate(shapes)]
    path = save_model(tmp_path, nodes, [1], [k, k, k], inits)
    with pytest.raises(ModelError, match=r"node 'add2' \(Add\): its inputs and attributes "
                                         r"make a run of 8,000,000 values"):
        load_network(path, max_lowered_bytes=1e6)


def test_integer_constants_divide_as_whole_numbers(tmp_path: Path) -> None:
    """Div on int64 constants truncates (ONNX, onnxruntime): [5, -2] / [2, 2] * [2, 1] is
    the shape [4, -1], not [5, -1]; the reshapes and the transpose then put the inputs in
    onnxruntime's order (true division reordered them: a wrong 'holds')."""
    nodes = [helper.make_node("Div", ["a", "b"], ["q"], name="div"),
             helper.make_node("Mul", ["q", "c"], ["shape"], name="mul"),
             helper.make_node("Reshape", ["input", "shape"], ["m"], name="reshape"),
             helper.make_node("Transpose", ["m"], ["t"], name="transpose", perm=[1, 0]),
             helper.make_node("Reshape", ["t", "row"], ["output"], name="row")]
    inits = [shape_init("a", [5, -2]), shape_init("b", [2, 2]), shape_init("c", [2, 1]),
             shape_init("row", [1, -1])]
    check(save_model(tmp_path, nodes, [1, 20], [1, 20], inits), 20, 20)
    inits[1] = shape_init("b", [2, 0])
    path = save_model(tmp_path, nodes, [1, 20], [1, 20], inits, name="zero.onnx")
    with pytest.raises(ModelError, match=r"node 'div' \(Div\): integer Div by zero"):
        load_network(path)


def test_the_comparison_is_per_output_and_scale_free(tmp_path: Path) -> None:
    """A wrong output next to a much larger one, or every output tiny: both are caught
    (the scale was once the largest output of all, with a floor of 1)."""
    from dataclasses import replace

    from verirepair.net_types import Affine, AffineReluNet
    from verirepair.network import _check_against_onnxruntime, onnx_session

    w = np.array([[1000.0, 1e-7], [1000.0, 2e-7]], dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["input", "W"], ["output"], name="mm")]
    network = load_network(save_model(tmp_path, nodes, [1, 2], [1, 2], [init("W", w)]))
    (layer,) = network.net.layers
    for weight in (layer.weight * np.array([[1.0], [-1.0]]),  # output 1 negated
                   layer.weight * np.array([[1.0], [1.5]])):  # output 1 half again
        wrong = AffineReluNet((Affine(weight, layer.bias),))
        with pytest.raises(ModelError, match="differs from onnxruntime .* in output 1"):
            _check_against_onnxruntime(replace(network, net=wrong),
                                       onnx_session(network.model))


def test_a_malformed_constant_is_one_line(tmp_path: Path) -> None:
    bad = TensorProto(name="v", data_type=TensorProto.FLOAT, dims=[2],
                      raw_data=b"\0\0\0\0")  # 4 bytes for 2 floats
    nodes = [helper.make_node("Constant", [], ["c"], name="const", value=bad),
             helper.make_node("Add", ["input", "c"], ["output"], name="add")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "bad_const.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=r"node 'const' \(Constant\): malformed constant"):
        load_network(path)


def test_a_layer_wider_than_the_rounding_margin_covers_is_refused() -> None:
    """The bounds' margin covers float64 sums of at most MAX_SUM_TERMS terms. Under the
    default memory limits no lowering gets that wide (the basis pushed through a segment
    is n x n); the check stands for loads with larger limits."""
    from verirepair.bounds import MAX_SUM_TERMS
    from verirepair.net_types import Affine, AffineReluNet
    from verirepair.network import Segment, _check_widths

    wide = MAX_SUM_TERMS + 1
    net = AffineReluNet((Affine(np.ones((2, wide)), np.zeros(2)),))
    _check_widths(AffineReluNet((Affine(np.ones((2, wide - 1)), np.zeros(2)),)),
                  (Segment(("sum",), ("W",)),), "m.onnx")
    with pytest.raises(ModelError, match=f"node 'sum' lowers to a layer {wide} -> 2; "
                                         f"the rounding margin .* {MAX_SUM_TERMS} terms"):
        _check_widths(net, (Segment(("sum",), ("W",)),), "m.onnx")
