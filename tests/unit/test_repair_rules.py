"""Small decision rules of the repair loop and row builders (no solving)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from verirepair.net_types import Affine, AffineReluNet
from verirepair.repair.loop import _stalled
from verirepair.repair.qp import ACCEPTED, ACCEPTED_PENALISED
from verirepair.repair.rows import near_boundary


@pytest.mark.parametrize("conflicts, stalled", [
    ([], False), ([55], False), ([55, 56], False),  # one round without progress: go on
    ([55, 56, 100], True),  # two rounds without a new minimum: the conflict is real
    ([123, 94, 57, 32, 18, 12, 13], False), ([12, 13, 10], False),
    ([12, 13, 12], True), ([295, 363, 494], True),
])
def test_splitting_stops_after_two_rounds_without_a_new_minimum(conflicts, stalled) -> None:
    assert _stalled(SimpleNamespace(conflicts=conflicts)) is stalled


def test_only_penalised_qps_accept_a_stalled_solver() -> None:
    assert "InsufficientProgress" not in ACCEPTED and "MaxIterations" not in ACCEPTED
    assert {"Solved", "AlmostSolved", "MaxIterations"} <= set(ACCEPTED_PENALISED)


def test_near_boundary_points_have_the_smallest_gaps() -> None:
    rng = np.random.default_rng(0)
    net = AffineReluNet((Affine(rng.standard_normal((8, 3)), rng.standard_normal(8)),
                         Affine(rng.standard_normal((4, 8)), rng.standard_normal(4))))
    domain = (np.full(3, -1.0), np.full(3, 1.0))
    x = near_boundary(net, domain, 50, 5000, False, np.random.default_rng(1))
    assert x.shape == (50, 3) and np.all(x >= -1) and np.all(x <= 1)
    pool = domain[0] + 2 * np.random.default_rng(1).random((5000, 3))  # the same pool
    y = np.sort(net.forward(pool), axis=1)
    gap = y[:, 1] - y[:, 0]
    ys = np.sort(net.forward(x), axis=1)
    np.testing.assert_allclose(np.sort(ys[:, 1] - ys[:, 0]), np.sort(gap)[:50])
    for argmax in (False, True):  # the gap of the argmax decision
        xa = near_boundary(net, domain, 5, 5000, argmax, np.random.default_rng(1))
        assert xa.shape == (5, 3)
    assert near_boundary(net, domain, 0, 100, False, rng).shape == (0, 3)


def test_outputs_get_the_usual_file_mode(tmp_path) -> None:
    import os

    import onnx
    from onnx import helper

    from verirepair.report import default_file_mode, write_atomic
    from verirepair.repair.save import save_temp

    write_atomic(tmp_path / "r.json", "{}")
    assert os.stat(tmp_path / "r.json").st_mode & 0o777 == default_file_mode()
    model = helper.make_model(helper.make_graph([], "empty", [], []))
    tmp = save_temp(model, tmp_path / "out.onnx")
    assert os.stat(tmp).st_mode & 0o777 == default_file_mode()
    assert onnx.load(str(tmp)).graph.name == "empty"
    old = os.umask(0o077)
    try:
        assert default_file_mode() == 0o600
    finally:
        os.umask(old)


def _stage_order(monkeypatch, conflicts: list[int], short_after_penalty: int,
                 hard_ok: bool = False) -> tuple[list, object]:
    """Run _qp_patch with a fake solver; returns the penalties it was called with."""
    from verirepair.repair import loop
    from verirepair.repair.qp import Penalties, QPOutcome

    calls = []

    def fake(*args, penalties, **kwargs):
        calls.append(penalties)
        hard = penalties == Penalties()
        ok = hard_ok or not hard
        short = np.zeros(10, dtype=bool)
        if penalties == Penalties(box=1e3):
            short[:short_after_penalty] = True
        return QPOutcome(np.zeros((2, 3)) if ok else None, np.zeros(2) if ok else None, 1,
                         [], 0, 0, short)

    monkeypatch.setattr(loop, "solve_incremental", fake)
    last = Affine(np.zeros((2, 3)), np.zeros(2))
    prob = SimpleNamespace(network=SimpleNamespace(net=AffineReluNet((last, last))),
                           samples=None, free=None, scale=1.0, conflicts=list(conflicts))
    out = loop._qp_patch(prob, None, np.zeros(10), loop.RepairOptions(), 10.0, 1)
    return calls, (out, prob.conflicts)


def test_hard_qp_is_skipped_while_conflicting_boxes_are_split(monkeypatch) -> None:
    from verirepair.repair.qp import Penalties

    calls, (out, conflicts) = _stage_order(monkeypatch, [], 5)
    assert calls == [Penalties(), Penalties(box=1e3)] and conflicts == [5]
    calls, (out, conflicts) = _stage_order(monkeypatch, [9], 4)  # after a conflict round
    assert calls == [Penalties(box=1e3)] and conflicts == [9, 4]
    # No shortfall: the penalised solution is the hard optimum and is returned as such.
    calls, (out, conflicts) = _stage_order(monkeypatch, [9], 0)
    assert calls == [Penalties(box=1e3)] and conflicts == [9] and not out.short.any()
    # Stalled splitting: the hard QP is tried again before decisions are penalised.
    calls, _ = _stage_order(monkeypatch, [5, 9, 9], 3)
    assert calls[0] == Penalties() and Penalties(box=1e3) not in calls


def test_split_depth_two_makes_four_boxes_covering_the_leaf() -> None:
    from verirepair.repair.loop import _split_leaves
    from verirepair.repair.partition import partition
    from verirepair.repair.rows import box_rows
    from verirepair.spec_types import Box, Halfspaces, Spec, SpecCase
    from verirepair.verify.certificate import covers

    rng = np.random.default_rng(4)
    net = AffineReluNet((Affine(rng.standard_normal((6, 2)), rng.standard_normal(6)),
                         Affine(rng.standard_normal((2, 6)), rng.standard_normal(2))))
    case = SpecCase(Box(np.full(2, -1.0), np.full(2, 1.0)),
                    (Halfspaces(np.array([[1.0, -1.0]]), np.array([0.0])),))
    spec = Spec(2, 2, (case,))
    part = partition(net, spec, max_boxes=4, min_width=0.5)
    prob = SimpleNamespace(parts=[part], specs=[spec], network=SimpleNamespace(net=net))
    rows = box_rows([(spec, part)])
    which = np.zeros(rows.size, dtype=bool)
    which[0] = True
    leaf = rows.leaf[0]
    assert _split_leaves(prob, rows, which, depth=2) == 1
    new = prob.parts[0]
    assert new.size == part.size + 3
    children = slice(new.size - 4, new.size)
    assert covers(part.lower[leaf], part.upper[leaf], new.lower[children],
                  new.upper[children])[0]
    assert covers(case.box.lower, case.box.upper, new.lower, new.upper)[0]


def test_summary_names_the_proof_engine_and_skips_unchecked_properties() -> None:
    from verirepair.repair.loop import PropertyReport, RepairReport
    from verirepair.repair.summary import repair_summary

    report = RepairReport(model="m.onnx", output=None, status="failed: budget")
    report.properties = [
        PropertyReport("t.vnnlib", "target", "violated", "holds", 0.5, 0.1, "certificate"),
        PropertyReport("p.vnnlib", "preserve", "holds")]
    text = repair_summary(report)
    assert "t.vnnlib: violated (0.10 s) -> holds (0.50 s, certificate)" in text
    assert "p.vnnlib: holds (0.00 s)\n" in text and "not checked" not in text
    assert "no output file written" in text
    report.agreement, report.max_output_change, report.output_scale = 0.99, 0.6, 0.2
    assert "max output change: 0.6 (3x the output scale 0.2)" in repair_summary(report)


def _outcome(n_short: int, feasible: bool, rows: int = 100):
    from verirepair.repair.qp import QPOutcome

    short = np.zeros(rows, dtype=bool)
    short[:n_short] = True
    return QPOutcome(np.zeros((2, 3)) if feasible else None,
                     np.zeros(2) if feasible else None, 1, [], 0, 0, short)


def _run_solve(monkeypatch, outcomes: list, give_up_on_stall: bool):
    """loop._solve with the patcher, 100 box rows and splitting faked: (result, splits,
    notes)."""
    import time

    from verirepair.repair import loop

    sequence = iter(outcomes)
    splits: list[int] = []
    monkeypatch.setattr(loop, "box_rows",
                        lambda parts: SimpleNamespace(size=100, leaf=np.arange(100)))
    monkeypatch.setattr(loop, "row_margins", lambda prob, rows, options: np.ones(100))
    monkeypatch.setattr(loop, "_solve_once", lambda *args: next(sequence))
    monkeypatch.setattr(loop, "sound_box_margin", lambda *args: np.ones(100))

    def split(prob, rows, which, depth):
        splits.append(int(which.sum()))
        return int(which.sum())

    monkeypatch.setattr(loop, "_split_leaves", split)
    last = Affine(np.zeros((2, 3)), np.zeros(2))
    prob = SimpleNamespace(network=SimpleNamespace(net=AffineReluNet((last, last))),
                           specs=[], parts=[])
    report = loop.RepairReport(model="m", output=None)
    out = loop._solve(prob, loop.RepairOptions(), report, time.monotonic(), 100.0, 20,
                      give_up_on_stall)
    return out, splits, report.notes


def test_a_search_without_a_feasible_candidate_gets_its_short_boxes_split(monkeypatch):
    out, splits, _ = _run_solve(monkeypatch, [_outcome(3, False), _outcome(0, True)], False)
    assert out is not None and splits == [3]
    out, splits, notes = _run_solve(monkeypatch, [_outcome(0, False)], False)
    assert out is None and splits == [] and "found no patch" in notes[-1]


def test_a_localised_set_gives_up_once_splitting_stops_helping(monkeypatch):
    stuck = [_outcome(5, True), _outcome(6, True), _outcome(7, True), _outcome(0, True)]
    out, splits, notes = _run_solve(monkeypatch, stuck, True)
    assert out is None and splits == [5] and "too few parameters" in notes[-1]
    out, splits, _ = _run_solve(monkeypatch, stuck, False)  # all parameters: go on
    assert out is not None and splits == [5, 6, 7]
    shrinking = [_outcome(5, True), _outcome(4, True), _outcome(3, True), _outcome(0, True)]
    out, splits, _ = _run_solve(monkeypatch, shrinking, True)
    assert out is not None and splits == [5, 4, 3]


def test_a_localised_set_that_leaves_many_boxes_short_is_given_up_at_once(monkeypatch):
    many = [_outcome(30, True), _outcome(0, True)]  # 30 of 100 rows > 20 %
    out, splits, notes = _run_solve(monkeypatch, many, True)
    assert out is None and splits == [] and "30 of 100" in notes[-1]
    out, splits, _ = _run_solve(monkeypatch, many, False)
    assert out is not None and splits == [30]


def test_the_qp_stops_at_its_deadline() -> None:
    from verirepair.lastlayer import BoxRows
    from verirepair.repair.qp import SampleRows, solve_incremental

    rng = np.random.default_rng(1)  # needs several solves (and ends infeasible)
    m, h = 200, 4
    rows = BoxRows(mid=rng.random((m, h)), rad=0.1 * rng.random((m, h)),
                   c=rng.standard_normal((m, 2)), base=-rng.random(m), d=np.zeros(m),
                   leaf=np.arange(m))
    samples = SampleRows(h=np.zeros((0, h)), win=np.zeros(0, int), lose=np.zeros(0, int))
    weight, bias = rng.standard_normal((2, h)), np.zeros(2)
    done = solve_incremental(weight, bias, rows, samples, 1e-3, 1e-6, add_rows=5)
    late = solve_incremental(weight, bias, rows, samples, 1e-3, 1e-6, add_rows=5,
                             deadline=0.0)
    assert done.iterations > 1 and late.iterations == 1 and late.dW is None


@pytest.mark.parametrize("answer, blocks", [
    ("violated", True), ("witness", True), ("unknown", False), ("holds", False)])
def test_a_cross_check_blocks_on_any_counterexample_real_or_exact(monkeypatch, answer,
                                                                  blocks) -> None:
    """A confirmed counterexample and z3's exact real-arithmetic one (an UNKNOWN with a
    witness) both block publishing; a plain unknown is recorded only."""
    from verirepair.repair import loop
    from verirepair.verify.types import Counterexample, Result, Verdict, Witness

    results = {
        "violated": Result(Verdict.VIOLATED, Counterexample(np.zeros(1), np.zeros(1), 0, 0)),
        "witness": Result(Verdict.UNKNOWN, witness=Witness((0,), 0)),
        "unknown": Result(Verdict.UNKNOWN),
        "holds": Result(Verdict.HOLDS)}
    monkeypatch.setattr(loop, "cross_check", lambda *a, **k: results[answer])
    report = loop.RepairReport(model="m.onnx", output=None,
                               properties=[loop.PropertyReport("p.vnnlib", "target",
                                                               "violated")])
    ok = loop._cross_check(None, [None], "z3", report, 0.0, 1e9)
    assert ok is not blocks
    assert report.properties[0].cross_check.startswith("z3: ")
    if blocks:
        assert report.status.startswith("failed: z3 found") and "bug" in report.status


def _run_sets(monkeypatch, patches: list, ratio: float = 10.0, bias=(0.0, 1.0),
              last_label: str | None = None, only_last: bool = False):
    """loop._patch_sets over two localised sets then all parameters (labelled
    ``last_label`` when given), with ``_solve`` faked to return ``patches`` in turn (each
    call splits: appends its own marker to the parts and sets ``leaf_boxes``); the stage
    network's last layer is (0, ``bias``) and the original outputs [0, 1] on samples whose
    last hidden layer is [1, 1, 1] (scale 1). Returns (result, report, parts seen by each
    set, (give_up_on_stall, budget) of each call, prob, sets). ``only_last``: the
    all-parameters set alone (no localiser)."""
    import time

    from verirepair.repair import loop
    from verirepair.repair.focus import FreeSet, all_parameters

    sequence, seen, calls = iter(patches), [], []

    def solve(prob, options, report, start, budget, rounds, give_up_on_stall):
        seen.append(list(prob.parts))
        calls.append((give_up_on_stall, budget))
        prob.parts.append(f"split{len(seen)}")  # undone when the set is refused
        report.leaf_boxes = len(prob.parts)
        return next(sequence)

    monkeypatch.setattr(loop, "_solve", solve)
    sets = [FreeSet(np.zeros((2, 4), dtype=bool), (0,), "top 1 neurons"),
            FreeSet(np.zeros((2, 4), dtype=bool), (0, 1), "top 2 neurons"),
            all_parameters(2, 3)]
    if last_label:
        sets[-1] = FreeSet(sets[-1].mask, sets[-1].neurons, last_label)
    if only_last:
        sets = sets[-1:]
    guard = loop._OutputGuard(h=np.ones((4, 3)), y=np.tile([0.0, 1.0], (4, 1)), scale=1.0)
    stage = AffineReluNet((Affine(np.eye(3), np.zeros(3)),
                           Affine(np.zeros((2, 3)), np.asarray(bias))))
    prob = SimpleNamespace(parts=["box"], free=None, conflicts=[], scale=1.0,
                           network=SimpleNamespace(net=stage))
    report = loop.RepairReport(model="m", output=None)
    options = loop.RepairOptions(max_output_change_ratio=ratio)
    out = loop._patch_sets(prob, sets, guard, options, report, time.monotonic(), 100.0)
    return out, report, seen, calls, prob, sets


def _patch(size: float) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) that reproduce the original outputs [0, 1] on h = [1, 1, 1] but for ``size``
    added to output 0."""
    return np.zeros((2, 3)), np.array([size, 1.0])


