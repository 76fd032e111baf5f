"""Counterexample confirmation: float32 points inside float64 boxes, and onnxruntime as
the final judge (a point unsafe in float64 but safe in float32 is not a violation)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nets import export_and_load
from verirepair.net_types import Affine, AffineReluNet
from verirepair.network import run_onnxruntime
from verirepair.spec_types import Box, Halfspaces, SpecCase
from verirepair.verify.confirm import confirm, float32_inside

F32_INF = np.float32(np.inf)


def f32_down(v: float) -> np.float32:
    """The largest float32 <= v."""
    f = np.float32(v)
    return f if float(f) <= v else np.nextafter(f, -F32_INF)


def f32_up(v: float) -> np.float32:
    """The smallest float32 >= v."""
    f = np.float32(v)
    return f if float(f) >= v else np.nextafter(f, F32_INF)


# --------------------------------------------------------------------------- float32_inside

def test_upper_bound_whose_float32_rounds_up_is_nudged_down() -> None:
    upper = 0.1
    assert float(np.float32(upper)) > upper  # float32(0.1) = 0.100000001490116...
    x = float32_inside(np.array([upper]), np.array([0.0]), np.array([upper]))
    assert x is not None and x.dtype == np.float32
    assert float(x[0]) <= upper
    assert x[0] == f32_down(upper) == np.nextafter(np.float32(upper), -F32_INF)


def test_lower_bound_whose_float32_rounds_down_is_nudged_up() -> None:
    lower = 0.7
    assert float(np.float32(lower)) < lower  # float32(0.7) = 0.699999988...
    x = float32_inside(np.array([lower]), np.array([lower]), np.array([1.0]))
    assert x is not None and float(x[0]) >= lower
    assert x[0] == f32_up(lower)


def test_negative_bounds_and_mixed_dimensions() -> None:
    lower = np.array([-0.1, 0.7, -2.0, 0.25])
    upper = np.array([-0.05, 0.8, -0.7, 0.25])  # last dimension: zero width, float32 value
    x = float32_inside(np.array([-0.1, 0.7, -0.7, 0.25]), lower, upper)
    assert x is not None and x.dtype == np.float32
    assert np.all(x.astype(np.float64) >= lower) and np.all(x.astype(np.float64) <= upper)
    assert x[3] == np.float32(0.25)


def test_point_outside_the_box_is_clipped_first() -> None:
    x = float32_inside(np.array([5.0, -5.0]), np.array([-0.3, -0.3]), np.array([0.3, 0.3]))
    assert x is not None
    assert x[0] == f32_down(0.3) and x[1] == f32_up(-0.3)


def test_box_narrower_than_float32_spacing_has_no_point() -> None:
    lower, upper = 1.0 + 1e-10, 1.0 + 2e-10  # float32 spacing at 1 is 1.19e-7
    assert f32_up(lower) > upper
    assert float32_inside(np.array([lower]), np.array([lower]), np.array([upper])) is None
    # one such dimension is enough, even if the others are wide
    assert float32_inside(np.array([0.0, lower]), np.array([-1.0, lower]),
                          np.array([1.0, upper])) is None


def test_zero_width_box() -> None:
    exact = float(np.float32(0.1))
    assert float32_inside(np.array([exact]), np.array([exact]), np.array([exact]))[0] == \
        np.float32(0.1)
    assert float32_inside(np.array([0.1]), np.array([0.1]), np.array([0.1])) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-10, 10), st.floats(0, 1e-6), st.floats(0, 1)),
                min_size=1, max_size=4))
def test_float32_inside_is_exact_about_existence(dims) -> None:
    """A result is float32 and inside; None only if some dimension has no float32 value."""
    lower = np.array([c for c, _, _ in dims])
    upper = lower + np.array([w * (1 + abs(c)) for c, w, _ in dims])
    x = lower + (upper - lower) * np.array([t for _, _, t in dims])
    got = float32_inside(x, lower, upper)
    has_point = all(float(f32_up(lo)) <= hi for lo, hi in zip(lower, upper))
    if got is None:
        assert not has_point
    else:
        assert got.dtype == np.float32
        assert np.all(got.astype(np.float64) >= lower)
        assert np.all(got.astype(np.float64) <= upper)
        # it stays next to the requested point: at most a couple of float32 steps away
        near = np.clip(x, lower, upper).astype(np.float32)
        assert np.all(np.abs(got.astype(np.float64) - near) <=
                      4 * np.spacing(np.abs(near).astype(np.float32)).astype(np.float64))
    if has_point:
        assert got is not None


# --------------------------------------------------------------------------- confirm

A = 2.0 ** -30  # float32-exact; 1 + A is not (float32 has 24 significand bits)


def sum_net() -> AffineReluNet:
    """relu(identity) then y = x0 + x1: exact at (1, 2^-30) is 1 + 2^-30, float32 is 1."""
    hidden = Affine(weight=np.eye(2), bias=np.zeros(2))
    out = Affine(weight=np.array([[1.0, 1.0]]), bias=np.zeros(1))
    return AffineReluNet((hidden, out))


def y_at_least(threshold: float) -> tuple[Halfspaces, ...]:
    return (Halfspaces(matrix=np.array([[-1.0]]), rhs=np.array([-threshold])),)


@pytest.fixture(scope="module")
def sum_network(tmp_path_factory):
    return export_and_load(sum_net(), tmp_path_factory.mktemp("confirm") / "sum.onnx")


def test_confirm_rejects_a_float64_only_violation(sum_network) -> None:
    x = np.array([1.0, A])
    threshold = 1.0 + A / 2  # between the float32 output (1) and the exact one (1 + 2^-30)
    case = SpecCase(box=Box(lower=x, upper=x), unsafe=y_at_least(threshold))
    y64 = sum_network.net.forward(x[None])[0]
    y32 = run_onnxruntime(sum_network, x[None])[0]
    assert y64[0] == 1.0 + A and case.unsafe[0].satisfied_by(y64)  # unsafe in float64
    assert y32[0] == np.float32(1.0) and not case.unsafe[0].satisfied_by(y32)
    assert confirm(sum_network, case, 0, x) is None


def test_confirm_accepts_a_real_violation(sum_network) -> None:
    x = np.array([1.0, A])
    case = SpecCase(box=Box(lower=x, upper=x), unsafe=y_at_least(1.0))
    cex = confirm(sum_network, case, 3, x)
    assert cex is not None
    assert cex.case_index == 3 and cex.disjunct_index == 0
    assert cex.x.dtype == np.float32 and case.box.contains(cex.x)
    assert cex.y[0] == np.float32(1.0)


def test_confirm_reports_the_disjunct_onnxruntime_satisfies(sum_network) -> None:
    x = np.array([1.0, A])
    unsafe = (y_at_least(1.0 + A / 2)[0], y_at_least(0.5)[0])  # only the second in float32
    cex = confirm(sum_network, SpecCase(box=Box(lower=x, upper=x), unsafe=unsafe), 0, x)
    assert cex is not None and cex.disjunct_index == 1


def test_confirm_rejects_a_box_without_float32_points(sum_network) -> None:
    lower = np.array([1.0 + 1e-10, A])
    upper = np.array([1.0 + 2e-10, A])
    case = SpecCase(box=Box(lower=lower, upper=upper), unsafe=y_at_least(0.0))
    assert confirm(sum_network, case, 0, lower) is None


def test_confirm_moves_the_point_into_the_box_before_running(sum_network) -> None:
    """A float64 candidate on a non-float32 box face is evaluated at a float32 point that
    is inside the box, never at its (outside) float32 rounding."""
    lower, upper = np.array([0.0, 0.0]), np.array([0.1, 0.1])
    case = SpecCase(box=Box(lower=lower, upper=upper), unsafe=y_at_least(-1.0))
    cex = confirm(sum_network, case, 0, upper)
    assert cex is not None and case.box.contains(cex.x)
    assert np.all(cex.x == f32_down(0.1))


def test_bab_says_unknown_quickly_when_the_box_has_no_float32_input(sum_network) -> None:
    """Unsafe everywhere in real arithmetic, but no float32 input exists in the box:
    never VIOLATED (nothing can be confirmed), never HOLDS, and no wasted timeout."""
    import time

    from verirepair.network import torch_layers
    from verirepair.verify.bab import Deadline, verify_case
    from verirepair.verify.types import Verdict

    lower = np.array([-1.0, 0.1])
    upper = np.array([1.0, 0.1])  # 0.1 is not a float32 value
    case = SpecCase(box=Box(lower=lower, upper=upper), unsafe=y_at_least(-10.0))
    start = time.process_time()  # CPU time: a busy machine must not fail the test
    result = verify_case(sum_network, torch_layers(sum_network.net), case, 0,
                         Deadline.after(30.0))
    assert result.verdict is Verdict.UNKNOWN
    assert "float32" in result.reason
    assert time.process_time() - start < 10.0


# ------------------------------------------------------------ strict comparisons, no hidden

def _one_in_one_out(*layers) -> AffineReluNet:
    return AffineReluNet(tuple(Affine(np.array(w, dtype=float), np.array(b, dtype=float))
                               for w, b in layers))


@pytest.mark.parametrize("assertions, strict", [
    ("(assert (> X_0 0))(assert (<= X_0 1))(assert (<= Y_0 0))", True),
    ("(assert (>= X_0 0))(assert (<= X_0 1))(assert (< Y_0 0))", True),
    ("(assert (>= X_0 0))(assert (<= X_0 1))(assert (<= Y_0 0))", False),
])
def test_a_counterexample_must_meet_strict_comparisons_strictly(tmp_path, assertions,
                                                                strict) -> None:
    """y = relu(x): only x = 0, y = 0 is on the boundary; with a strict comparison it is
    not a counterexample (the closed relaxation made it 'violated' before)."""
    from verirepair.spec import parse_vnnlib_text
    from verirepair.verify.engine import VerifyOptions, verify
    from verirepair.verify.types import Verdict

    net = _one_in_one_out(([[1.0]], [0.0]), ([[1.0]], [0.0]))
    spec = parse_vnnlib_text("(declare-const X_0 Real)(declare-const Y_0 Real)" + assertions)
    result = verify(export_and_load(net, tmp_path / "n.onnx"), spec, VerifyOptions(timeout=10))
    if strict:
        assert result.verdict is not Verdict.VIOLATED
    else:
        assert result.verdict is Verdict.VIOLATED
        assert result.counterexample.x[0] == 0.0


def test_a_network_without_hidden_layers_is_verified(tmp_path) -> None:
    """y = (x, -x): bounds and branch and bound with no hidden layer (used to crash)."""
    from verirepair.spec import parse_vnnlib_text
    from verirepair.verify.engine import VerifyOptions, verify
    from verirepair.verify.types import Verdict

    net = _one_in_one_out(([[1.0], [-1.0]], [0.0, 0.0]))
    network = export_and_load(net, tmp_path / "n.onnx")
    head = "(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)"
    box = "(assert (>= X_0 0))(assert (<= X_0 1))"
    holds = parse_vnnlib_text(head + box + "(assert (<= Y_0 (- 0.5)))")
    violated = parse_vnnlib_text(head + box + "(assert (<= Y_1 (- 0.5)))")
    near = parse_vnnlib_text(head + box + "(assert (<= Y_0 -0.000000001))")
    assert verify(network, holds, VerifyOptions(timeout=10)).verdict is Verdict.HOLDS
    assert verify(network, violated, VerifyOptions(timeout=10)).verdict is Verdict.VIOLATED
    assert verify(network, near, VerifyOptions(timeout=10)).verdict is Verdict.HOLDS
