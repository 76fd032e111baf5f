"""``verirepair check --engine marabou`` and ``--cross-check``: verdicts, exit codes, JSON,
the missing-package message, a disagreement (exit 1) and the timeout.

Counterexamples are re-checked independently in onnxruntime (helpers of test_check_cli).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_check_cli import (EXIT_CODES, FAR_IS_COC, MODEL, NEAR_TURN, ROOT,
                            check_counterexample, far_is_coc_unsafe, parse_result_file,
                            run_check, run_cli)
from verirepair import cli
from verirepair.verify.engine import ENGINES
from verirepair.verify.types import Counterexample, Result, Stats, Verdict

needs_marabou = pytest.mark.skipif(not ENGINES["marabou"].available(),
                                   reason="maraboupy is not installed")
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2


def without_marabou(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import maraboupy`` fails (a stub package first on the
    path), as on a machine where it is not installed."""
    stub = tmp_path / "stub" / "maraboupy"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('maraboupy is not installed')\n")
    return {"PYTHONPATH": str(stub.parent)}


def run_env(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess with ``env`` added (its PYTHONPATH first, then the repo)."""
    full = {**os.environ, **env}
    full["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(ROOT)])
    cmd = [sys.executable, "-m", "verirepair.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=full)


# --------------------------------------------------------------------------- marabou

def check_in_process(capsys, *args: str | Path) -> tuple[int, str, str]:
    """``verirepair check MODEL ... --quiet`` in this process: (exit code, stdout, stderr)."""
    code = cli.main(["check", *map(str, args), "--quiet", "--timeout", "60"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out, captured.err


@needs_marabou
def test_marabou_holds(capsys) -> None:
    code, out, err = check_in_process(capsys, MODEL, NEAR_TURN, "--engine", "marabou")
    assert code == EXIT_CODES["holds"], out + err
    # stdout as usual; stderr only the note that this 'holds' is not a proof
    assert out.startswith("holds")
    assert err.startswith("note: engine marabou is not sound") and err.count("\n") == 1


@needs_marabou
def test_marabou_violated_counterexample_rechecked(tmp_path: Path) -> None:
    """In a subprocess, as a user runs it: the result file's counterexample is re-run in
    onnxruntime independently of verirepair."""
    out = tmp_path / "result.txt"
    proc = run_check(MODEL, FAR_IS_COC, "--engine", "marabou", "--quiet",
                     "--result-file", out)
    assert proc.returncode == EXIT_CODES["violated"], proc.stdout + proc.stderr
    assert proc.stdout.startswith("violated") and proc.stderr == ""
    x, y = parse_result_file(out.read_text())
    check_counterexample(MODEL, FAR_IS_COC, x, y, far_is_coc_unsafe)


@needs_marabou
def test_marabou_json_names_the_engine(capsys) -> None:
    _, out, _ = check_in_process(capsys, MODEL, NEAR_TURN, "--engine", "marabou", "--json")
    data = json.loads(out)
    assert data["verdict"] == "holds" and data["engine"] == "marabou"
    assert "cross_check" not in data


# --------------------------------------------------------------------------- cross-check

@needs_marabou
def test_cross_check_confirms_holds(capsys) -> None:
    code, out, err = check_in_process(capsys, MODEL, NEAR_TURN, "--cross-check", "marabou")
    assert code == EXIT_CODES["holds"], out + err
    lines = out.splitlines()
    assert lines[0] == "holds"
    assert any(line.startswith("cross-check (marabou): holds") and "agrees" in line
               for line in lines), out


@needs_marabou
def test_cross_check_json(capsys) -> None:
    code, out, err = check_in_process(capsys, MODEL, NEAR_TURN, "--cross-check", "marabou",
                                      "--json")
    assert code == EXIT_CODES["holds"], err
    data = json.loads(out)
    assert data["verdict"] == "holds" and data["engine"] == "bab"
    check = data["cross_check"]
    assert check["engine"] == "marabou" and check["ran"] is True
    assert check["verdict"] == "holds" and check["agreement"] == "agree"
    assert check["seconds"] >= 0


def test_cross_check_not_run_after_violated(capsys) -> None:
    code, out, err = check_in_process(capsys, MODEL, FAR_IS_COC, "--cross-check", "z3",
                                      "--json")
    assert code == EXIT_CODES["violated"], err
    data = json.loads(out)
    assert data["verdict"] == "violated"
    assert data["cross_check"] == {"engine": "z3", "ran": False,
                                   "reason": "runs only to confirm a 'holds'"}


def test_z3_takes_an_unlimited_timeout(capsys) -> None:
    """--timeout inf means no limit (it overflowed z3's millisecond timeout)."""
    code = cli.main(["check", str(MODEL), str(NEAR_TURN), "--engine", "z3", "--timeout",
                     "inf", "--quiet"])
    captured = capsys.readouterr()
    assert code == EXIT_CODES["holds"], captured.out + captured.err
    assert captured.out.startswith("holds")


def test_cross_check_with_z3_agrees(capsys) -> None:
    code, out, err = check_in_process(capsys, MODEL, NEAR_TURN, "--cross-check", "z3")
    assert code == EXIT_CODES["holds"], out + err
    assert "cross-check (z3): holds — agrees" in out


def lying_engine(verdict: Verdict, engine: str):
    """A cross_check stand-in that answers ``verdict`` (a VIOLATED carries a fake cex)."""
    def run(network, spec, engine_name, timeout, progress=None, bab=None) -> Result:
        cex = None
        if verdict is Verdict.VIOLATED:
            cex = Counterexample(np.zeros(5, np.float32), np.zeros(5, np.float32), 0, 0)
        return Result(verdict, cex, reason="stand-in", engine=engine, stats=Stats())
    return run


def test_disagreement_is_an_internal_error(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setattr(cli, "cross_check", lying_engine(Verdict.VIOLATED, "z3"))
    out = tmp_path / "result.txt"
    code = cli.main(["check", str(MODEL), str(NEAR_TURN), "--cross-check", "z3",
                     "--quiet", "--result-file", str(out)])
    captured = capsys.readouterr()
    assert code == EXIT_INTERNAL
    assert "DISAGREES" in captured.out and captured.out.startswith("holds")
    assert "ENGINES DISAGREE" in captured.err and "bab says holds" in captured.err
    assert out.read_text() == "unknown\n"  # neither verdict is written as the answer


def test_disagreement_in_json(monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "cross_check", lying_engine(Verdict.VIOLATED, "z3"))
    code = cli.main(["check", str(MODEL), str(NEAR_TURN), "--cross-check", "z3",
                     "--quiet", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == EXIT_INTERNAL
    assert data["verdict"] == "holds"
    assert data["cross_check"]["verdict"] == "violated"
    assert data["cross_check"]["agreement"] == "disagree"


@pytest.mark.parametrize("second", [Verdict.UNKNOWN, Verdict.TIMEOUT])
def test_undecided_cross_check_keeps_the_verdict(monkeypatch, capsys, second) -> None:
    monkeypatch.setattr(cli, "cross_check", lying_engine(second, "z3"))
    code = cli.main(["check", str(MODEL), str(NEAR_TURN), "--cross-check", "z3",
                     "--quiet"])
    text = capsys.readouterr().out
    assert code == EXIT_CODES["holds"]
    assert f"cross-check (z3): {second.value} — inconclusive" in text


@needs_marabou
def test_an_unconfirmed_marabou_holds_is_marked_not_sound(monkeypatch, capsys) -> None:
    """An inconclusive cross-check does not turn Marabou's 'holds' into a proof: the note
    stays, and the JSON says "sound": false (a bab 'holds' says true)."""
    monkeypatch.setattr(cli, "cross_check", lying_engine(Verdict.TIMEOUT, "bab"))
    code = cli.main(["check", str(MODEL), str(NEAR_TURN), "--engine", "marabou",
                     "--cross-check", "bab", "--quiet", "--json", "--timeout", "60"])
    captured = capsys.readouterr()
    assert code == EXIT_CODES["holds"]
    assert json.loads(captured.out)["sound"] is False
    assert "not sound" in captured.err and "(bab) did not confirm it" in captured.err
    code = cli.main(["check", str(MODEL), str(NEAR_TURN), "--quiet", "--json"])
    assert code == EXIT_CODES["holds"] and json.loads(capsys.readouterr().out)["sound"]


# --------------------------------------------------------------------------- missing package

@pytest.mark.parametrize("flag", ["--engine", "--cross-check"])
def test_missing_maraboupy_is_one_line(flag: str, tmp_path: Path) -> None:
    proc = run_env(without_marabou(tmp_path), "check", MODEL, NEAR_TURN, flag, "marabou")
    assert proc.returncode == EXIT_BAD_INPUT, proc.stdout + proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "marabou" in proc.stderr and "pip install maraboupy==2.0.0" in proc.stderr


def test_help_lists_engines_with_install_hint() -> None:
    proc = run_cli("check", "--help")
    assert proc.returncode == 0
    for name in ("bab", "marabou", "z3"):
        assert f"  {name}: " in proc.stdout
    assert "pip install maraboupy==2.0.0" in proc.stdout
    assert "--cross-check" in proc.stdout


def test_unknown_engine_is_rejected() -> None:
    proc = run_check(MODEL, NEAR_TURN, "--engine", "nnenum")
    assert proc.returncode == EXIT_BAD_INPUT
    assert "invalid choice" in proc.stderr


# --------------------------------------------------------------------------- timeout

@needs_marabou
def test_marabou_honours_the_timeout(benchmarks_dir: Path) -> None:
    """N3,3 phi_2 is far beyond 2 s for Marabou: the answer is timeout, on time."""
    acas = benchmarks_dir / "acasxu"
    model = acas / "ACASXU_run2a_3_3_batch_2000.onnx"
    prop = acas / "prop_2.vnnlib"
    start = time.perf_counter()
    proc = run_cli("check", model, prop, "--engine", "marabou", "--timeout", "2",
                   "--quiet", "--json", "--threads", "1")
    wall = time.perf_counter() - start
    assert proc.returncode == EXIT_CODES["timeout"], proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["verdict"] == "timeout"
    assert data["seconds"] < 2.0 + 1.0, data  # killed at the deadline (+ grace)
    assert wall < 60, wall
