"""``verirepair localize`` end to end: table, JSON, holds, bad input, ACAS Xu.

The planted-fault network of ``tests/unit/test_localize.py`` is exported with the ONNX
writer of ``tests/soundness/nets.py`` (both loaded by file path).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(relative: str, name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UNIT = _load("tests/unit/test_localize.py", "_localize_unit")
NETS = _load("tests/soundness/nets.py", "_soundness_nets")

HEADER = "\n".join(f"(declare-const X_{i} Real)" for i in range(3)) + "\n" + \
    "\n".join(f"(declare-const Y_{j} Real)" for j in range(2)) + "\n" + \
    "\n".join(f"(assert (>= X_{i} -1.0))\n(assert (<= X_{i} 1.0))" for i in range(3)) + "\n"


def run_cli(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "verirepair.cli", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def table_rows(stdout: str) -> list[tuple[int, int, int, float]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "layer"])
    rows = [line.split() for line in lines[start + 1:]]
    return [(int(r), int(l), int(j), float(s)) for r, l, j, s in rows]


@pytest.fixture(scope="module")
def planted_files(tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("localize")
    model = folder / "planted.onnx"
    onnx.save(NETS.to_onnx(UNIT.planted_net()), str(model))
    violated = folder / "y1_ge_y0.vnnlib"
    violated.write_text(HEADER + "(assert (<= Y_0 Y_1))\n")
    holds = folder / "y1_ge_y0_plus_100.vnnlib"
    holds.write_text(HEADER + "(assert (<= (+ Y_0 100.0) Y_1))\n")
    return model, violated, holds


def test_prints_the_ranking_with_the_planted_neuron_first(planted_files, tmp_path):
    model, violated, _ = planted_files
    out = tmp_path / "ranking.json"
    proc = run_cli("localize", model, violated, "--top", "4", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("violated:")
    rows = table_rows(proc.stdout)
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert rows[0][1:3] == (1, 7)
    data = json.loads(out.read_text())
    assert data["verdict"] == "violated" and data["method"] == "causal"
    assert data["params"]["seed"] == 0 and data["params"]["n_values"] == 16
    assert len(data["ranking"]) == 10  # the whole last hidden layer, not just --top
    assert (data["ranking"][0]["layer"], data["ranking"][0]["neuron"]) == (1, 7)
    assert not list(tmp_path.glob(".ranking.json.*"))  # no temporary file left behind


@pytest.mark.parametrize("method", ["causal", "gradient", "shap", "activation", "random"])
def test_every_method_over_all_layers(planted_files, method):
    model, violated, _ = planted_files
    proc = run_cli("localize", model, violated, "--method", method, "--layer", "all",
                   "--top", "20", "--samples", "3000", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert sorted((l, j) for _, l, j, _ in rows) == [(k, j) for k in (0, 1) for j in range(10)]
    if method == "shap":
        assert "layers by impact:" in proc.stdout


def test_same_seed_same_output(planted_files):
    model, violated, _ = planted_files
    args = ("localize", model, violated, "--method", "random", "--seed", "5", "--layer", "0")
    assert run_cli(*args).stdout.splitlines()[2:] == run_cli(*args).stdout.splitlines()[2:]


def test_property_that_holds_has_nothing_to_localize(planted_files, tmp_path):
    model, _, holds = planted_files
    out = tmp_path / "ranking.json"
    proc = run_cli("localize", model, holds, "--samples", "500", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("holds: no counterexample")
    assert "nothing to localize" in proc.stdout
    data = json.loads(out.read_text())
    assert data["verdict"] == "holds" and data["ranking"] == []


@pytest.mark.parametrize("args, words", [
    (("--layer", "5"), "--layer: layer 5: the network has 2 hidden layers"),
    (("--method", "magic"), "invalid choice"),
    (("--layer", "first"), "expected an index"),
    (("--top", "0"), "must be at least 1"),
    (("--values", "1"), "must be at least 2"),
])
def test_bad_arguments_exit_2(planted_files, args, words):
    model, violated, _ = planted_files
    proc = run_cli("localize", model, violated, *args)
    assert proc.returncode == 2
    assert words in proc.stderr


def test_property_without_output_constraints_exit_2(planted_files, tmp_path):
    model, _, _ = planted_files
    prop = tmp_path / "everything.vnnlib"
    prop.write_text(HEADER)
    proc = run_cli("localize", model, prop, "--samples", "10")
    assert proc.returncode == 2
    assert "every output is unsafe" in proc.stderr


def test_missing_files_exit_2_with_one_line(planted_files, tmp_path):
    model, violated, _ = planted_files
    for args in ((tmp_path / "none.onnx", violated), (model, tmp_path / "none.vnnlib"),
                 (model, violated, "--json", tmp_path / "no" / "folder.json")):
        proc = run_cli("localize", *args)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error:")


def test_acasxu_n21_phi2(benchmarks_dir, tmp_path):
    model = benchmarks_dir / "acasxu" / "ACASXU_run2a_2_1_batch_2000.onnx"
    prop = benchmarks_dir / "acasxu" / "prop_2.vnnlib"
    if not model.is_file() or not prop.is_file():
        pytest.skip(f"ACAS Xu N2,1 / prop_2 not found under {benchmarks_dir}")
    out = tmp_path / "acas.json"
    proc = run_cli("localize", model, prop, "--top", "5", "--json", out)
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert len(rows) == 5 and all(l == 5 for _, l, _, _ in rows)
    data = json.loads(out.read_text())
    assert sorted(r["neuron"] for r in data["ranking"]) == list(range(50))
