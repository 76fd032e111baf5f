"""The exact z3 engine: encoding without rounding, verdicts, confirmation, limits."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import z3

from nets import export_and_load, random_case, random_net
from verirepair.errors import MismatchError
from verirepair.net_types import Affine, AffineReluNet
from verirepair.spec_types import Box, Halfspaces, Spec, SpecCase
from verirepair.verify.engine import ENGINES, Agreement, VerifyOptions, agreement, verify
from verirepair.verify.types import Result, Verdict
from verirepair.verify.z3_engine import (MAX_HIDDEN, UNCONFIRMED_REASON, encode,
                                         exact_forward, exact_unsafe, solve, z3_engine)

A = 2.0 ** -30
Z3 = VerifyOptions(timeout=30.0, engine="z3")


def spec_for(net: AffineReluNet, *cases: SpecCase) -> Spec:
    return Spec(n_inputs=net.n_inputs, n_outputs=net.n_outputs, cases=tuple(cases))


def y_at_least(threshold: float) -> Halfspaces:
    return Halfspaces(matrix=np.array([[-1.0]]), rhs=np.array([-threshold]))


def y_at_most(threshold: float) -> Halfspaces:
    return Halfspaces(matrix=np.array([[1.0]]), rhs=np.array([threshold]))


def relu_net() -> AffineReluNet:
    """y = relu(x) - relu(-x) + 0.1f = x + float32(0.1) (two hidden neurons)."""
    w1 = np.array([[1.0], [-1.0]])
    w2 = np.array([[1.0, -1.0]])
    b2 = np.array([float(np.float32(0.1))])
    return AffineReluNet((Affine(w1, np.zeros(2)), Affine(w2, b2)))


def sum_net() -> AffineReluNet:
    return AffineReluNet((Affine(np.eye(2), np.zeros(2)),
                          Affine(np.array([[1.0, 1.0]]), np.zeros(1))))


@pytest.fixture()
def relu_network(tmp_path):
    return export_and_load(relu_net(), tmp_path / "relu.onnx")


def test_registered() -> None:
    assert ENGINES["z3"].run is z3_engine


def test_encoding_has_no_rounding() -> None:
    """float32(0.1) = 0.100000001490116...; a threshold of 0.1 (float64) lies strictly
    below it, so at x = 0 the output is above the threshold in exact arithmetic."""
    net = relu_net()
    point = Box(lower=np.zeros(1), upper=np.zeros(1))
    below = encode(net, SpecCase(point, (y_at_most(0.1),)))
    assert solve(below, 10)[0] == "unsat"
    exact = encode(net, SpecCase(point, (y_at_most(float(np.float32(0.1))),)))
    status, x = solve(exact, 10)
    assert status == "sat" and x == (Fraction(0),)


def test_solve_returns_exact_rationals_inside_the_box() -> None:
    net = relu_net()
    case = SpecCase(Box(lower=np.array([-0.3]), upper=np.array([0.7])), (y_at_least(0.5),))
    status, x = solve(encode(net, case), 10)
    assert status == "sat"
    assert all(isinstance(v, Fraction) for v in x)
    assert Fraction(-0.3) <= x[0] <= Fraction(0.7)
    assert exact_forward(net, x)[0] >= Fraction(0.5)


def test_exact_forward_matches_float64() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        net = random_net(rng)
        x = rng.uniform(-1, 1, net.n_inputs)
        exact = exact_forward(net, [Fraction(v) for v in x])
        np.testing.assert_allclose([float(v) for v in exact], net.forward(x[None])[0],
                                   rtol=1e-12, atol=1e-12)


def test_holds_and_violated(relu_network) -> None:
    box = Box(lower=np.array([-1.0]), upper=np.array([1.0]))
    held = verify(relu_network, spec_for(relu_net(), SpecCase(box, (y_at_least(1.5),))), Z3)
    assert held.verdict is Verdict.HOLDS and held.engine == "z3"
    bad = verify(relu_network, spec_for(relu_net(), SpecCase(box, (y_at_least(1.05),))), Z3)
    assert bad.verdict is Verdict.VIOLATED
    cex = bad.counterexample
    assert cex is not None and box.contains(cex.x) and cex.y[0] >= 1.05


def test_boundary_model_is_deepened_until_float32_confirms(relu_network) -> None:
    """The unsafe set is the thin sliver y in [1.1 - 1e-6, 1.1]: z3's first model tends to
    sit on a face, the engine must still find a point that float32 confirms."""
    box = Box(lower=np.array([-1.0]), upper=np.array([1.0]))
    sliver = Halfspaces(matrix=np.array([[-1.0], [1.0]]), rhs=np.array([-(1.1 - 1e-6), 1.1]))
    result = verify(relu_network, spec_for(relu_net(), SpecCase(box, (sliver,))), Z3)
    assert result.verdict is Verdict.VIOLATED
    assert sliver.satisfied_by(result.counterexample.y)


def test_real_counterexample_not_confirmed_in_float32_is_unknown(tmp_path) -> None:
    """At x = (1, 2^-30) the exact output is 1 + 2^-30 but float32 gives 1: the property
    y >= 1 + 2^-31 is violated over the reals only. Never VIOLATED without onnxruntime."""
    net = sum_net()
    network = export_and_load(net, tmp_path / "sum.onnx")
    x = np.array([1.0, A])
    case = SpecCase(Box(lower=x, upper=x), (y_at_least(1.0 + A / 2),))
    result = verify(network, spec_for(net, case), Z3)
    assert result.verdict is Verdict.UNKNOWN
    assert UNCONFIRMED_REASON in result.reason
    assert result.stats.unconfirmed >= 1
    # ... but it keeps the exact point: a 'holds' from another engine contradicts it
    assert result.witness is not None and result.witness.case_index == 0
    assert exact_unsafe(net, case, result.witness.x)
    assert agreement(Result(Verdict.HOLDS), result) is Agreement.DISAGREE
    assert agreement(result, Result(Verdict.HOLDS)) is Agreement.DISAGREE
    assert agreement(replace(result, witness=None), Result(Verdict.HOLDS)) \
        is Agreement.INCONCLUSIVE
    # the bab engine must not call it violated (nor, over the reals, holds) either
    bab = verify(network, spec_for(net, case), VerifyOptions(timeout=5.0, engine="bab"))
    assert bab.verdict not in (Verdict.VIOLATED, Verdict.HOLDS)


def test_cases_and_disjuncts(relu_network) -> None:
    net = relu_net()
    box = Box(lower=np.array([-1.0]), upper=np.array([1.0]))
    safe = SpecCase(box, (y_at_least(1.5), y_at_most(-1.5)))
    unsafe = SpecCase(box, (y_at_least(1.5), y_at_most(-0.5)))
    result = verify(relu_network, spec_for(net, safe, unsafe), Z3)
    assert result.verdict is Verdict.VIOLATED
    assert result.counterexample.case_index == 1 and result.counterexample.disjunct_index == 1
    assert verify(relu_network, spec_for(net, safe, safe), Z3).verdict is Verdict.HOLDS


def test_empty_disjunct_is_always_unsafe_and_no_disjunct_is_safe(relu_network) -> None:
    net = relu_net()
    box = Box(lower=np.array([-1.0]), upper=np.array([1.0]))
    anything = Halfspaces(matrix=np.zeros((0, 1)), rhs=np.zeros(0))
    assert verify(relu_network, spec_for(net, SpecCase(box, (anything,))), Z3).verdict \
        is Verdict.VIOLATED
    assert verify(relu_network, spec_for(net, SpecCase(box, ())), Z3).verdict is Verdict.HOLDS


def test_timeout(relu_network) -> None:
    box = Box(lower=np.array([-1.0]), upper=np.array([1.0]))
    spec = spec_for(relu_net(), SpecCase(box, (y_at_least(1.5),)))
    result = verify(relu_network, spec, VerifyOptions(timeout=0.0, engine="z3"))
    assert result.verdict is Verdict.TIMEOUT
    assert solve(encode(relu_net(), spec.cases[0]), 0.0) == ("timeout", None)


def test_refuses_large_networks(tmp_path) -> None:
    rng = np.random.default_rng(0)
    net = random_net(rng, n_in=2, n_out=1, hidden=[MAX_HIDDEN + 1])
    network = export_and_load(net, tmp_path / "big.onnx")
    spec = spec_for(net, random_case(rng, net))
    with pytest.raises(MismatchError, match=r"only for tiny networks: 201 hidden neurons "
                                            r"> 200; use --engine bab"):
        verify(network, spec, Z3)


def test_encoding_is_solver_free_data() -> None:
    rng = np.random.default_rng(5)
    net = random_net(rng)
    enc = encode(net, random_case(rng, net))
    assert len(enc.inputs) == net.n_inputs and len(enc.outputs) == net.n_outputs
    assert all(isinstance(c, z3.BoolRef) for c in enc.constraints)
    assert isinstance(enc.formula(), z3.BoolRef)
    # the same encoding can be checked twice, with independent solvers
    assert solve(enc, 10)[0] == solve(enc, 10)[0]


def test_ite_and_disjunction_relu_encodings_agree() -> None:
    rng = np.random.default_rng(11)
    for _ in range(15):
        net = random_net(rng, hidden=[int(rng.integers(2, 6))])
        case = random_case(rng, net)
        ite = solve(encode(net, case, relu="ite"), 10)[0]
        phase = solve(encode(net, case, relu="disjunction"), 10)[0]
        assert ite == phase and ite in ("sat", "unsat")


def test_strict_rows_and_bounds_are_strict(relu_network) -> None:
    """y = x + f, f = float32(0.1), on [-f, 1]: y < 0 (strict) is unsafe only at x = -f,
    and never on -f < x <= 1 (strict bound): exactly HOLDS, where closed constraints
    would give a point z3 cannot turn into a counterexample (UNKNOWN)."""
    net, f = relu_net(), float(np.float32(0.1))
    y_below_zero = Halfspaces(matrix=np.array([[1.0]]), rhs=np.array([0.0]),
                              strict=np.array([True]))
    closed_box = Box(lower=np.array([-f]), upper=np.array([1.0]))
    strict_box = Box(lower=np.array([-f]), upper=np.array([1.0]),
                     strict_lower=np.array([True]), strict_upper=np.array([False]))
    assert solve(encode(net, SpecCase(closed_box, (y_below_zero,))), 10)[0] == "unsat"
    y_at_most_zero = Halfspaces(matrix=np.array([[1.0]]), rhs=np.array([0.0]))
    assert solve(encode(net, SpecCase(closed_box, (y_at_most_zero,))), 10)[0] == "sat"
    assert solve(encode(net, SpecCase(strict_box, (y_at_most_zero,))), 10)[0] == "unsat"
    assert not exact_unsafe(net, SpecCase(strict_box, (y_at_most_zero,)), (Fraction(-f),))
    assert exact_unsafe(net, SpecCase(closed_box, (y_at_most_zero,)), (Fraction(-f),))
    spec = spec_for(net, SpecCase(closed_box, (y_below_zero,)))
    assert verify(relu_network, spec, Z3).verdict is Verdict.HOLDS
