"""A spec of several cases: the cheap attack runs on every case before branch and bound
spends the (shared) deadline proving any one of them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from verirepair.network import load_network
from verirepair.spec import load_spec
from verirepair.verify import engine
from verirepair.verify.confirm import satisfied_disjunct
from verirepair.verify.engine import VerifyOptions, verify
from verirepair.verify.types import Result, Stats, Verdict

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "demo_advisory.onnx"
HOLDS = ROOT / "properties" / "demo_near_turn.vnnlib"
VIOLATED = ROOT / "properties" / "demo_far_is_coc.vnnlib"


def _joined(*paths: Path):
    specs = [load_spec(p) for p in paths]
    return replace(specs[0], cases=tuple(c for s in specs for c in s.cases))


def test_a_later_easy_counterexample_is_found_though_an_earlier_case_is_hard(
        monkeypatch: pytest.MonkeyPatch) -> None:
    network = load_network(MODEL)
    spec = _joined(HOLDS, VIOLATED)
    calls: list[int] = []

    def hard(network, layers, case, index, deadline, *args, **kwargs) -> Result:
        calls.append(index)  # branch and bound on the first case uses up the deadline
        return Result(Verdict.TIMEOUT, None, reason="hard", engine="bab", stats=Stats())

    monkeypatch.setattr(engine, "verify_case", hard)
    result = verify(network, spec, VerifyOptions(timeout=60))
    assert result.verdict is Verdict.VIOLATED and calls == []
    cex = result.counterexample
    assert cex.case_index == 1
    box = spec.cases[1].box
    assert np.all(box.lower <= cex.x) and np.all(cex.x <= box.upper)
    assert satisfied_disjunct(spec.cases[1], cex.y) == cex.disjunct_index


def test_a_deadline_spent_in_the_attack_pass_is_a_timeout_not_a_proof(
        monkeypatch: pytest.MonkeyPatch) -> None:
    network = load_network(MODEL)
    spec = _joined(HOLDS, HOLDS)
    monkeypatch.setattr(engine, "attack_case", _attack_until_the_deadline)
    result = verify(network, spec, VerifyOptions(timeout=0.5))
    assert result.verdict is Verdict.TIMEOUT


def _attack_until_the_deadline(network, layers, case, index, deadline, *args) -> Result:
    while not deadline.expired():
        pass
    return Result(Verdict.UNKNOWN, None, reason="nothing found", engine="bab", stats=Stats())


def test_the_attack_pass_does_not_change_the_verdicts() -> None:
    network = load_network(MODEL)
    both_hold = verify(network, _joined(HOLDS, HOLDS), VerifyOptions(timeout=60))
    assert both_hold.verdict is Verdict.HOLDS
    first_bad = verify(network, _joined(VIOLATED, HOLDS), VerifyOptions(timeout=60))
    assert first_bad.verdict is Verdict.VIOLATED
    assert first_bad.counterexample.case_index == 0
