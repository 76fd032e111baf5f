"""The wide attack of a long branch-and-bound search: due at 1x, 2x, 4x ... the first
mark, sized by the time searched so far, capped for wide networks, and its finds are
confirmed counterexamples like every other."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from verirepair.network import load_network, onnx_session, torch_layers
from verirepair.spec import load_spec
from verirepair.verify.bab import BabOptions, Deadline, _Search, verify_case
from verirepair.verify.types import Verdict

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "demo_advisory.onnx"
VIOLATED = ROOT / "properties" / "demo_far_is_coc.vnnlib"


def _search(options: BabOptions) -> _Search:
    network = load_network(MODEL)
    case = load_spec(VIOLATED).cases[0]
    return _Search(network, torch_layers(network.net), case, 0, Deadline.after(60), options,
                   None, onnx_session(network.model))


def test_the_wide_attack_waits_for_its_mark_then_doubles_it() -> None:
    search = _search(BabOptions(wide_attack_after=30.0))
    assert search._wide_attack_due() is None and search.stats.attack_points == 0
    search.started -= 31.0  # 31 s into the search
    cex = search._wide_attack_due()
    assert 62.0 <= search.next_wide_attack < 70.0  # twice the time searched when it ended
    n = search._wide_attack_starts(31.0)
    assert search.stats.attack_points == n * search.options.wide_attack_steps
    assert cex is not None  # the demo property is violated on a large part of its box
    box = search.case.box
    assert np.all(box.lower <= cex.x) and np.all(cex.x <= box.upper)
    assert search._wide_attack_due() is None  # next one at ~62 s


def test_the_start_count_grows_with_time_and_is_capped_by_the_network_size() -> None:
    search = _search(BabOptions(wide_attack_rate=100.0, wide_attack_work=1e5,
                                wide_attack_weights=1e12))
    width = search.ct.lower.shape[0] + sum(search.widths)
    assert search._wide_attack_starts(2.0) == 200
    assert search._wide_attack_starts(1e9) == int(1e5 / width)
    assert search._wide_attack_starts(0.0) == 1
    by_weights = _search(BabOptions(wide_attack_work=1e12, wide_attack_weights=1e6))
    assert by_weights._wide_attack_starts(1e9) == int(1e6 / by_weights.n_weights)


def test_no_wide_attack_after_the_deadline_or_beyond_its_share_of_the_time() -> None:
    late = _search(BabOptions())
    late.started -= 100.0
    late.deadline = Deadline(late.deadline.start - 100.0, 60.0)  # expired
    assert late._wide_attack_due() is None and late.stats.attack_points == 0
    greedy = _search(BabOptions(wide_attack_share=0.2))
    greedy.started -= 100.0
    greedy.wide_attack_seconds = 21.0  # more than 20 % of the 100 s searched
    assert greedy._wide_attack_due() is None and greedy.stats.attack_points == 0
    greedy.wide_attack_seconds = 19.0
    assert greedy._wide_attack_due() is not None


def test_the_search_runs_the_wide_attack_when_nothing_else_finds_the_violation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the opening attack, the corner candidates and the box attacks all silenced,
    only the wide attack can find the demo property's counterexample."""
    monkeypatch.setattr(_Search, "_corner_candidates", lambda self, *a: None)
    monkeypatch.setattr(_Search, "_box_attack", lambda self, *a: None)
    network = load_network(MODEL)
    case = load_spec(VIOLATED).cases[0]
    options = BabOptions(wide_attack_after=1e-6)
    result = verify_case(network, torch_layers(network.net), case, 0, Deadline.after(20),
                         options, None, onnx_session(network.model), initial_attack=False)
    assert result.verdict is Verdict.VIOLATED
    silenced = verify_case(network, torch_layers(network.net), case, 0, Deadline.after(3),
                           replace(options, wide_attack_after=0.0), None,
                           onnx_session(network.model), initial_attack=False)
    assert silenced.verdict is not Verdict.VIOLATED  # so the find above was the wide attack's


@pytest.mark.parametrize("after, rate", [(0.0, 512.0), (2.0, 0.0)])
def test_the_wide_attack_can_be_switched_off(after: float, rate: float) -> None:
    search = _search(BabOptions(wide_attack_after=after, wide_attack_rate=rate))
    search.started -= 1000.0
    assert search._wide_attack_due() is None and search.stats.attack_points == 0
