"""Soundness of the alpha-CROWN step of branch and bound.

1. Property test: the optimised output bound, as bab calls it (few large Adam steps, an
   ``initial`` CROWN bound passed in), never exceeds a sampled value of ``C y - d``.
2. Differential test: bab with the alpha step forced on EVERY open box (no gate, no cap,
   aggressive steps) never disagrees with the exact z3 engine on random tiny networks,
   and the alpha step does prove boxes there (so the comparison is not vacuous).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from nets import export_and_load, random_net, random_spec
from test_bounds_sound import box_samples, nets_and_boxes, spec_rows, stacked
from test_oracle_agreement import check_counterexample
from verirepair.bounds import (crown_hidden_bounds, optimized_spec_lower_bounds,
                               spec_lower_bounds)
from verirepair.network import torch_layers
from verirepair.verify import bab
from verirepair.verify.engine import VerifyOptions, verify
from verirepair.verify.types import Verdict

FORCED = bab.BabOptions(alpha_steps=6, alpha_lr=1.0, alpha_min_rate=0.0,
                        alpha_max_unstable=10**9)
SEEDS = range(20_000, 20_120)
DECIDED = (Verdict.HOLDS, Verdict.VIOLATED)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets_and_boxes(max_boxes=4))
def test_bab_style_alpha_bound_contains_samples(data) -> None:
    net, bxs, seed = data
    rng = np.random.default_rng(seed)
    layers = torch_layers(net)
    lo, hi = stacked(bxs)
    c, d = spec_rows(rng, net.n_outputs)
    with torch.no_grad():
        hidden = crown_hidden_bounds(layers, lo, hi)
        initial = spec_lower_bounds(layers, hidden, lo, hi, c, d)
        results = [optimized_spec_lower_bounds(layers, hidden, lo, hi, c, d, steps=steps,
                                               lr=lr, initial=initial).lower
                   for steps, lr in ((1, 0.5), (3, 0.5), (6, 1.0))]
    for i, box in enumerate(bxs):
        margins = (net.forward(box_samples(box, rng)) @ c.numpy().T - d.numpy()).min(0)
        for lb in results:
            assert torch.isfinite(lb).all()
            assert np.all(lb[i].numpy() >= initial.lower[i].numpy())
            assert np.all(lb[i].numpy() <= margins), f"box {i}: {box}"


@pytest.fixture()
def alpha_proofs(monkeypatch):
    """Counts the rows the alpha step proves (lower bound > 0) over the test."""
    proved = [0]
    original = bab.optimized_spec_lower_bounds

    def counting(*args, **kwargs):
        sb = original(*args, **kwargs)
        proved[0] += int((sb.lower > 0).sum())
        return sb

    monkeypatch.setattr(bab, "optimized_spec_lower_bounds", counting)
    return proved


def test_forced_alpha_bab_agrees_with_z3(tmp_path, alpha_proofs) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decided = 0
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            net = random_net(rng)
            network = export_and_load(net, tmp_path / f"net{seed}.onnx")
            spec = random_spec(rng, net)
            ours = verify(network, spec, VerifyOptions(timeout=20.0, engine="bab",
                                                       bab=FORCED))
            exact = verify(network, spec, VerifyOptions(timeout=20.0, engine="z3"))
            if ours.verdict in DECIDED and exact.verdict in DECIDED:
                decided += 1
                assert ours.verdict is exact.verdict, (
                    f"seed {seed}: bab (forced alpha) says {ours.verdict.value}, "
                    f"z3 says {exact.verdict.value}")
            if ours.verdict is Verdict.VIOLATED:
                check_counterexample(network, spec, ours, f"seed {seed}")
    finally:
        torch.set_num_threads(before)
    assert decided >= 0.9 * len(SEEDS)
    assert alpha_proofs[0] > 0, "the alpha step never proved a row: the test is vacuous"
