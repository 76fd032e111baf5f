"""Hidden-layer MILP patch (verirepair/repair/milp.py) on small planted problems."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from verirepair.errors import SolverError, VerirepairError
from verirepair.net_types import Affine, AffineReluNet
from verirepair.repair.milp import (MilpPatchOptions, PointRequirements, encode_patch,
                                    gurobi_fits, hard_row_shortfall, hidden_input,
                                    patched_net, solve_patch)

HAS_GUROBI = importlib.util.find_spec("gurobipy") is not None
needs_gurobi = pytest.mark.skipif(not HAS_GUROBI, reason="gurobipy is not installed")
SOLVERS = ["highs", pytest.param("gurobi", marks=needs_gurobi)]


def random_net(seed: int, sizes: tuple[int, ...] = (3, 6, 6, 3)) -> AffineReluNet:
    rng = np.random.default_rng(seed)
    return AffineReluNet(tuple(
        Affine(weight=rng.standard_normal((b, a)) / np.sqrt(a),
               bias=0.5 * rng.standard_normal(b))
        for a, b in zip(sizes[:-1], sizes[1:])))


def with_hidden(net: AffineReluNet, weight: np.ndarray, bias: np.ndarray) -> AffineReluNet:
    return AffineReluNet(net.layers[:-2] + (Affine(weight, bias), net.layers[-1]))


def band_rows(x: np.ndarray, y: np.ndarray, margin: float) -> PointRequirements:
    """Hard rows y_o in [target_o - margin, target_o + margin] at every point."""
    n_p, n_out = y.shape
    eye = np.eye(n_out)
    point = np.repeat(np.arange(n_p), 2 * n_out)
    c = np.tile(np.vstack([eye, -eye]), (n_p, 1))
    d = np.concatenate([np.concatenate([y[p] - margin, -y[p] - margin]) for p in range(n_p)])
    return PointRequirements(x=x, point=point, c=c, d=d, soft=np.zeros(d.size, dtype=bool))


def assert_only_rows_changed(net: AffineReluNet, patch, neurons: np.ndarray) -> None:
    hidden = net.layers[-2]
    other = np.setdiff1d(np.arange(hidden.n_out), neurons)
    np.testing.assert_array_equal(patch.weight[other], hidden.weight[other])
    np.testing.assert_array_equal(patch.bias[other], hidden.bias[other])
    assert patch.weight.dtype == np.float64 and patch.bias.dtype == np.float64


def assert_hard_rows_hold(net: AffineReluNet, patch, req: PointRequirements) -> None:
    short = hard_row_shortfall(patched_net(net, patch), req)[~req.soft]
    assert short.max() <= 1e-6, short.max()


# --------------------------------------------------------------------------- planted fix

def planted_change():
    """A random net, a change of hidden neuron 2's incoming weights, the planted net and
    8 points: (net, its last hidden layer, the change [dW | db], planted net, x)."""
    net = random_net(0)
    rng = np.random.default_rng(10)
    hidden = net.layers[-2]
    change = np.zeros((hidden.n_out, hidden.n_in + 1))
    change[2] = 0.3 * rng.standard_normal(hidden.n_in + 1)
    planted = with_hidden(net, hidden.weight + change[:, :-1], hidden.bias + change[:, -1])
    return net, hidden, change, planted, rng.uniform(-1.0, 1.0, (8, net.n_inputs))


@pytest.mark.parametrize("solver", SOLVERS)
def test_planted_fix_is_found_and_no_larger(solver: str) -> None:
    net, hidden, change, planted, x = planted_change()
    req = band_rows(x, planted.forward(x), margin=1e-3)
    assert hard_row_shortfall(net, req).max() > 1e-2  # the original breaks some rows
    neurons = np.array([2, 4])
    patch = solve_patch(net, neurons, req, MilpPatchOptions(solver=solver))
    assert patch is not None and patch.solver == solver
    assert patch.status == "optimal"
    assert_only_rows_changed(net, patch, neurons)
    assert_hard_rows_hold(net, patch, req)
    dw = np.hstack([patch.weight - hidden.weight, (patch.bias - hidden.bias)[:, None]])
    assert patch.objective <= np.abs(change).sum() + 1e-6
    assert abs(patch.objective - np.abs(dw).sum()) <= 1e-6  # objective = L1 of the change
    assert np.abs(dw).max() <= 1.0 + 1e-9  # delta_max


def test_encoding_sizes_and_stable_pairs() -> None:
    net = random_net(0)
    x = np.random.default_rng(11).uniform(-1.0, 1.0, (8, net.n_inputs))
    req = band_rows(x, net.forward(x), margin=1e-3)
    neurons = np.array([2, 4])
    wide = encode_patch(net, neurons, req, MilpPatchOptions(delta_max=1.0))
    tight = encode_patch(net, neurons, req, MilpPatchOptions(delta_max=1e-4))
    n_d = 2 * (net.layers[-2].n_in + 1)
    for enc in (wide, tight):
        assert enc.A.shape == (enc.row_lower.size, enc.cost.size)
        assert np.all(enc.col_lower <= enc.col_upper)
        assert enc.n_slack == 0 and enc.cost[:n_d].sum() == 0 and enc.cost[n_d:2 * n_d].sum() \
            == n_d
        assert np.all(enc.col_lower[enc.integrality] == 0)
        assert np.all(enc.col_upper[enc.integrality] == 1)
    # a tiny delta_max makes almost every pair stable: no binary there, and dead pairs
    # get no column
    h = hidden_input(net, x)
    z0 = (h @ net.layers[-2].weight.T + net.layers[-2].bias)[:, neurons]
    for enc, delta_max in ((wide, 1.0), (tight, 1e-4)):
        radius = delta_max * (np.abs(h).sum(axis=1, keepdims=True) + 1.0)
        unstable = np.abs(z0) < radius
        assert enc.n_binaries == int(unstable.sum())
        assert enc.n_vars == 2 * n_d + int((z0 > -radius).sum()) + enc.n_binaries
    assert tight.n_binaries == 0 and wide.n_binaries > 0


# --------------------------------------------------------------------------- flips

def _flip_case(net: AffineReluNet, want_active: bool) -> tuple[PointRequirements, int]:
    """One point, one neuron j of the last hidden layer that is inactive (want_active) or
    active there; one hard row that only a flip of j can satisfy when only j may change."""
    x = np.random.default_rng(12).uniform(-1.0, 1.0, (1, net.n_inputs))
    z0 = (hidden_input(net, x) @ net.layers[-2].weight.T + net.layers[-2].bias)[0]
    candidates = np.nonzero(z0 < -0.05 if want_active else z0 > 0.05)[0]
    assert candidates.size, "test setup: no suitable neuron"
    j = int(candidates[0])
    col = net.layers[-1].weight[:, j]
    o = int(np.argmax(np.abs(col)))
    y0 = net.forward(x)[0]
    if want_active:  # need a_j >= 0.3: more of neuron j raises c.y
        c = np.sign(col[o]) * np.eye(net.n_outputs)[o]
        d = c @ y0 + 0.3 * abs(col[o])
    else:  # need a_j <= 0: all of neuron j's contribution must go
        c = -np.sign(col[o]) * np.eye(net.n_outputs)[o]
        d = c @ y0 + z0[j] * abs(col[o])
    req = PointRequirements(x=x, point=np.array([0]), c=c[None, :], d=np.array([d]),
                            soft=np.array([False]))
    return req, j


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("want_active", [True, False])
def test_activation_pattern_flips(solver: str, want_active: bool) -> None:
    net = random_net(1)
    req, j = _flip_case(net, want_active)
    assert hard_row_shortfall(net, req).max() > 1e-3
    patch = solve_patch(net, np.array([j]), req, MilpPatchOptions(solver=solver))
    assert patch is not None and patch.binaries == 1
    assert_only_rows_changed(net, patch, np.array([j]))
    assert_hard_rows_hold(net, patch, req)
    h = hidden_input(net, req.x)[0]
    z_new = patch.weight[j] @ h + patch.bias[j]
    if want_active:
        assert z_new >= 0.3 - 1e-6
    else:
        assert z_new <= 1e-6
    # the cheapest change moves z_j by exactly the needed amount along the largest |h|
    z_old = net.layers[-2].weight[j] @ h + net.layers[-2].bias[j]
    need = abs((0.3 if want_active else 0.0) - z_old)
    assert patch.objective == pytest.approx(need / max(1.0, np.abs(h).max()), abs=1e-6)


# --------------------------------------------------------------------------- infeasible

def _contradiction(net: AffineReluNet, soft: bool) -> PointRequirements:
    """c.y >= y0 + 1 and -c.y >= -y0 at one point (y0 = the original c.y there)."""
    x = np.random.default_rng(13).uniform(-1.0, 1.0, (1, net.n_inputs))
    c = np.eye(net.n_outputs)[0]
    y0 = float(net.forward(x)[0] @ c)
    return PointRequirements(x=x, point=np.array([0, 0]), c=np.vstack([c, -c]),
                             d=np.array([y0 + 1.0, -y0]), soft=np.array([soft, soft]))


@pytest.mark.parametrize("solver", SOLVERS)
def test_contradictory_hard_rows_give_none(solver: str) -> None:
    net = random_net(2)
    assert solve_patch(net, np.array([0, 1]), _contradiction(net, soft=False),
                       MilpPatchOptions(solver=solver)) is None


@pytest.mark.parametrize("solver", SOLVERS)
def test_contradictory_soft_rows_pay_slack(solver: str) -> None:
    net = random_net(2)
    options = MilpPatchOptions(solver=solver, soft_cost=100.0)
    patch = solve_patch(net, np.array([0, 1]), _contradiction(net, soft=True), options)
    assert patch is not None
    # s1 + s2 >= 1 whatever the change, with equality at no change (c.y = y0): the
    # optimum pays exactly one unit of slack and changes nothing
    assert patch.objective == pytest.approx(options.soft_cost, abs=1e-6)
    np.testing.assert_allclose(patch.weight, net.layers[-2].weight, atol=1e-9)


def test_delta_max_too_small_is_infeasible() -> None:
    net = random_net(1)
    req, j = _flip_case(net, want_active=True)
    assert solve_patch(net, np.array([j]), req, MilpPatchOptions(delta_max=1e-3)) is None


# --------------------------------------------------------------------------- solver choice

def _large_problem() -> tuple[AffineReluNet, np.ndarray, PointRequirements]:
    """> 2000 variables and constraints, trivially optimal at zero change."""
    net = random_net(3)
    x = np.random.default_rng(14).uniform(-1.0, 1.0, (400, net.n_inputs))
    req = band_rows(x, net.forward(x), margin=0.05)
    return net, np.arange(6), req


def test_auto_uses_highs_when_too_large_for_gurobi() -> None:
    net, neurons, req = _large_problem()
    options = MilpPatchOptions(solver="auto", delta_max=1e-3)
    assert not gurobi_fits(encode_patch(net, neurons, req, options))
    patch = solve_patch(net, neurons, req, options)
    assert patch is not None and patch.solver == "highs"
    assert patch.objective == pytest.approx(0.0, abs=1e-9)


@needs_gurobi
def test_explicit_gurobi_too_large_raises() -> None:
    net, neurons, req = _large_problem()
    with pytest.raises(SolverError, match="licence limit") as info:
        solve_patch(net, neurons, req, MilpPatchOptions(solver="gurobi", delta_max=1e-3))
    assert isinstance(info.value, VerirepairError) and "\n" not in str(info.value)


@needs_gurobi
def test_auto_uses_gurobi_when_it_fits() -> None:
    net = random_net(1)
    req, j = _flip_case(net, want_active=True)
    patch = solve_patch(net, np.array([j]), req, MilpPatchOptions(solver="auto"))
    assert patch is not None and patch.solver == "gurobi"


@pytest.mark.skipif(HAS_GUROBI, reason="gurobipy is installed")
def test_explicit_gurobi_missing_raises() -> None:
    net = random_net(1)
    req, j = _flip_case(net, want_active=True)
    with pytest.raises(SolverError, match="not installed"):
        solve_patch(net, np.array([j]), req, MilpPatchOptions(solver="gurobi"))


def test_unknown_solver_raises() -> None:
    net = random_net(1)
    req, j = _flip_case(net, want_active=True)
    with pytest.raises(SolverError, match="unknown solver"):
        solve_patch(net, np.array([j]), req, MilpPatchOptions(solver="cplex"))


# --------------------------------------------------------------------------- brute force

def _tiny_net() -> AffineReluNet:
    """y = relu(w x + b) with w = 1, b = 0 (one hidden neuron, the patched layer)."""
    return AffineReluNet((Affine(np.array([[1.0]]), np.array([0.0])),
                          Affine(np.array([[1.0]]), np.array([0.0]))))


def _brute_force(req: PointRequirements, step: float, limit: float) -> float:
    """Least |dw| + |db| over a grid of changes for which every hard row holds."""
    grid = np.arange(-limit, limit + step / 2, step)
    dw, db = (g.ravel() for g in np.meshgrid(grid, grid))
    x = req.x[req.point, 0]
    y = np.maximum((1.0 + dw[:, None]) * x[None, :] + db[:, None], 0.0)  # (G, R)
    ok = np.all(req.c[None, :, 0] * y >= req.d[None, :] - 1e-12, axis=1)
    return float((np.abs(dw) + np.abs(db))[ok].min())


@pytest.mark.parametrize("rows,expected", [
    # y(1) >= 2 and y(-1) <= 0: dw + db >= 1, db - dw <= 1 -> 1
    (([1.0, -1.0], [1.0, -1.0], [2.0, 0.0]), 1.0),
    # y(1) >= 2 and y(-1) >= 0.5 (x = -1 must become active): db >= 1.25 ... -> 1.5
    (([1.0, -1.0], [1.0, 1.0], [2.0, 0.5]), 1.5),
])
def test_tiny_case_matches_brute_force(rows, expected: float) -> None:
    xs, cs, ds = rows
    req = PointRequirements(x=np.array(xs)[:, None], point=np.arange(2),
                            c=np.array(cs)[:, None], d=np.array(ds),
                            soft=np.zeros(2, dtype=bool))
    patch = solve_patch(_tiny_net(), np.array([0]), req,
                        MilpPatchOptions(delta_max=2.0, solver="highs"))
    assert patch is not None
    brute = _brute_force(req, step=0.05, limit=2.0)
    assert brute == pytest.approx(expected, abs=1e-9)
    assert patch.objective == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- kept phases

@pytest.mark.parametrize("solver", SOLVERS)
def test_kept_points_keep_every_patched_neurons_phase(solver: str) -> None:
    """With ``keep`` on the benign points, no patched neuron changes phase there, even
    when flipping one would be cheaper; the counterexample rows still hold."""
    net, hidden, change, planted, x = planted_change()
    bands = band_rows(x[:3], planted.forward(x[:3]), margin=1e-3)
    benign = x[3:]
    keep = np.r_[np.zeros(3, bool), np.ones(5, bool)]
    req = PointRequirements(x=x, point=bands.point, c=bands.c, d=bands.d, soft=bands.soft,
                            keep=keep)
    neurons = np.array([2, 4])
    patch = solve_patch(net, neurons, req, MilpPatchOptions(solver=solver))
    assert patch is not None
    assert_hard_rows_hold(net, patch, req)
    h = hidden_input(net, benign)
    before = h @ hidden.weight[neurons].T + hidden.bias[neurons]
    after = h @ patch.weight[neurons].T + patch.bias[neurons]
    assert np.all((before >= 0) == (after >= -1e-9)), (before, after)


# --------------------------------------------------------------------------- escalate rows

def test_escalate_rows_push_counterexamples_out_and_keep_decisions() -> None:
    from verirepair.repair.escalate import (EscalateOptions, counterexample_rows,
                                            decision_point_rows, requirements)
    from verirepair.repair.rows import near_boundary
    from verirepair.spec_types import Box, Halfspaces, Spec, SpecCase

    net = random_net(2)  # y1 is the largest output on about a third of the box
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (200, 3))
    y = net.forward(x)
    # unsafe: y1 >= y0 and y1 >= y2 (as rows y0 - y1 <= 0, y2 - y1 <= 0)
    matrix = np.array([[1.0, -1.0, 0.0], [0.0, -1.0, 1.0]])
    spec = Spec(n_inputs=3, n_outputs=3,
                cases=(SpecCase(box=Box(np.full(3, -1.0), np.full(3, 1.0)),
                                unsafe=(Halfspaces(matrix, np.zeros(2)),)),))
    bad = np.all(y @ matrix.T <= 0, axis=1)
    assert bad.any() and (~bad).any()
    point, c, d = counterexample_rows(net, x, spec, 0.01)
    assert np.array_equal(np.sort(point), np.nonzero(bad)[0])
    value = np.einsum("ro,ro->r", c, y[point]) - d
    assert np.all(value < 0)  # every counterexample row is broken now ...
    # ... and it is the row of its polytope nearest to being met
    best = (y[point] @ matrix.T).max(axis=1)
    np.testing.assert_allclose(value + 0.01, best)
    p2, c2, d2 = decision_point_rows(net, x, 1e-6, argmax=False)
    assert p2.size == 2 * x.shape[0]
    kept = np.einsum("ro,ro->r", c2, y[p2]) - d2
    gaps = np.sort(y, axis=1)[:, 1] - np.sort(y, axis=1)[:, 0]
    assert np.all((kept >= 0) | (gaps[p2] <= 1e-6))  # the original meets its own decisions
    near = near_boundary(net, (np.full(3, -1.0), np.full(3, 1.0)), 10, 2000, False, rng)
    yn = np.sort(net.forward(near), axis=1)
    assert (yn[:, 1] - yn[:, 0]).max() <= np.quantile(gaps, 0.1)
    req = requirements(net, [(spec, x[bad][:5])], near, 1.0, EscalateOptions())
    assert req.keep is not None and req.keep.sum() == near.shape[0]
    assert (~req.soft).sum() == 5 and req.soft.sum() == 2 * near.shape[0]
