"""The VNN-COMP entry scripts (scripts/vnncomp): argument checks, result files, and the
counterexample of a ``sat`` re-checked in onnxruntime."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_check_cli import (FAR_IS_COC, MODEL, NEAR_TURN, ROOT, check_counterexample,
                            far_is_coc_unsafe, parse_result_file)

SCRIPTS = ROOT / "scripts" / "vnncomp"


def run_script(name: str, *args: str | Path, python: str = sys.executable
               ) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=python)
    proc = subprocess.run(["bash", str(SCRIPTS / name), *map(str, args)], capture_output=True,
                          text=True, timeout=180, env=env, cwd="/")
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def test_run_instance_writes_the_answers(tmp_path: Path) -> None:
    result = tmp_path / "out.txt"
    result.write_text("unsat\n")  # a stale answer from an earlier run
    proc = run_script("run_instance.sh", "v1", "demo", MODEL, FAR_IS_COC, result, "60")
    assert proc.returncode == 0, proc.stderr
    x, y = parse_result_file(result.read_text())
    check_counterexample(MODEL, FAR_IS_COC, x, y, far_is_coc_unsafe)
    proc = run_script("run_instance.sh", "v1", "demo", MODEL, NEAR_TURN, result, "60")
    assert proc.returncode == 0 and result.read_text() == "unsat\n", proc.stderr


def test_bad_input_leaves_no_result_file_and_fails_prepare(tmp_path: Path) -> None:
    broken = tmp_path / "broken.vnnlib"
    broken.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1.0)\n")
    result = tmp_path / "out.txt"
    result.write_text("unsat\n")
    proc = run_script("run_instance.sh", "v1", "demo", MODEL, broken, result, "60")
    assert proc.returncode == 2 and not result.exists()
    assert proc.stderr.startswith("error: ") and "broken.vnnlib" in proc.stderr
    assert run_script("prepare_instance.sh", "v1", "demo", MODEL, broken).returncode == 1
    assert run_script("prepare_instance.sh", "v1", "demo", MODEL, NEAR_TURN).returncode == 0


def test_the_version_string_and_argument_count_are_checked(tmp_path: Path) -> None:
    for name, args in (("run_instance.sh", ["v2", "demo", MODEL, NEAR_TURN, "r.txt", "60"]),
                       ("run_instance.sh", ["v1", "demo", MODEL, NEAR_TURN]),
                       ("prepare_instance.sh", ["v0", "demo", MODEL, NEAR_TURN]),
                       ("install_tool.sh", ["v2"])):
        proc = run_script(name, *args, python="/bin/false")  # never installs anything
        assert proc.returncode == 1 and "v1" in proc.stderr, (name, proc.stderr)


@pytest.mark.parametrize("timeout, passed", [("60", "58.000"), ("300.5", "298.500"),
                                             ("4", "4"), ("1.5", "1.5"), ("soon", "soon")])
def test_run_instance_keeps_the_start_up_inside_the_timeout(tmp_path: Path, timeout: str,
                                                            passed: str) -> None:
    fake = tmp_path / "fake_python"  # prints the arguments check would have been given
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    proc = run_script("run_instance.sh", "v1", "demo", MODEL, NEAR_TURN, tmp_path / "r.txt",
                      timeout, python=str(fake))
    assert proc.returncode == 0, proc.stderr
    assert f" --timeout {passed} --result-file " in proc.stdout