def test_a_localised_patch_that_blows_up_an_output_is_refused(monkeypatch) -> None:
    out, report, seen, _, prob, sets = _run_sets(monkeypatch, [_patch(50.0), _patch(3.0)])
    assert out is not None and out[1][0] == 3.0
    assert report.free_set == "top 2 neurons" and report.patched_neurons == [0, 1]
    assert report.notes == ["top 1 neurons: the patch changes an output by 50x the output "
                            "scale (more than 10x): refused, escalating"]
    assert seen == [["box"], ["box"]]  # the refused set's splits are undone
    assert prob.parts == ["box", "split2"] and prob.free is sets[1].mask


def test_a_refused_patch_is_taken_when_no_wider_set_solves(monkeypatch, caplog) -> None:
    out, report, _, _, prob, sets = _run_sets(monkeypatch,
                                              [_patch(50.0), _patch(20.0), None])
    assert out is not None and out[1][0] == 20.0  # the smaller of the two refused
    assert report.free_set == "top 2 neurons"
    assert prob.parts == ["box", "split2"] and prob.free is sets[1].mask
    assert report.leaf_boxes == 2  # the report describes the patch used, not the last set
    assert ("no wider set gave an accepted patch: the least-changing refused one (top 2 "
            "neurons) is taken") in report.notes
    assert "20x the output scale (more than 10x)" in report.notes[-1]
    assert "20x the output scale" in caplog.text


