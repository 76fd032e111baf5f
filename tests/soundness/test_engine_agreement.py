"""Differential test: bab, z3 and Marabou never disagree on holds vs violated.

Random tiny networks and properties come from ``nets.py`` (the same generators as the
bab-vs-z3 oracle test, on other seeds). Every pair of engines that both decide must agree;
every VIOLATED answer must carry a counterexample that onnxruntime confirms. The fast
version runs a few dozen seeds; ``-m slow`` runs several hundred. Also the Marabou
encoding's corner cases: zero-width boxes, constant networks, thin unsafe regions (the
Marabou 2.0 preprocessor treats bounds closer than 1e-5 as fixed; seed 162 below was a
wrong UNSAT before the encoding scaled its variables).
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from nets import describe, export_and_load, random_net, random_spec, spec_of
from test_oracle_agreement import check_counterexample
from verirepair.net_types import Affine, AffineReluNet
from verirepair.spec_types import Box, Halfspaces, SpecCase
from verirepair.verify.engine import (ENGINES, Agreement, VerifyOptions, agreement,
                                      cross_check, verify)
from verirepair.verify.types import Verdict

pytestmark = pytest.mark.skipif(not ENGINES["marabou"].available(),
                                reason="maraboupy is not installed")

ENGINE_NAMES = ("bab", "z3", "marabou")
TIMEOUT = 20.0
FAST_SEEDS = range(10_000, 10_036)
SLOW_CHUNK = 50
SLOW_CHUNKS = 12  # 600 seeds
DECIDED = (Verdict.HOLDS, Verdict.VIOLATED)

TALLY: Counter = Counter()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def compare_engines(seed: int, tmp_path) -> tuple[str, ...]:
    """Run every engine on the seed's network and spec; assert pairwise agreement and
    confirmed counterexamples. Returns the verdict words in ENGINE_NAMES order."""
    rng = np.random.default_rng(seed)
    net = random_net(rng)
    network = export_and_load(net, tmp_path / f"net{seed}.onnx")
    spec = random_spec(rng, net)
    results = {name: verify(network, spec, VerifyOptions(timeout=TIMEOUT, engine=name))
               for name in ENGINE_NAMES}
    for (a, ra), (b, rb) in combinations(results.items(), 2):
        assert agreement(ra, rb) is not Agreement.DISAGREE, (
            f"seed {seed}: {a} says {ra.verdict.value}, {b} says {rb.verdict.value}\n"
            f"{a}: {ra.reason} {ra.counterexample}\n{b}: {rb.reason} {rb.counterexample}\n"
            f"{describe(net, spec)}")
    for name, result in results.items():
        if result.verdict is Verdict.VIOLATED:
            check_counterexample(network, spec, result, f"seed {seed} ({name})")
    verdicts = tuple(results[name].verdict.value for name in ENGINE_NAMES)
    TALLY[verdicts] += 1
    return verdicts


def test_engines_agree_fast(tmp_path) -> None:
    verdicts = [compare_engines(seed, tmp_path) for seed in FAST_SEEDS]
    marabou = Counter(v[2] for v in verdicts)
    # Marabou decides these tiny cases; both answers must occur or the test is vacuous
    assert marabou["holds"] > 0 and marabou["violated"] > 0, marabou
    assert marabou["unknown"] + marabou["timeout"] <= 2, marabou


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(SLOW_CHUNKS))
def test_engines_agree_many(chunk: int, tmp_path) -> None:
    for seed in range(chunk * SLOW_CHUNK, (chunk + 1) * SLOW_CHUNK):
        compare_engines(seed, tmp_path)


def test_thin_region_regression(tmp_path) -> None:
    """Seed 162: violated with a margin of about 2e-4 on a box with a zero-width input;
    plain Marabou 2.0 answered UNSAT here."""
    assert compare_engines(162, tmp_path)[2] == "violated"


def tiny_net() -> AffineReluNet:
    """y = relu(x0 + x1) - relu(x0 - x1) (two inputs, one output)."""
    return AffineReluNet((Affine(np.array([[1.0, 1.0], [1.0, -1.0]]), np.zeros(2)),
                          Affine(np.array([[1.0, -1.0]]), np.zeros(1))))


def marabou_on(net: AffineReluNet, case: SpecCase, tmp_path) -> Verdict:
    network = export_and_load(net, tmp_path / "tiny.onnx")
    spec = spec_of(net, case)
    result = verify(network, spec, VerifyOptions(timeout=TIMEOUT, engine="marabou"))
    if result.verdict is Verdict.VIOLATED:
        check_counterexample(network, spec, result, "tiny")
    return result.verdict


def at_least(threshold: float) -> Halfspaces:
    """The unsafe set ``y >= threshold`` as a row ``-y <= -threshold``."""
    return Halfspaces(matrix=np.array([[-1.0]]), rhs=np.array([-threshold]))


@pytest.mark.parametrize("lower, upper, threshold, expected", [
    # a point box: y(0.5, 0.25) = 0.75 - 0.25 = 0.5
    ([0.5, 0.25], [0.5, 0.25], 0.4999, Verdict.VIOLATED),
    ([0.5, 0.25], [0.5, 0.25], 0.5001, Verdict.HOLDS),
    # x1 fixed, x0 free: y = 2 * x1 = 0.5 on the whole box (a constant output)
    ([0.5, 0.25], [1.0, 0.25], 0.4999, Verdict.VIOLATED),
    ([0.5, 0.25], [1.0, 0.25], 0.5001, Verdict.HOLDS),
    # a thin box (widths 1e-6, under Marabou's 1e-5 "almost fixed"): y in [0.5, 0.500002]
    ([0.5, 0.25], [0.500001, 0.250001], 0.500001, Verdict.VIOLATED),
    ([0.5, 0.25], [0.500001, 0.250001], 0.500003, Verdict.HOLDS),
])
def test_marabou_corner_boxes(lower, upper, threshold, expected, tmp_path) -> None:
    case = SpecCase(Box(np.array(lower), np.array(upper)), (at_least(threshold),))
    assert marabou_on(tiny_net(), case, tmp_path) is expected


def test_empty_disjunct_is_unsafe_everywhere(tmp_path) -> None:
    case = SpecCase(Box(np.array([0.0, 0.0]), np.array([1.0, 1.0])),
                    (Halfspaces(np.zeros((0, 1)), np.zeros(0)),))
    assert marabou_on(tiny_net(), case, tmp_path) is Verdict.VIOLATED


def test_cross_check_returns_second_engine(tmp_path) -> None:
    rng = np.random.default_rng(3)
    net = random_net(rng)
    network = export_and_load(net, tmp_path / "n.onnx")
    spec = random_spec(rng, net)
    first = verify(network, spec, VerifyOptions(timeout=TIMEOUT))
    second = cross_check(network, spec, "marabou", TIMEOUT)
    assert second.engine == "marabou"
    assert agreement(first, second) is Agreement.AGREE
