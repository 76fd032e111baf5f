"""``verirepair batch`` end to end on the demo model: verdicts per row, VNN-COMP result
files (the counterexample re-checked in onnxruntime), known answers and exit codes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from test_check_cli import (FAR_IS_COC, MODEL, NEAR_TURN, check_counterexample,
                            far_is_coc_unsafe, parse_result_file, run_cli)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _instances(folder: Path, *rows: str) -> Path:
    path = folder / "instances.csv"
    path.write_text("".join(row + "\n" for row in rows))
    return path


def test_batch_runs_every_row_and_writes_result_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.vnnlib"
    broken.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1.0)\n")
    inst = _instances(tmp_path, f"{MODEL},{NEAR_TURN},60", f"{MODEL},{FAR_IS_COC},60",
                      f"{MODEL},broken.vnnlib,60")
    out, rdir = tmp_path / "results.csv", tmp_path / "results"
    proc = run_cli("batch", inst, "-o", out, "--results-dir", rdir, "--jobs", "2",
                   timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr  # one instance had bad input
    rows = _rows(out)
    assert [r["verdict"] for r in rows] == ["holds", "violated", "error"]
    assert "broken.vnnlib" in rows[2]["reason"]
    assert "3 of 3 instances: holds 1, violated 1" in proc.stdout
    files = {p.name: p.read_text() for p in rdir.iterdir()}
    assert files[f"demo_advisory_{NEAR_TURN.stem}.txt"] == "unsat\n"
    assert files["demo_advisory_broken.txt"] == "unknown\n"  # the error row claims nothing
    x, y = parse_result_file(files[f"demo_advisory_{FAR_IS_COC.stem}.txt"])
    check_counterexample(MODEL, FAR_IS_COC, np.asarray(x), np.asarray(y), far_is_coc_unsafe)


def test_a_wrong_known_answer_is_loud_and_exits_1(tmp_path: Path) -> None:
    inst = _instances(tmp_path, f"{MODEL},{NEAR_TURN},60", f"{MODEL},{FAR_IS_COC},60")
    answers = tmp_path / "expected.csv"
    # Right for NEAR_TURN (by file names only), deliberately wrong for FAR_IS_COC.
    answers.write_text(f"onnx,vnnlib,expected\ndemo_advisory.onnx,{NEAR_TURN.name},unsat\n"
                       f"{MODEL},{FAR_IS_COC},holds\n")
    out = tmp_path / "results.csv"
    proc = run_cli("batch", inst, "-o", out, "--expected", answers, "--jobs", "1",
                   "--quiet", timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "WRONG ANSWER" in proc.stderr and FAR_IS_COC.name in proc.stderr
    assert [(r["expected"], r["status"]) for r in _rows(out)] == [
        ("holds", "correct"), ("holds", "wrong")]
    assert "known answers: correct 1, wrong 1" in proc.stdout


def test_a_bad_instances_file_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    inst = _instances(tmp_path, f"{MODEL},{NEAR_TURN},60", f"{MODEL},missing.vnnlib,60")
    out = tmp_path / "results.csv"
    proc = run_cli("batch", inst, "-o", out)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "instances.csv:2" in proc.stderr
    assert not out.exists()


def test_no_result_file_of_an_earlier_run_survives(tmp_path: Path) -> None:
    broken = tmp_path / "broken.vnnlib"
    broken.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1.0)\n")
    inst = _instances(tmp_path, f"{MODEL},broken.vnnlib,60")
    rdir = tmp_path / "results"
    rdir.mkdir()
    stale = rdir / "demo_advisory_broken.txt"
    stale.write_text("unsat\n")  # what an earlier run of a good file said
    proc = run_cli("batch", inst, "-o", tmp_path / "r.csv", "--results-dir", rdir, "--quiet")
    assert proc.returncode == 2, proc.stderr
    assert stale.read_text() == "unknown\n"


def test_outputs_that_cannot_be_written_are_one_line_before_any_work(tmp_path: Path) -> None:
    inst = _instances(tmp_path, f"{MODEL},{NEAR_TURN},60")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for extra in (["-o", inst], ["-o", tmp_path / "r.csv", "--results-dir", a_file / "d"]):
        proc = run_cli("batch", inst, *extra)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
        assert proc.stderr.strip().count("\n") == 0
    assert inst.read_text().startswith(str(MODEL))  # the input CSV is untouched


def test_resume_runs_only_what_the_earlier_run_did_not_answer(tmp_path: Path) -> None:
    inst = _instances(tmp_path, f"{MODEL},{NEAR_TURN},60")
    out, rdir = tmp_path / "results.csv", tmp_path / "results"
    first = run_cli("batch", inst, "-o", out, "--results-dir", rdir, "--quiet")
    assert first.returncode == 0, first.stderr
    inst = _instances(tmp_path, f"{MODEL},{NEAR_TURN},60", f"{MODEL},{FAR_IS_COC},60")
    second = run_cli("batch", inst, "-o", out, "--results-dir", rdir, "--resume")
    assert second.returncode == 0, second.stderr
    assert "resume: 1 of 2 instances kept" in second.stderr
    assert second.stderr.count("[2/2]") == 1 and "[1/2]" not in second.stderr  # one run
    assert [r["verdict"] for r in _rows(out)] == ["holds", "violated"]
    assert (rdir / f"demo_advisory_{NEAR_TURN.stem}.txt").read_text() == "unsat\n"
    assert (rdir / f"demo_advisory_{FAR_IS_COC.stem}.txt").read_text().startswith("sat\n")


def test_resume_judges_kept_rows_and_refuses_a_foreign_table(tmp_path: Path) -> None:
    inst = _instances(tmp_path, f"{MODEL},{NEAR_TURN},60")
    out = tmp_path / "results.csv"
    assert run_cli("batch", inst, "-o", out, "--quiet").returncode == 0
    answers = tmp_path / "expected.csv"
    answers.write_text(f"{MODEL},{NEAR_TURN},violated\n")  # deliberately wrong
    kept = run_cli("batch", inst, "-o", out, "--resume", "--quiet", "--expected", answers)
    assert kept.returncode == 1, kept.stderr
    assert "resume: 1 of 1 instances kept" in kept.stderr and "WRONG ANSWER" in kept.stderr
    before = out.read_text()
    other = run_cli("batch", inst, "-o", out, "--resume", "--timeout", "30")
    assert other.returncode == 2 and "none of its 1 rows" in other.stderr
    assert out.read_text() == before  # refused before anything was overwritten


def test_split_is_recorded_with_the_engine_and_keys_resume(tmp_path: Path) -> None:
    """--split relu runs ReLU splitting in the workers; the table says bab:relu, and a
    resume with the default split does not take that row for its own."""
    inst = _instances(tmp_path, f"{MODEL},{NEAR_TURN},60")
    out = tmp_path / "results.csv"
    proc = run_cli("batch", inst, "-o", out, "--split", "relu", "--quiet", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [(r["verdict"], r["engine"]) for r in _rows(out)] == [("holds", "bab:relu")]
    again = run_cli("batch", inst, "-o", out, "--split", "relu", "--resume", "--quiet")
    assert again.returncode == 0 and "resume: 1 of 1 instances kept" in again.stderr
    other = run_cli("batch", inst, "-o", out, "--resume", "--quiet")
    assert other.returncode == 2 and "none of its 1 rows" in other.stderr


def test_split_without_the_bab_engine_is_refused(tmp_path: Path) -> None:
    inst = _instances(tmp_path, f"{MODEL},{NEAR_TURN},60")
    proc = run_cli("batch", inst, "-o", tmp_path / "r.csv", "--engine", "z3",
                   "--split", "relu")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --split relu")
    assert proc.stderr.strip().count("\n") == 0 and not (tmp_path / "r.csv").exists()


def test_resume_rechecks_a_kept_counterexample(tmp_path: Path) -> None:
    """A sat result file whose assignment no longer reproduces (edited by hand here) is
    not kept: the instance runs again and gets a real counterexample."""
    inst = _instances(tmp_path, f"{MODEL},{NEAR_TURN},60", f"{MODEL},{FAR_IS_COC},60")
    out, rdir = tmp_path / "results.csv", tmp_path / "results"
    assert run_cli("batch", inst, "-o", out, "--results-dir", rdir, "--quiet").returncode == 0
    sat = rdir / f"demo_advisory_{FAR_IS_COC.stem}.txt"
    kept = run_cli("batch", inst, "-o", out, "--results-dir", rdir, "--resume", "--quiet")
    assert kept.returncode == 0 and "resume: 2 of 2 instances kept" in kept.stderr
    lines = sat.read_text().splitlines()
    assert lines[-1].startswith(" (Y_4 ")
    lines[-1] = " (Y_4 123456.0))"  # not what the model computes
    sat.write_text("\n".join(lines) + "\n")
    again = run_cli("batch", inst, "-o", out, "--results-dir", rdir, "--resume", "--quiet")
    assert again.returncode == 0 and "resume: 1 of 2 instances kept" in again.stderr
    x2, y2 = parse_result_file(sat.read_text())
    check_counterexample(MODEL, FAR_IS_COC, np.asarray(x2), np.asarray(y2), far_is_coc_unsafe)
