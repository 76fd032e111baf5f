"""The benchmark scripts' own logic (option overrides, ablation summary), no solving."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import ablation  # noqa: E402
import acasxu_repair  # noqa: E402


def test_overrides_are_typed_like_the_defaults() -> None:
    got = acasxu_repair.parse_overrides(["localize=causal", "boundary_pool=1000",
                                         "argmax=true", "eps_rel=2e-5",
                                         "cross_check=marabou"])
    assert got == {"localize": "causal", "boundary_pool": 1000, "argmax": True,
                   "eps_rel": 2e-5, "cross_check": "marabou"}


def test_unknown_override_is_one_clear_error() -> None:
    with pytest.raises(SystemExit, match="no such repair option"):
        acasxu_repair.parse_overrides(["nosuch=1"])


def test_the_36_unsafe_pairs_and_their_preserved_properties() -> None:
    pairs = acasxu_repair.unsafe_pairs()
    assert len(pairs) == 36 and len(set(pairs)) == 36
    assert (1, 9, 7) in pairs and (2, 9, 8) in pairs
    assert (3, 3, 2) not in pairs and (4, 2, 2) not in pairs
    assert acasxu_repair.applicable(1, 9) == [1, 7]
    assert acasxu_repair.applicable(2, 9) == [1, 2, 3, 4, 8]
    assert acasxu_repair.applicable(4, 5) == [1, 2, 3, 4, 10]


def _row(loc: str, pat: str, proven: bool, seconds: float, agreement: float | None) -> dict:
    return {"localize": loc, "patch": pat, "network": "N2,1", "property": "phi2",
            "proven_by_check": proven, "seconds": seconds,
            "agreement": agreement, "changed_parameters": 10, "l2_change": 0.5}


def test_ablation_summary_counts_and_medians() -> None:
    rows = [_pair_row("none", "qp", "N2,1", True, 2.0, 0.999),
            _pair_row("none", "qp", "N2,2", True, 4.0, 0.997),
            _pair_row("none", "qp", "N2,3", False, 100.0, None)]
    rows += [_pair_row("causal", "pso", net, False, 9.0, 0.9) for net in ("N2,1", "N2,2")]
    s = ablation.combo_summary([r for r in rows if r["patch"] == "qp"])
    assert (s["proven"], s["pairs"], s["median_s"]) == (2, 3, 4.0)
    assert s["median_agreement"] == pytest.approx(0.998) and s["min_agreement"] == 0.997
    table = ablation.markdown(rows, [("none", "qp"), ("causal", "pso"), ("shap", "qp")], "x")
    assert "| none | qp | 2/2 |" in table and "| causal | pso | 0/2 |" in table  # N2,3 out
    assert "| shap |" not in table  # combinations without rows are left out


def test_ablation_output_change_is_reported_relative_to_the_output_scale() -> None:
    rows = [{**_row("none", "qp", True, 2.0, 0.999), "max_output_change": 0.2},
            {**_row("none", "qp", True, 3.0, 0.999), "max_output_change": 0.6,
             "network": "N2,2"},
            {**_row("none", "qp", False, 9.0, None), "max_output_change": None,
             "network": "N2,3"},
            {**_row("shap", "qp", True, 3.0, 0.999), "max_output_change": 40.0}]
    rows += [{**rows[-1], "network": net, "proven_by_check": False} for net in ("N2,2", "N2,3")]
    scales = {"N2,1": 0.4, "N2,2": 0.3, "N2,3": 1.0}
    s = ablation.combo_summary(rows[:3], scales)
    assert s["median_out_ratio"] == pytest.approx(1.25) and s["max_out_ratio"] == 2.0
    table = ablation.markdown(rows, [("none", "qp"), ("shap", "qp")], "x", scales=scales)
    assert "output change / scale: median, max |" in table
    assert table.count("| 1.25, 2 |") == 1 and "| 100, 100 |" in table
    assert "output change / scale" not in ablation.markdown(rows, [("none", "qp")], "x")
    own = {**rows[0], "output_scale": 0.1}  # newer rows carry repair()'s own scale
    assert ablation.output_ratios([own], scales) == [pytest.approx(2.0)]
    assert ablation.output_ratios([{**own, "network": "N9,9"}], {}) == [pytest.approx(2.0)]


def test_output_scales_leave_out_a_missing_network(tmp_path: Path) -> None:
    assert ablation.output_scales(tmp_path, {"N1,1"}) == {}


def _pair_row(loc: str, pat: str, net: str, proven: bool, seconds: float,
              agreement: float | None) -> dict:
    return {**_row(loc, pat, proven, seconds, agreement), "network": net}


def test_a_partial_grid_is_compared_on_the_pairs_every_combination_ran() -> None:
    combos = [("none", "qp"), ("causal", "pso")]
    rows = [_pair_row("none", "qp", "N2,1", True, 2.0, 0.999),
            _pair_row("causal", "pso", "N2,1", False, 9.0, None),
            _pair_row("none", "qp", "N2,2", True, 50.0, 0.5)]  # causal:pso not yet run
    assert ablation.complete_pairs(rows, combos) == {("N2,1", "phi2")}
    table = ablation.markdown(rows, combos, "x")
    assert "with every combination (the tables use only these): 1" in table
    assert "| none | qp | 1/1 | 0 | 2.0 | 99.900% |" in table


def test_paired_comparison_with_the_baseline() -> None:
    rows = [_pair_row("none", "qp", "N2,1", True, 10.0, 0.999),
            _pair_row("none", "qp", "N2,2", True, 10.0, 0.998),
            _pair_row("none", "qp", "N2,3", False, 100.0, None),
            _pair_row("shap", "milp", "N2,1", True, 20.0, 0.997),
            _pair_row("shap", "milp", "N2,2", True, 5.0, 0.999),
            _pair_row("shap", "milp", "N2,3", True, 50.0, 0.99)]
    s = ablation.paired(rows, ("none", "qp"), ("shap", "milp"))
    assert (s["pairs"], s["both"], s["only_mine"], s["only_base"]) == (3, 2, 1, 0)
    assert s["median_diff"] == pytest.approx((-0.2 + 0.1) / 2)
    assert (s["higher"], s["lower"]) == (1, 1)
    assert s["median_ratio"] == pytest.approx(0.5)  # ratios 2.0, 0.5, 0.5
    table = ablation.markdown(rows, [("none", "qp"), ("shap", "milp")], "x")
    assert "| shap | milp | 3 | 1 | 0 | -0.050 | 1 / 1 | 0.50 |" in table


def test_rerun_drops_the_listed_rows(tmp_path: Path) -> None:
    rows = [_pair_row("none", "qp", "N2,1", True, 2.0, 0.999),
            _pair_row("none", "pso", "N2,1", False, 90.0, None),
            _pair_row("none", "qp", "N2,2", True, 3.0, 0.998)]
    listed = tmp_path / "keys.txt"
    listed.write_text("none\tpso\tN2,1\tphi2\n\nnone\tqp\tN9,9\tphi2\n")
    assert ablation.drop_rows(rows, listed) == [rows[0], rows[2]]


def test_report_only_rewrites_the_markdown_from_the_csv(tmp_path: Path) -> None:
    rows = [{**_pair_row("none", "qp", "N2,1", True, 2.0, 0.999), "status": "proven"}]
    acasxu_repair.write_csv(tmp_path / "ablation.csv", rows)
    proc = subprocess.run([sys.executable, str(BENCH / "ablation.py"), "--report-only",
                           "--combos", "none:qp", "--commit", "abc1234",
                           "--benchmarks", str(tmp_path / "absent"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "ablation.md").read_text()
    assert "at commit abc1234" in text and "| none | qp | 1/1 |" in text


def test_ablation_jobs_are_pair_major_and_skip_done_rows() -> None:
    combos = [("none", "qp"), ("causal", "pso")]
    pairs = [(2, 1, 2), (1, 9, 7)]
    jobs = ablation.job_order(combos, pairs, {("causal", "pso", "N2,1", "phi2")})
    assert jobs == [("none", "qp", 2, 1, 2), ("none", "qp", 1, 9, 7),
                    ("causal", "pso", 1, 9, 7)]


def test_ablation_rows_round_trip_through_the_csv(tmp_path: Path) -> None:
    row = {"localize": "none", "patch": "qp", "network": "N2,1", "property": "phi2",
           "preserved": "phi1 phi3", "status": "proven", "proven_by_check": True,
           "proven_by": "repair", "seconds": 3.5, "changed_parameters": 12,
           "l2_change": 0.25, "linf_change": 0.1, "agreement": 0.9985,
           "max_output_change": 0.07, "recheck": ""}
    failed = {**row, "network": "N2,2", "status": "budget", "proven_by_check": False,
              "agreement": None, "changed_parameters": None}
    acasxu_repair.write_csv(tmp_path / "ablation.csv", [row, failed])
    assert ablation.read_rows(tmp_path / "ablation.csv") == [row, failed]
    assert ablation.read_rows(tmp_path / "missing.csv") == []
    assert not (tmp_path / "ablation.csv.partial").exists()


def test_rerun_lines_that_are_not_keys_are_refused(tmp_path: Path) -> None:
    rows = [_pair_row("none", "qp", "N2,1", True, 2.0, 0.999)]
    listed = tmp_path / "keys.txt"
    listed.write_text("none\tqp\tN2,1\tphi2 10.3\n")  # a ratio left on the line
    with pytest.raises(SystemExit, match="keys.txt:1"):
        ablation.drop_rows(rows, listed)


def test_a_repeated_row_is_refused_not_counted_twice() -> None:
    row = _pair_row("none", "qp", "N2,1", True, 2.0, 0.999)
    with pytest.raises(SystemExit, match="two rows for none qp N2,1 phi2"):
        ablation.markdown([row, dict(row)], [("none", "qp")], "x")
    args = argparse.Namespace(combos="none:qp,none:qp,shap:qp", localizers="", patchers="")
    assert ablation.combinations(args) == [("none", "qp"), ("shap", "qp")]


def test_rows_of_a_grid_no_pair_completes_are_not_reported_as_complete() -> None:
    rows = [_pair_row("none", "qp", "N2,1", True, 2.0, 0.999),  # causal:pso only on N2,2
            _pair_row("causal", "pso", "N2,2", False, 9.0, None)]
    table = ablation.markdown(rows, [("none", "qp"), ("causal", "pso")], "x")
    assert "(the tables use only these): 0" in table and "| none | qp |" not in table


def test_localized_rows_report_their_median_set_size_and_errors_are_counted() -> None:
    rows = [{**_pair_row("shap", "qp", f"N2,{i}", True, 2.0, 0.999), "free_set": free}
            for i, free in enumerate(["top 5 neurons", "top 20 neurons",
                                      "all last-layer parameters", "top 40 neurons"], 1)]
    rows.append({**_pair_row("shap", "qp", "N2,5", False, 7.0, None), "status": "error: X"})
    s = ablation.combo_summary(rows)
    assert (s["localized"], s["median_k"], s["errors"]) == (3, 20, 1)
    assert "| shap | qp | 4/5 (1 errors) | 3 (20) |" in ablation.markdown(
        rows, [("shap", "qp")], "x")


def test_mixed_budgets_or_commits_are_flagged() -> None:
    rows = [{**_pair_row("none", "qp", f"N2,{i}", True, 2.0, 0.999), "budget": budget,
             "commit": "abc"} for i, budget in ((1, 120.0), (2, 300.0))]
    assert "WARNING: the rows mix budgets 120.0, 300.0" in ablation.markdown(
        rows, [("none", "qp")], "x")
    assert "WARNING" not in ablation.markdown(rows[:1], [("none", "qp")], "x")


def test_a_fresh_run_never_overwrites_an_existing_csv(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "ablation.csv").write_text("localize,patch\n")
    for extra in ([], ["--rerun", str(tmp_path / "keys.txt")]):
        monkeypatch.setattr(sys, "argv", ["ablation.py", "--combos", "none:qp",
                                          "--benchmarks", str(tmp_path / "absent"),
                                          "--out", str(tmp_path), *extra])
        with pytest.raises(SystemExit, match="--resume"):
            ablation.main()
    assert (tmp_path / "ablation.csv").read_text() == "localize,patch\n"