def test_a_large_change_on_the_last_set_is_kept_with_a_note(monkeypatch, caplog) -> None:
    out, report, _, _, _, _ = _run_sets(monkeypatch, [None, None, _patch(40.0)])
    assert out is not None and out[1][0] == 40.0 and report.free_set.startswith("all")
    assert report.notes[-1].startswith("all") and "40x the output scale" in report.notes[-1]
    assert "refused" not in report.notes[-1] and "40x the output scale" in caplog.text
    assert report.notes[:2] == ["top 1 neurons: not enough, escalating",
                                "top 2 neurons: not enough, escalating"]
    # ... unless a refused patch changed outputs less
    out, report, _, _, _, _ = _run_sets(monkeypatch, [_patch(20.0), None, _patch(40.0)])
    assert out[1][0] == 20.0 and report.free_set == "top 1 neurons"


def test_patches_within_the_ratio_are_taken_from_the_first_set(monkeypatch) -> None:
    out, report, _, _, _, _ = _run_sets(monkeypatch, [_patch(9.0)])
    assert out is not None and report.free_set == "top 1 neurons"
    assert not report.notes
    out, report, _, _, _, _ = _run_sets(monkeypatch, [_patch(9.0), _patch(1.0)], ratio=5.0)
    assert report.free_set == "top 2 neurons"


