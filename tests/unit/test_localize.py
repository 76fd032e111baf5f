"""Fault localisation: the measure, CARE's interventions, Deep SHAP, every method's contract.

The planted-fault networks below have one neuron in the last hidden layer that is active
only in a corner of the input box and pushes the unsafe output up there: every violation
is caused by it, so a faithful causal attribution must blame it first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verirepair.errors import SpecError
from verirepair.localize import (LOCALIZERS, LocalizeOptions, NoBenignInputs, hidden_layers,
                                 localize, spec_measure, violation_measure)
from verirepair.localize.api import prepare
from verirepair.localize.causal import intervened_outputs, intervention_values
from verirepair.localize.measure import assign_cases, trace
from verirepair.localize.points import confirmed_sample, find_points, measure_points
from verirepair.localize.shap import measure_gradient, pair_attributions
from verirepair.net_types import Affine, AffineReluNet
from verirepair.network import load_network, torch_layers
from verirepair.spec import load_spec
from verirepair.spec_types import Box, Halfspaces, Spec, SpecCase
from verirepair.verify.problem import case_tensors

# --------------------------------------------------------------------------- fixtures

N_IN = 3
PLANTED_GAIN = 3.0  # weight of the planted neuron into the unsafe output


def planted_net(seed: int = 0, width: int = 10, corner: float = 1.0,
                planted: int = 7) -> AffineReluNet:
    """Two hidden layers on [-1, 1]^3; hidden neuron (1, ``planted``) causes the fault.

    Layer 0: ``relu(x + 1)`` pass-throughs for the inputs, then random neurons. Layer 1:
    random neurons and the planted one, ``relu(4 (x0 + x1 - corner))``. Outputs: y0 about
    1.5, y1 about 0 plus ``PLANTED_GAIN`` times the planted neuron; other weights are small.
    The property "y1 <= y0 is unsafe" is violated where x0 + x1 > corner + 0.125.
    Weights are float32-exact.
    """
    rng = np.random.default_rng(seed)
    w0 = 0.5 * rng.standard_normal((width, N_IN))
    b0 = 0.3 * rng.standard_normal(width)
    w0[:N_IN], b0[:N_IN] = np.eye(N_IN), 1.0
    w1 = 0.3 * rng.standard_normal((width, width))
    b1 = 0.3 * rng.standard_normal(width)
    w1[planted], b1[planted] = 0.0, -4.0 * (2.0 + corner)
    w1[planted, :2] = 4.0
    w2 = 0.05 * rng.standard_normal((2, width))
    b2 = np.array([1.5, 0.0])
    w2[:, planted] = [0.0, PLANTED_GAIN]
    f32 = [a.astype(np.float32).astype(np.float64) for a in (w0, b0, w1, b1, w2, b2)]
    return AffineReluNet((Affine(f32[0], f32[1]), Affine(f32[2], f32[3]),
                          Affine(f32[4], f32[5])))


def unsafe_y1_ge_y0(box: Box | None = None) -> Spec:
    """Unsafe: y0 - y1 <= 0, on [-1, 1]^3 by default."""
    box = box or Box(lower=-np.ones(N_IN), upper=np.ones(N_IN))
    unsafe = (Halfspaces(matrix=np.array([[1.0, -1.0]]), rhs=np.array([0.0])),)
    return Spec(n_inputs=N_IN, n_outputs=2, cases=(SpecCase(box=box, unsafe=unsafe),))


def split_samples(net: AffineReluNet, spec: Spec, n: int = 4000, seed: int = 1
                  ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    box = spec.cases[0].box
    x = box.lower + (box.upper - box.lower) * rng.random((n, N_IN))
    ct = case_tensors(spec.cases[0], spec.n_outputs)
    m = violation_measure(torch.as_tensor(net.forward(x)), ct).numpy()
    return x[m >= 0], x[m < 0]


@pytest.fixture(scope="module")
def planted():
    torch.set_num_threads(1)
    net = planted_net()
    spec = unsafe_y1_ge_y0()
    cex, benign = split_samples(net, spec)
    assert 50 < cex.shape[0] < 1000  # the fault is real and local
    return net, spec, cex, benign


# --------------------------------------------------------------------------- measure

def test_violation_measure_is_depth_inside_the_unsafe_set():
    # unsafe: (y0 <= 1 and y1 <= 2) or (y0 >= 5)
    case = SpecCase(box=Box(np.zeros(1), np.ones(1)), unsafe=(
        Halfspaces(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1.0, 2.0])),
        Halfspaces(np.array([[-1.0, 0.0]]), np.array([-5.0]))))
    y = torch.tensor([[0.0, 0.0], [1.5, 0.0], [6.0, 9.0], [1.0, 2.0]], dtype=torch.float64)
    got = violation_measure(y, case_tensors(case, 2)).numpy()
    # [min(1, 2) vs -5, min(-0.5, 2) vs -3.5, min(-5,-7) vs 1, boundary 0 vs -4]
    np.testing.assert_allclose(got, [1.0, -0.5, 1.0, 0.0])
    assert violation_measure(y[None], case_tensors(case, 2)).shape == (1, 4)


def test_points_are_measured_against_their_own_case():
    near = Halfspaces(np.array([[1.0]]), np.array([0.0]))  # y <= 0
    far = Halfspaces(np.array([[-1.0]]), np.array([-10.0]))  # y >= 10
    spec = Spec(n_inputs=1, n_outputs=1, cases=(
        SpecCase(Box(np.array([0.0]), np.array([1.0])), (near,)),
        SpecCase(Box(np.array([2.0]), np.array([3.0])), (far,))))
    x = np.array([[0.5], [2.5], [1.2], [5.0]])
    np.testing.assert_array_equal(assign_cases(x, spec), [0, 1, 0, 1])
    measure = spec_measure(spec, x)
    y = torch.tensor([[[3.0], [3.0], [3.0], [3.0]]], dtype=torch.float64)  # (1, N, 1)
    np.testing.assert_allclose(measure(y).numpy(), [[-3.0, -7.0, -3.0, -7.0]])


# --------------------------------------------------------------------------- causal

def test_interventions_equal_a_forward_pass_with_the_neuron_clamped():
    net = planted_net(seed=3)
    layers = torch_layers(net)
    x = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (7, N_IN)))
    pre, post = trace(layers, x)
    values = intervention_values(post[0], 4)
    cols = torch.tensor([2, 5])
    got = intervened_outputs(layers, 0, pre[1], post[0], cols, values[cols])
    for a, j in enumerate(cols.tolist()):
        for v in range(4):
            h = post[0].clone()
            h[:, j] = values[j, v]
            h1 = torch.relu(h @ layers[1][0].T + layers[1][1])
            want = h1 @ layers[2][0].T + layers[2][1]
            torch.testing.assert_close(got[a, v], want)


def test_causal_blames_the_planted_neuron_first(planted):
    net, spec, cex, benign = planted
    ranking = localize(net, cex, benign, spec, "causal", "last", LocalizeOptions(seed=0))
    assert ranking.top(1)[0][:2] == (1, 7)
    assert ranking.score[0] > 3 * ranking.score[1]  # clearly outstanding (CARE Fig. 4)


def test_causal_over_all_layers_has_the_planted_neuron_on_top(planted):
    net, spec, cex, benign = planted
    ranking = localize(net, cex, benign, spec, "causal", "all", LocalizeOptions(seed=0))
    top3 = [(l, j) for l, j, _ in ranking.top(3)]
    assert (1, 7) in top3
    # its drivers (the pass-throughs of x0 and x1) are the other real causes
    assert set(top3) <= {(1, 7), (0, 0), (0, 1)}


def test_causal_benign_weight_follows_the_fitness_style_formula(planted):
    net, spec, cex, benign = planted
    plain = localize(net, cex, benign, spec, "causal", "last")
    weighted = localize(net, cex, benign, spec, "causal", "last",
                        LocalizeOptions(benign_weight=0.25))
    assert set(plain.extras) == {"violation_effect", "benign_effect", "cex_active"}
    np.testing.assert_allclose(plain.score, plain.extras["violation_effect"])
    by_neuron = np.argsort(plain.neuron)
    spread = plain.extras["violation_effect"][by_neuron]
    effect = plain.extras["benign_effect"][by_neuron]
    want = 0.75 * spread / spread.max() - 0.25 * effect / effect.max()
    np.testing.assert_allclose(weighted.score, want[weighted.neuron])
    with pytest.raises(ValueError, match="benign_weight"):
        localize(net, cex, benign, spec, "causal", "last", LocalizeOptions(benign_weight=1.0))


def test_active_share_filters_neurons_a_weight_patch_cannot_use(planted):
    net, spec, cex, benign = planted
    ranking = localize(net, cex, benign, spec, "causal", "last")
    h = cex
    for layer in net.layers[:-1]:
        h = np.maximum(h @ layer.weight.T + layer.bias, 0.0)
    np.testing.assert_allclose(ranking.extras["cex_active"], (h > 0).mean(0)[ranking.neuron])
    active = ranking.neurons_of(1, min_active=0.5)
    assert 7 in active and set(active) == {j for j in ranking.neurons_of(1)
                                           if (h[:, j] > 0).mean() >= 0.5}


# --------------------------------------------------------------------------- other methods

@pytest.mark.parametrize("method", ["shap", "activation"])
def test_divergence_methods_find_the_planted_neuron(planted, method):
    net, spec, cex, benign = planted
    ranking = localize(net, cex, benign, spec, method, "last")
    assert (1, 7) in [(l, j) for l, j, _ in ranking.top(3)]


def test_gradient_of_last_hidden_layer_is_the_outgoing_weight(planted):
    net, spec, cex, benign = planted
    ranking = localize(net, cex, benign, spec, "gradient", "last")
    c = spec.cases[0].unsafe[0].matrix[0]  # measure = -(c @ y) + rhs: gradient -c @ W
    want = np.abs(c @ net.layers[-1].weight)
    np.testing.assert_allclose(ranking.score, want[ranking.neuron])


def test_deep_shap_attributions_add_up_to_the_measure_difference(planted):
    net, spec, cex, benign = planted
    problem = prepare(net, cex[:20], benign[:30], spec, "all", LocalizeOptions())
    layers = problem.layers
    gx = measure_gradient(problem)
    pre_x, post_x = trace(layers, problem.cex)
    pre_r, post_r = trace(layers, problem.benign)
    with torch.no_grad():
        phis = pair_attributions(layers, gx, [p[:, None] for p in pre_x],
                                 [p[:, None] for p in post_x], [p[None] for p in pre_r],
                                 [p[None] for p in post_r])
    delta = (gx[:, None, :] * (pre_x[-1][:, None] - pre_r[-1][None])).sum(-1).mean(1)
    for phi in phis:  # summation to delta holds in every layer
        torch.testing.assert_close(phi.sum(dim=1), delta)


def test_shap_over_all_layers_is_coarse_to_fine(planted):
    net, spec, cex, benign = planted
    ranking = localize(net, cex, benign, spec, "shap", "all")
    order = sorted(ranking.layer_scores, key=lambda k: -ranking.layer_scores[k])
    firsts = [int(l) for i, l in enumerate(ranking.layer) if i == 0 or
              ranking.layer[i - 1] != l]
    assert firsts == order
    for k in order:
        s = ranking.score[ranking.layer == k]
        assert np.all(np.diff(s) <= 0)


# --------------------------------------------------------------------------- contract

@pytest.mark.parametrize("method", sorted(LOCALIZERS))
@pytest.mark.parametrize("layer", ["last", "all", 0])
def test_every_method_ranks_each_candidate_once_with_finite_scores(planted, method, layer):
    net, spec, cex, benign = planted
    ranking = localize(net, cex, benign, spec, method, layer, LocalizeOptions(seed=4))
    want = {(k, j) for k in hidden_layers(net, layer) for j in range(net.layers[k].n_out)}
    got = list(zip(ranking.layer.tolist(), ranking.neuron.tolist()))
    assert len(got) == len(want) and set(got) == want
    assert np.all(np.isfinite(ranking.score))
    if ranking.layer_scores is None or len(set(ranking.layer.tolist())) == 1:
        assert np.all(np.diff(ranking.score) <= 0)
    assert ranking.method == method and ranking.params["seed"] == 4
    assert ranking.params["n_values"] == 16
    assert ranking.to_dict()["ranking"][0]["rank"] == 1


@pytest.mark.parametrize("method", sorted(LOCALIZERS))
def test_rankings_are_reproducible_with_a_seed(planted, method):
    net, spec, cex, benign = planted
    opts = LocalizeOptions(seed=11, max_points=64, background=16)
    a = localize(net, cex, benign, spec, method, "all", opts)
    b = localize(net, cex, benign, spec, method, "all", opts)
    np.testing.assert_array_equal(a.neuron, b.neuron)
    np.testing.assert_array_equal(a.layer, b.layer)
    np.testing.assert_array_equal(a.score, b.score)


def test_random_order_depends_on_the_seed(planted):
    net, spec, cex, benign = planted
    a = localize(net, cex, benign, spec, "random", "all", LocalizeOptions(seed=1))
    b = localize(net, cex, benign, spec, "random", "all", LocalizeOptions(seed=2))
    assert not np.array_equal(a.neuron, b.neuron)


def test_bad_calls_are_refused(planted):
    net, spec, cex, benign = planted
    with pytest.raises(ValueError, match="no counterexample"):
        localize(net, cex[:0], benign, spec)
    with pytest.raises(ValueError, match="unknown method"):
        localize(net, cex, benign, spec, "magic")
    with pytest.raises(ValueError, match="2 hidden layers"):
        localize(net, cex, benign, spec, "causal", 2)
    with pytest.raises(ValueError, match="non-finite"):
        localize(net, np.full_like(cex, np.nan), benign, spec)
    with pytest.raises(ValueError, match="n_values"):
        localize(net, cex, benign, spec, "causal", "last", LocalizeOptions(n_values=1))
    for method in ("shap", "activation"):
        with pytest.raises(NoBenignInputs):
            localize(net, cex, benign[:0], spec, method)
    everything = Spec(n_inputs=N_IN, n_outputs=2, cases=(SpecCase(
        box=spec.cases[0].box, unsafe=(Halfspaces(np.zeros((0, 2)), np.zeros(0)),)),))
    with pytest.raises(SpecError, match="every output is unsafe"):
        localize(net, cex, benign, everything)
    assert len(localize(net, cex, benign[:0], spec, "causal")) == net.layers[1].n_out


# --------------------------------------------------------------------------- points

def planted_network(folder, corner: float):
    """The planted net saved as ONNX (MatMul/Add/Relu) and loaded back as a Network."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    net = planted_net(corner=corner)
    nodes, inits, cur = [], [], "x"
    for i, layer in enumerate(net.layers):
        inits += [numpy_helper.from_array(layer.weight.T.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(layer.bias.astype(np.float32), f"B{i}")]
        out = "y" if i == 2 else f"a{i}"
        nodes += [helper.make_node("MatMul", [cur, f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"B{i}"], [out])]
        cur = out
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            cur = f"r{i}"
    graph = helper.make_graph(nodes, "planted",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, folder / "planted.onnx")
    return load_network(folder / "planted.onnx")


def test_points_fall_back_to_the_verifier_when_sampling_misses(tmp_path):
    network = planted_network(tmp_path, corner=1.8)  # unsafe where x0 + x1 > 1.925: 0.07 %
    spec = unsafe_y1_ge_y0()
    points = find_points(network, spec, n_samples=200, seed=0, timeout=60)
    assert points.source == "verifier"
    assert points.cex.shape[0] > 1 and points.benign.shape[0] == 200
    assert np.all(measure_points(network, spec, 0, points.cex[1:]) >= 0)
    ranking = localize(network.net, points.cex, points.benign, spec)
    assert ranking.top(1)[0][:2] == (1, 7)


def test_few_sampled_counterexamples_are_densified(tmp_path):
    network = planted_network(tmp_path, corner=1.5)  # unsafe where x0 + x1 > 1.625: 1.8 %
    spec = unsafe_y1_ge_y0()
    rng = np.random.default_rng(0)
    box = spec.cases[0].box
    x = box.lower + (box.upper - box.lower) * rng.random((200, N_IN))
    sampled = int((measure_points(network, spec, 0, x) >= 0).sum())
    assert 0 < sampled < 32  # the same draw find_points makes first
    points = find_points(network, spec, n_samples=200, seed=0, timeout=60)
    assert points.source == "sampling" and points.cex.shape[0] > 10 * sampled
    assert np.all(measure_points(network, spec, 0, points.cex) >= 0)
    assert np.all((points.cex >= box.lower) & (points.cex <= box.upper))


def test_a_sampled_violation_counts_only_once_onnxruntime_confirms_it(tmp_path):
    """Sampling measures the float64 lowering; the claim 'violated' needs a point that
    the original file, run in onnxruntime, puts in the unsafe set."""
    network = planted_network(tmp_path, corner=1.5)
    spec = unsafe_y1_ge_y0()
    points = find_points(network, spec, n_samples=200, seed=0, timeout=60)
    found = confirmed_sample(network, spec, points.cex)
    assert found is not None and spec.cases[0].box.contains(found.x)
    assert found.y[1] >= found.y[0]  # onnxruntime's output is unsafe
    clear = points.benign[measure_points(network, spec, 0, points.benign) < -0.1]
    assert clear.shape[0] and confirmed_sample(network, spec, clear) is None
    assert confirmed_sample(network, spec, points.cex[:0]) is None


# --------------------------------------------------------------------------- ACAS Xu

def test_acasxu_rankings_agree_and_are_cheap(benchmarks_dir):
    model = benchmarks_dir / "acasxu" / "ACASXU_run2a_2_1_batch_2000.onnx"
    prop = benchmarks_dir / "acasxu" / "prop_2.vnnlib"
    if not model.is_file() or not prop.is_file():
        pytest.skip(f"ACAS Xu N2,1 / prop_2 not found under {benchmarks_dir}")
    torch.set_num_threads(1)
    network = load_network(model)
    spec = load_spec(prop)
    points = find_points(network, spec, n_samples=10000, seed=0, timeout=60)
    assert points.source == "sampling" and points.cex.shape[0] > 10
    rankings = {m: localize(network.net, points.cex, points.benign, spec, m, "last",
                            LocalizeOptions(max_points=256))
                for m in LOCALIZERS}
    for r in rankings.values():
        assert sorted(r.neuron.tolist()) == list(range(50)) and set(r.layer.tolist()) == {5}
    top10 = {m: {int(j) for j in r.neuron[:10]} for m, r in rankings.items()}
    # measured: causal and shap share 7 of their top 10, causal and activation 7
    assert len(top10["causal"] & top10["shap"]) >= 4
    assert len(top10["causal"] & top10["activation"]) >= 4
