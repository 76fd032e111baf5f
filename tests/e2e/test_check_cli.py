"""``verirepair check`` end to end: verdicts, exit codes and the result files.

Counterexamples are checked independently of verirepair: the input box is read with a
small regex, the model is re-run in onnxruntime and the unsafe condition is evaluated
with numpy.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "demo_advisory.onnx"
FAR_IS_COC = ROOT / "properties" / "demo_far_is_coc.vnnlib"  # violated
NEAR_TURN = ROOT / "properties" / "demo_near_turn.vnnlib"  # holds

EXIT_CODES = {"holds": 0, "violated": 10, "unknown": 20, "timeout": 21}

_BOUND = re.compile(r"\(assert\s+\((<=|>=)\s+X_(\d+)\s+([-+0-9.eE]+)\s*\)\s*\)")
_PAIR = re.compile(r"\(([XY])_(\d+) ([^\s()]+)\)")
_PLAIN = re.compile(r"-?\d+(\.\d+)?\Z")


# --------------------------------------------------------------------------- helpers

def run_cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "verirepair.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def run_check(model: Path, prop: Path, *extra: str | Path) -> subprocess.CompletedProcess:
    proc = run_cli("check", model, prop, "--timeout", "60", *extra)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def read_input_box(path: Path, n_inputs: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper bounds from the simple ``(assert (<=|>= X_i c))`` lines."""
    lower = np.full(n_inputs, -np.inf)
    upper = np.full(n_inputs, np.inf)
    text = "\n".join(line.split(";", 1)[0] for line in path.read_text().splitlines())
    for op, idx, value in _BOUND.findall(text):
        (upper if op == "<=" else lower)[int(idx)] = float(value)
    assert np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))
    return lower, upper