def test_nothing_is_refused_when_the_hidden_patch_alone_is_that_large(monkeypatch,
                                                                      caplog) -> None:
    out, report, _, _, _, _ = _run_sets(monkeypatch, [_patch(50.0)], bias=(30.0, 1.0))
    assert out is not None and report.free_set == "top 1 neurons"
    assert report.notes[0].startswith("the hidden-layer patch alone changes an output by "
                                      "30x")
    assert "50x the output scale (more than 10x)" in report.notes[-1]
    assert "50x the output scale" in caplog.text


def test_the_last_set_is_the_last_in_the_list_whatever_its_label(monkeypatch) -> None:
    """Only the last set may split on when splitting stalls, gets all the time left, and
    has its large patch taken."""
    out, report, _, calls, _, _ = _run_sets(monkeypatch, [None, None, _patch(40.0)],
                                            last_label="everything")
    assert [give_up for give_up, _ in calls] == [True, True, False]
    assert calls[0][1] < 40.0 and calls[2][1] > 90.0
    assert out is not None and report.free_set == "everything"


def test_a_refused_patch_keeps_time_for_its_proof(monkeypatch) -> None:
    """Once a refused patch is in hand, the wider sets leave a share of the time left for
    its proof (the last set used to run to the deadline, the fallback proven in 5 s)."""
    from verirepair.repair.loop import FALLBACK_PROOF_SHARE

    out, _, _, calls, _, _ = _run_sets(monkeypatch, [_patch(50.0), None, None])
    assert out is not None and out[1][0] == 50.0
    kept = 1.0 - FALLBACK_PROOF_SHARE
    assert calls[1][1] == pytest.approx(100.0 / 2 * kept, rel=0.01)
    assert calls[2][1] == pytest.approx(100.0 * kept, rel=0.01)


