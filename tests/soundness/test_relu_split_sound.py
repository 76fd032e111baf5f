"""Soundness of ReLU-splitting branch and bound (verify/relu_bab.py).

1. Property test: bounds with split constraints (root hidden bounds clamped at 0 for the
   split neurons, any betas >= 0, any slopes) never exceed ``C y - d`` at sampled inputs
   that satisfy the splits; the same for the optimised alpha-beta bound.
2. Differential test: bab with ReLU splitting forced never disagrees with the exact z3
   engine on random tiny networks; it decides nearly all of them, and its LP leaves are
   reached (so the comparison covers them).
3. An empty subproblem (two splits no input satisfies, not visible in the root bounds) is
   proven empty through the feasibility LP and the sound bound.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from milp_oracle import min_margin
from nets import export_and_load, hidden_preactivations, random_net, random_spec
from test_bounds_sound import box_samples, nets_and_boxes, spec_rows, stacked
from test_oracle_agreement import check_counterexample
from verirepair.bounds import (SplitParams, Splits, crown_hidden_bounds,
                               optimized_split_lower_bounds, spec_lower_bounds)
from verirepair.net_types import Affine, AffineReluNet
from verirepair.network import torch_layers
from verirepair.spec_types import Box, Halfspaces, Spec, SpecCase
from verirepair.verify import leaf_lp, relu_bab
from verirepair.verify.bab import BabOptions, Deadline, Queue, split_kind
from verirepair.verify.engine import VerifyOptions, verify
from verirepair.verify.problem import group_max
from verirepair.verify.types import Verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from split_kinds import robustness_spec  # noqa: E402  (the benchmark's property generator)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RELU = BabOptions(split="relu")
SEEDS = range(30_000, 30_150)
DECIDED = (Verdict.HOLDS, Verdict.VIOLATED)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets_and_boxes(max_boxes=1))
def test_split_bounds_contain_samples_that_keep_the_splits(data) -> None:
    net, bxs, seed = data
    rng = np.random.default_rng(seed)
    layers = torch_layers(net)
    lo, hi = stacked(bxs)
    c, d = spec_rows(rng, net.n_outputs)
    rows = c.shape[0]
    xs = box_samples(bxs[0], rng)
    pre = hidden_preactivations(net, xs)
    # splits taken from the pattern of one sample, so the subproblem is not empty
    anchor = int(rng.integers(len(xs)))
    with torch.no_grad():
        root = crown_hidden_bounds(layers, lo, hi)
    signs = []
    for z, l, u in zip(pre, root.lower, root.upper):
        chosen = rng.random(z.shape[1]) < 0.5
        s = np.where(chosen, np.where(z[anchor] >= 0, 1.0, -1.0), 0.0)
        signs.append(torch.as_tensor(s)[None])
    keep = np.ones(len(xs), dtype=bool)
    for z, s in zip(pre, signs):
        s = s[0].numpy()
        keep &= np.all((s == 0) | (s * z >= 0), axis=1)
    assert keep[anchor]
    hidden, empty = relu_bab.clamp_splits(root, signs, 1)
    assert not bool(empty.any())  # the anchor keeps every split
    margins = (net.forward(xs[keep]) @ c.numpy().T - d.numpy()).min(0)
    betas = [torch.as_tensor(rng.exponential(rng.choice([0.1, 1.0, 10.0]),
                                             (1, rows, s.shape[1]))) for s in signs]
    alphas = [torch.as_tensor(rng.random((1, rows, s.shape[1]))) for s in signs]
    with torch.no_grad():
        results = [spec_lower_bounds(layers, hidden, lo, hi, c, d,
                                     splits=Splits(signs, betas)).lower,
                   spec_lower_bounds(layers, hidden, lo, hi, c, d, alphas,
                                     Splits(signs, betas)).lower]
    bound, params = optimized_split_lower_bounds(layers, hidden, lo, hi, c, d, signs,
                                                 steps=5, lr=0.5, beta_lr=0.5)
    results.append(bound.lower)
    # warm-started from those parameters, as a child subproblem would be
    results.append(optimized_split_lower_bounds(layers, hidden, lo, hi, c, d, signs,
                                                steps=3, lr=0.5, beta_lr=0.5,
                                                start=params)[0].lower)
    for lb in results:
        assert torch.isfinite(lb).all()
        assert np.all(lb[0].numpy() <= margins + 1e-9 * (1 + np.abs(margins)))


def test_auto_split_kind_follows_the_input_count() -> None:
    auto = BabOptions()
    assert split_kind(auto, 5, 6) == "input"  # ACAS Xu
    assert split_kind(auto, 784, 2) == "relu"
    assert split_kind(auto, 784, 0) == "input"  # nothing to split
    assert split_kind(BabOptions(split="input"), 784, 2) == "input"
    with pytest.raises(ValueError):
        split_kind(BabOptions(split="neurons"), 5, 1)


def test_branching_only_picks_neurons_that_straddle_zero(tmp_path) -> None:
    """Filtered smart branching with more candidates than unstable neurons (so the top-k
    holds stable and split ones too) still splits an unsplit neuron with l < 0 < u."""
    checked = 0
    for seed in range(12):
        rng = np.random.default_rng(32_000 + seed)
        net = random_net(rng, n_in=6, n_out=2, hidden=[8, 8])
        network = export_and_load(net, tmp_path / f"b{seed}.onnx")
        spec = random_spec(rng, net)
        search = relu_bab.ReluSearch(network, torch_layers(network.net), spec.cases[0], 0,
                                     Deadline.after(30.0), RELU, None, None)
        queue = Queue(search._root(), 10**6)
        with torch.no_grad():
            for iteration in range(6):  # a few rounds, then inspect one more batch
                if not len(queue) or search._round(queue, iteration) is not None:
                    break
            if not len(queue):
                continue
            batch = queue.pop(64)
            signs = search._layer_signs(batch.signs)
            hidden, _ = search._clamped(signs, len(batch))
            lo, hi = search._box(len(batch))
            ct = search.ct
            trace: list[torch.Tensor] = []
            sb, params = optimized_split_lower_bounds(
                search.layers, hidden, lo, hi, ct.c, ct.d, signs, steps=2, trace=trace)
            trace.reverse()
            disj = group_max(sb.lower, ct.group, ct.n_disjuncts)
            cands, has_free = search._choose(batch.alive, hidden, sb.lower, disj, trace, 16)
            if not bool(has_free.any()):
                continue
            keep = has_free
            picked = search._filtered_choice(
                cands[keep], batch.signs[keep], batch.alive[keep], hidden.select(keep),
                SplitParams([a[keep] for a in params.alphas],
                            [g[keep] for g in params.gammas]))
        free = torch.cat([(l < 0) & (u > 0) for l, u in zip(hidden.lower, hidden.upper)],
                         dim=1)[keep]
        assert bool(free[torch.arange(len(picked)), picked].all()), f"seed {seed}"
        checked += len(picked)
    assert checked > 0


@pytest.fixture()
def lp_calls(monkeypatch):
    calls = [0]
    original = leaf_lp.solve_lp

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(relu_bab, "solve_lp", counting)
    return calls


def test_forced_relu_splitting_agrees_with_z3(tmp_path, lp_calls) -> None:
    decided = 0
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        net = random_net(rng)
        network = export_and_load(net, tmp_path / f"net{seed}.onnx")
        spec = random_spec(rng, net)
        ours = verify(network, spec, VerifyOptions(timeout=20.0, bab=RELU))
        exact = verify(network, spec, VerifyOptions(timeout=20.0, engine="z3"))
        if ours.verdict in DECIDED and exact.verdict in DECIDED:
            assert ours.verdict is exact.verdict, f"seed {seed}: relu-split bab says " \
                f"{ours.verdict.value}, z3 {exact.verdict.value} ({ours.reason})"
        if ours.verdict is Verdict.VIOLATED:
            check_counterexample(network, spec, ours, f"seed {seed}")
        decided += ours.verdict in DECIDED
    assert decided >= 0.95 * len(SEEDS), f"only {decided} of {len(SEEDS)} decided"
    assert lp_calls[0] > 0, "no subproblem reached an LP leaf"


def test_forced_relu_splitting_without_hidden_layers(tmp_path) -> None:
    """A linear network has nothing to split: every subproblem is an LP leaf."""
    for seed in range(10):
        rng = np.random.default_rng(31_000 + seed)
        net = random_net(rng, hidden=[])
        network = export_and_load(net, tmp_path / f"lin{seed}.onnx")
        spec = random_spec(rng, net)
        ours = verify(network, spec, VerifyOptions(timeout=20.0, bab=RELU))
        exact = verify(network, spec, VerifyOptions(timeout=20.0, engine="z3"))
        assert ours.verdict is exact.verdict, f"seed {seed}: {ours.reason}"
        if ours.verdict is Verdict.VIOLATED:
            check_counterexample(network, spec, ours, f"seed {seed}")


def contradictory_net() -> AffineReluNet:
    """x in [-1, 1]; z1 = x - 0.5, z2 = -x - 0.5 (both unstable on the box, never both
    >= 0); y = h1 + h2 - 1."""
    return AffineReluNet((Affine(np.array([[1.0], [-1.0]]), np.array([-0.5, -0.5])),
                          Affine(np.array([[1.0, 1.0]]), np.array([-1.0]))))


def contradictory_search(tmp_path, disjuncts: int) -> relu_bab.ReluSearch:
    net = contradictory_net()
    network = export_and_load(net, tmp_path / "empty.onnx")
    # unsafe: y <= 10 (true everywhere), and y >= 20 (never): only emptiness closes both
    case = SpecCase(box=Box(np.array([-1.0]), np.array([1.0])),
                    unsafe=(Halfspaces(np.array([[1.0]]), np.array([10.0])),
                            Halfspaces(np.array([[-1.0]]), np.array([-20.0])))[:disjuncts])
    return relu_bab.ReluSearch(network, torch_layers(network.net), case, 0,
                               Deadline.after(30.0), RELU, None, None)


def leaf_of(search: relu_bab.ReluSearch, signs: list[int]) -> relu_bab.LeafOutcome:
    s = torch.tensor(signs, dtype=torch.int8)
    with torch.no_grad():
        hidden, _ = search._clamped(search._layer_signs(s[None]), 1)
        return search._leaf(s, torch.ones(search.ct.n_disjuncts, dtype=torch.bool), hidden)


@pytest.mark.parametrize("disjuncts", [1, 2])
def test_an_empty_subproblem_is_proven_empty(tmp_path, disjuncts: int) -> None:
    search = contradictory_search(tmp_path, disjuncts)
    leaf = leaf_of(search, [1, 1])  # z1 >= 0 and z2 >= 0: no such x
    assert leaf.counterexample is None and not leaf.unresolved
    assert bool(leaf.proven.all())
    # z1 >= 0, z2 <= 0 is not empty: x = 1 gives y = -0.5 <= 10
    assert leaf_of(search, [1, -1]).counterexample is not None


def test_an_lp_that_wrongly_says_infeasible_proves_nothing(tmp_path, monkeypatch) -> None:
    """The LP is only a hint: told "infeasible" about a subproblem that is not empty
    (z1 >= 0, z2 <= 0 holds for x >= 0.5), the leaf must stay unresolved."""
    search = contradictory_search(tmp_path, 2)
    monkeypatch.setattr(relu_bab, "solve_lp",
                        lambda lp, seconds: leaf_lp.LpSolution("infeasible"))
    leaf = leaf_of(search, [1, -1])
    assert leaf.unresolved and not bool(leaf.proven.any())
    # and a lying feasibility LP (optimal, negative slack, made-up multipliers) neither
    answers = iter([leaf_lp.LpSolution("infeasible"),
                    leaf_lp.LpSolution("optimal", 0.5, np.zeros(2), np.array([0.5, 0.5]))])
    monkeypatch.setattr(relu_bab, "solve_lp", lambda lp, seconds: next(answers))
    leaf = leaf_of(search, [1, -1])
    assert leaf.unresolved and not bool(leaf.proven.any())


MEDIUM_SEEDS = range(40)


def test_relu_splitting_agrees_with_an_exact_milp_on_wide_inputs(tmp_path) -> None:
    """60 inputs, two hidden layers of 16 (too many inputs for input splitting, too many
    neurons for z3): auto picks ReLU splitting; an exact MILP is the oracle."""
    decided = split_runs = 0
    for seed in MEDIUM_SEEDS:
        rng = np.random.default_rng(50_000 + seed)
        net = random_net(rng, n_in=60, n_out=3, hidden=[16, 16])
        network = export_and_load(net, tmp_path / f"m{seed}.onnx")
        spec = robustness_spec(rng, net, float(rng.choice([0.05, 0.1, 0.2])))
        case = spec.cases[0]
        ours = verify(network, spec, VerifyOptions(timeout=30.0))
        margins = [min_margin(net, case.box, hs.matrix, hs.rhs) for hs in case.unsafe]
        assert all(m is not None for m in margins), f"seed {seed}: the MILP did not finish"
        exact = min(margins)
        where = f"seed {seed}: relu-split bab {ours.verdict.value}, MILP margin {exact}"
        if ours.verdict is Verdict.HOLDS:
            assert exact > -1e-6, where
        if ours.verdict is Verdict.VIOLATED:
            check_counterexample(network, spec, ours, f"seed {seed}")
            assert exact < 1e-6, where
        if abs(exact) > 1e-4:  # clear of zero: the answer is expected, not just allowed
            assert ours.verdict in DECIDED, where
        decided += ours.verdict in DECIDED
        split_runs += ours.stats.boxes > 1
    assert decided >= 0.95 * len(MEDIUM_SEEDS)
    assert split_runs >= 5, f"only {split_runs} runs needed any splitting"


@pytest.mark.parametrize("split", ["input", "relu"])
@pytest.mark.parametrize("bound", [8e307, 1e308])
def test_no_holds_on_a_box_near_the_float64_range(tmp_path: Path, split: str,
                                                  bound: float) -> None:
    """y = -relu(2x), x in [-b, b], unsafe y <= -1e300 (x = 1e300 is a real
    counterexample). With b = 8e307 the hidden bounds' width overflows (a chord slope of 0
    made this a wrong 'holds'); with b = 1e308 the box's own width overflows (the
    comparison with onnxruntime on its points crashed)."""
    net = AffineReluNet((Affine(np.array([[2.0]]), np.zeros(1)),
                         Affine(np.array([[-1.0]]), np.zeros(1))))
    network = export_and_load(net, tmp_path / "net.onnx")
    case = SpecCase(box=Box(np.array([-bound]), np.array([bound])),
                    unsafe=(Halfspaces(matrix=np.array([[1.0]]), rhs=np.array([-1e300])),))
    spec = Spec(n_inputs=1, n_outputs=1, cases=(case,), source="<huge box>")
    result = verify(network, spec, VerifyOptions(timeout=10.0,
                                                 bab=BabOptions(split=split)))
    assert result.verdict is not Verdict.HOLDS