def ort_outputs(model: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    feed = {inp.name: np.asarray(x, dtype=np.float32).reshape(shape)}
    return np.asarray(sess.run(None, feed)[0], dtype=np.float32).reshape(-1)


def parse_result_file(text: str, n_in: int = 5, n_out: int = 5
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The ``sat`` assignment; checks the VNN-COMP layout and the number format."""
    lines = text.splitlines()
    assert lines[0] == "sat"
    body = "\n".join(lines[1:])
    assert body.startswith("((X_0 ") and body.endswith(")") and text.endswith("\n")
    pairs = _PAIR.findall(body)
    names = [f"{k}_{i}" for k, i, _ in pairs]
    assert names == [f"X_{i}" for i in range(n_in)] + [f"Y_{j}" for j in range(n_out)]
    for _, _, value in pairs:
        assert _PLAIN.match(value), f"not a plain decimal: {value}"
    # nothing else in the block: "(" + pairs separated by whitespace + ")"
    assert re.fullmatch(r"\((\s*\([XY]_\d+ [^\s()]+\))+\s*\)", body), body
    values = np.array([float(v) for _, _, v in pairs])
    return values[:n_in], values[n_in:]


def check_counterexample(model: Path, prop: Path, x: np.ndarray, y: np.ndarray,
                         unsafe: Callable[[np.ndarray], bool]) -> None:
    """x in the box, float32-exact, reproduces y in onnxruntime, and y is unsafe."""
    lower, upper = read_input_box(prop)
    assert np.all(lower <= x) and np.all(x <= upper), (lower, x, upper)
    x32 = x.astype(np.float32)
    assert np.array_equal(x32.astype(np.float64), x), "inputs must be float32 values"
    y_ort = ort_outputs(model, x32)
    assert np.array_equal(y_ort.astype(np.float64), y), (y_ort, y)
    assert unsafe(y_ort)


def far_is_coc_unsafe(y: np.ndarray) -> bool:
    """demo_far_is_coc: COC is not minimal."""
    return bool(np.any(y[1:] <= y[0]))


def phi2_unsafe(y: np.ndarray) -> bool:
    """ACAS Xu phi_2: COC is maximal."""
    return bool(np.all(y[1:] <= y[0]))


def gzip_to(src: Path, dst: Path) -> Path:
    dst.write_bytes(gzip.compress(src.read_bytes()))
    return dst


# --------------------------------------------------------------------------- demo model

def test_demo_violated_result_file(tmp_path: Path) -> None:
    out = tmp_path / "result.txt"
    proc = run_check(MODEL, FAR_IS_COC, "--result-file", out)
    assert proc.returncode == EXIT_CODES["violated"], proc.stderr
    assert proc.stdout.startswith("violated")
    x, y = parse_result_file(out.read_text())
    check_counterexample(MODEL, FAR_IS_COC, x, y, far_is_coc_unsafe)
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]  # no temp files left


def test_demo_holds_result_file(tmp_path: Path) -> None:
    out = tmp_path / "result.txt"
    out.write_text("stale content\n")  # overwritten
    proc = run_check(MODEL, NEAR_TURN, "--result-file", out)
    assert proc.returncode == EXIT_CODES["holds"], proc.stderr
    assert proc.stdout.startswith("holds")
    assert out.read_text() == "unsat\n"


@pytest.mark.parametrize("split", ["relu", "input"])
def test_split_kinds_give_the_same_demo_verdicts(tmp_path: Path, split: str) -> None:
    """--split relu forces ReLU splitting on the 5-input demo (auto picks input
    splitting there): same verdicts, the counterexample still re-checked."""
    out = tmp_path / "result.txt"
    proc = run_check(MODEL, FAR_IS_COC, "--split", split, "--result-file", out)
    assert proc.returncode == EXIT_CODES["violated"], proc.stderr
    x, y = parse_result_file(out.read_text())
    check_counterexample(MODEL, FAR_IS_COC, x, y, far_is_coc_unsafe)
    proc = run_check(MODEL, NEAR_TURN, "--split", split)
    assert proc.returncode == EXIT_CODES["holds"], proc.stderr
    work = proc.stdout.splitlines()[-1]  # "  time: ... s, subproblems: 3 (ReLU splitting)"
    unit, name = SPLIT_WORDS[split]
    assert f", {unit}: " in work and work.endswith(f"({name})"), work
    data = json.loads(run_check(MODEL, NEAR_TURN, "--split", split, "--json").stdout)
    assert data["verdict"] == "holds" and data["split"] == split


SPLIT_WORDS = {"relu": ("subproblems", "ReLU splitting"), "input": ("boxes", "input splitting")}


def test_split_without_a_bab_engine_is_refused() -> None:
    proc = run_check(MODEL, NEAR_TURN, "--engine", "z3", "--split", "input")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --split input")
    assert proc.stderr.strip().count("\n") == 0


def test_unknown_split_kind_is_refused() -> None:
    proc = run_check(MODEL, NEAR_TURN, "--split", "neurons")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_demo_json_output() -> None:
    proc = run_check(MODEL, FAR_IS_COC, "--json", "--quiet")
    assert proc.returncode == EXIT_CODES["violated"], proc.stderr
    data = json.loads(proc.stdout)
    assert data["verdict"] == "violated"
    assert data["model"] == str(MODEL) and data["property"] == str(FAR_IS_COC)
    cex = data["counterexample"]
    x, y = np.array(cex["x"]), np.array(cex["y"])
    assert x.shape == y.shape == (5,)
    check_counterexample(MODEL, FAR_IS_COC, x, y, far_is_coc_unsafe)

    proc = run_check(MODEL, NEAR_TURN, "--json", "--quiet")
    assert proc.returncode == EXIT_CODES["holds"], proc.stderr
    data = json.loads(proc.stdout)
    assert data["verdict"] == "holds" and data["counterexample"] is None


@pytest.mark.parametrize("prop,code", [(FAR_IS_COC, 10), (NEAR_TURN, 0)],
                         ids=["violated", "holds"])
def test_quiet_has_no_stderr(prop: Path, code: int) -> None:
    proc = run_check(MODEL, prop, "--quiet")
    assert proc.returncode == code
    assert proc.stderr == ""


@pytest.mark.parametrize("prop,code", [(FAR_IS_COC, 10), (NEAR_TURN, 0)],
                         ids=["violated", "holds"])
def test_gzipped_inputs_give_same_verdict(tmp_path: Path, prop: Path, code: int) -> None:
    model_gz = gzip_to(MODEL, tmp_path / "demo.onnx.gz")
    prop_gz = gzip_to(prop, tmp_path / f"{prop.stem}.vnnlib.gz")
    for model, spec in [(model_gz, prop), (MODEL, prop_gz), (model_gz, prop_gz)]:
        out = tmp_path / "result.txt"
        proc = run_check(model, spec, "--quiet", "--result-file", out)
        assert proc.returncode == code, (model, spec, proc.stderr)
        first = out.read_text().splitlines()[0]
        assert first == ("sat" if code == 10 else "unsat")
        if code == 10:
            x, y = parse_result_file(out.read_text())
            check_counterexample(MODEL, prop, x, y, far_is_coc_unsafe)


@pytest.mark.parametrize("args", [["--help"], ["check", "--help"]], ids=["top", "check"])
def test_help_lists_exit_codes(args: list[str]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 0 and proc.stderr == ""
    text = proc.stdout
    assert "exit codes:" in text
    for word, code in [("holds", 0), ("violated", 10), ("unknown", 20), ("timeout", 21),
                       ("bad input", 2), ("internal", 1)]:
        assert re.search(rf"^\s*{code}\s+{word}\b", text, re.MULTILINE), (word, text)


# --------------------------------------------------------------------------- ACAS Xu

def acas(benchmarks_dir: Path, a: int, b: int, prop: int) -> tuple[Path, Path]:
    folder = benchmarks_dir / "acasxu"
    return folder / f"ACASXU_run2a_{a}_{b}_batch_2000.onnx", folder / f"prop_{prop}.vnnlib"


def test_acasxu_n11_phi1_holds(benchmarks_dir: Path, tmp_path: Path) -> None:
    model, prop = acas(benchmarks_dir, 1, 1, 1)
    out = tmp_path / "result.txt"
    proc = run_check(model, prop, "--quiet", "--result-file", out)
    assert proc.returncode == EXIT_CODES["holds"], proc.stdout + proc.stderr
    assert out.read_text() == "unsat\n"


@pytest.mark.parametrize("ab", [(2, 1), (3, 4)], ids=["N2_1", "N3_4"])
def test_acasxu_phi2_violated_with_counterexample(benchmarks_dir: Path, tmp_path: Path,
                                                  ab: tuple[int, int]) -> None:
    model, prop = acas(benchmarks_dir, *ab, 2)
    out = tmp_path / "result.txt"
    proc = run_check(model, prop, "--quiet", "--result-file", out)
    assert proc.returncode == EXIT_CODES["violated"], proc.stdout + proc.stderr
    x, y = parse_result_file(out.read_text())
    check_counterexample(model, prop, x, y, phi2_unsafe)