def test_a_patch_whose_change_is_nan_counts_as_too_large(monkeypatch) -> None:
    out, report, _, _, _, _ = _run_sets(monkeypatch, [_patch(np.nan), _patch(3.0)])
    assert out is not None and out[1][0] == 3.0 and report.free_set == "top 2 neurons"
    assert "infx the output scale" in report.notes[0] and "refused" in report.notes[0]


def test_no_refusal_note_without_a_localised_set(monkeypatch) -> None:
    """With --patch milp and no localiser there is nothing to refuse: no such note."""
    out, report, _, _, _, _ = _run_sets(monkeypatch, [_patch(50.0)], bias=(30.0, 1.0),
                                        only_last=True)
    assert out is not None and report.free_set.startswith("all")
    assert not any("no patch refused" in note for note in report.notes)


def test_the_output_guard_measures_what_the_report_says() -> None:
    """The stage's last hidden layer, the original's outputs, the report's samples: the
    guard's ratio is the reported max output change over the reported output scale."""
    from verirepair.repair import loop

    first = Affine(np.array([[1.0], [-1.0]]), np.zeros(2))
    original = AffineReluNet((first, Affine(np.array([[1.0, 1.0]]), np.zeros(1))))
    # the stage: a hidden-layer patch that doubles neuron 0 (same last layer)
    stage = AffineReluNet((Affine(np.array([[2.0], [-1.0]]), np.zeros(2)),
                           original.layers[-1]))
    options = loop.RepairOptions(fidelity_samples=500)
    domain = (np.array([-1.0]), np.array([1.0]))
    guard = loop._output_guard(original, stage, domain, options)
    weight, bias = np.array([[0.5, 3.0]]), np.array([0.25])
    repaired = AffineReluNet((stage.layers[0], Affine(weight, bias)))
    _, change, scale = loop._fidelity(original, repaired, domain, options)
    assert guard.scale == pytest.approx(scale)
    assert guard.ratio(weight, bias) == pytest.approx(change / scale)


def test_the_cli_ratio_option_states_the_default_and_refuses_non_positive() -> None:
    import argparse

    from verirepair import cli
    from verirepair.repair.loop import RepairOptions

    parser = argparse.ArgumentParser()
    cli._add_repair_parser(parser.add_subparsers())
    args = ["repair", "m.onnx", "p.vnnlib", "-o", "x.onnx"]
    assert parser.parse_args(args).max_output_change is None  # RepairOptions' default
    assert parser.parse_args(args + ["--max-output-change", "inf"]).max_output_change \
        == float("inf")
    for bad in ("0", "-1", "nan", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(args + ["--max-output-change", bad])
    repair = parser._subparsers._group_actions[0].choices["repair"]
    text = " ".join(repair.format_help().split())
    assert f"(default {RepairOptions().max_output_change_ratio:g};" in text


def test_nothing_to_repair_never_publishes_a_file_that_changed_since_it_was_verified(
        tmp_path) -> None:
    import shutil
    from pathlib import Path

    from verirepair.errors import InputFileError
    from verirepair.network import load_network
    from verirepair.repair import loop

    model = tmp_path / "m.onnx"
    shutil.copy(Path(__file__).resolve().parents[2] / "models" / "demo_advisory.onnx", model)
    network = load_network(model)
    report = loop.RepairReport(model=str(model), output=None)
    loop._publish_unchanged(network, tmp_path / "same.onnx", None, report)
    assert (tmp_path / "same.onnx").read_bytes() == model.read_bytes()
    model.write_bytes(model.read_bytes() + b"\x00")  # replaced while repair ran
    with pytest.raises(InputFileError, match="changed while repair was running"):
        loop._publish_unchanged(network, tmp_path / "out.onnx", None, report)
    assert not (tmp_path / "out.onnx").exists()
