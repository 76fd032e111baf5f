"""End-to-end checks of the bundled demo network and its two properties.

These tests use only onnx/onnxruntime/numpy (no verirepair code): the input boxes
are read from the VNN-LIB files with a tiny regex and the unsafe output conditions
are evaluated directly with numpy.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "demo_advisory.onnx"
MAKE_DEMO = ROOT / "models" / "make_demo.py"
FAR_IS_COC = ROOT / "properties" / "demo_far_is_coc.vnnlib"
NEAR_TURN = ROOT / "properties" / "demo_near_turn.vnnlib"

_BOUND = re.compile(r"\(assert\s+\((<=|>=)\s+X_(\d+)\s+([-+0-9.eE]+)\s*\)\s*\)")


def read_input_box(path: Path, n_inputs: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper input bounds from the simple ``(assert (<=|>= X_i c))`` lines."""
    lower = np.full(n_inputs, -np.inf)
    upper = np.full(n_inputs, np.inf)
    text = "\n".join(line.split(";", 1)[0] for line in path.read_text().splitlines())
    for op, idx, value in _BOUND.findall(text):
        if op == "<=":
            upper[int(idx)] = float(value)
        else:
            lower[int(idx)] = float(value)
    assert np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)), f"unbounded box in {path}"
    return lower, upper


def session(path: Path = MODEL) -> ort.InferenceSession:
    """A single-threaded CPU onnxruntime session for ``path``."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def evaluate(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Outputs (N, 5) for inputs (N, 5); the model's batch size is fixed to 1."""
    rows = x.astype(np.float32).reshape(-1, 1, 1, 1, x.shape[1])
    return np.concatenate([sess.run(None, {"input": row})[0] for row in rows])


def sample_box(path: Path, n: int, seed: int) -> np.ndarray:
    """``n`` seeded uniform samples from the input box of a property file."""
    lower, upper = read_input_box(path)
    return lower + (upper - lower) * np.random.default_rng(seed).uniform(size=(n, lower.size))


def test_committed_model_loads_and_has_acasxu_shape() -> None:
    """(a) The committed ONNX loads, takes [1,1,1,5] and returns 5 scores."""
    onnx.checker.check_model(onnx.load(str(MODEL)), full_check=True)
    sess = session()
    (inp,) = sess.get_inputs()
    (out,) = sess.get_outputs()
    assert inp.name == "input" and list(inp.shape) == [1, 1, 1, 5]
    assert out.name == "output" and list(out.shape) == [1, 5]
    y = sess.run(None, {"input": np.zeros((1, 1, 1, 5), dtype=np.float32)})[0]
    assert y.shape == (1, 5) and np.all(np.isfinite(y))
    ops = [node.op_type for node in onnx.load(str(MODEL)).graph.node]
    assert ops == ["Flatten"] + ["MatMul", "Add", "Relu"] * 3 + ["MatMul", "Add"]


def test_regeneration_is_byte_identical(tmp_path: Path) -> None:
    """(b) Running make_demo.py again reproduces the committed file byte for byte (~4 s)."""
    out = tmp_path / "x.onnx"
    subprocess.run([sys.executable, str(MAKE_DEMO), "--out", str(out), "--samples", "0"],
                   check=True, capture_output=True, timeout=300)
    assert out.read_bytes() == MODEL.read_bytes()


def test_sampling_finds_violation_of_far_is_coc() -> None:
    """(c) Some sampled input of demo_far_is_coc makes COC not minimal (some Y_j <= Y_0)."""
    x = sample_box(FAR_IS_COC, 20_000, seed=1234)
    y = evaluate(session(), x)
    unsafe = np.any(y[:, 1:] <= y[:, :1], axis=1)
    assert unsafe.any(), "expected the planted violation of demo_far_is_coc"
    assert unsafe.mean() < 0.05, f"violation should be rare, got {unsafe.mean():.2%}"
    lower, upper = read_input_box(FAR_IS_COC)
    witness = x[np.argmax(unsafe)]
    assert np.all(lower <= witness) and np.all(witness <= upper)


def test_sampling_finds_no_violation_of_near_turn() -> None:
    """demo_near_turn: no sample makes COC minimal, with a comfortable margin."""
    y = evaluate(session(), sample_box(NEAR_TURN, 20_000, seed=1234))
    unsafe = np.all(y[:, :1] <= y[:, 1:], axis=1)
    assert not unsafe.any()
    assert float(np.min(y[:, 0] - y[:, 1:].min(axis=1))) > 0.5


@pytest.mark.parametrize("path", [FAR_IS_COC, NEAR_TURN], ids=lambda p: p.stem)
def test_property_files_declare_five_inputs_and_outputs(path: Path) -> None:
    """Both property files declare X_0..X_4 and Y_0..Y_4 and bound every input."""
    text = path.read_text()
    for i in range(5):
        assert f"(declare-const X_{i} Real)" in text
        assert f"(declare-const Y_{i} Real)" in text
    lower, upper = read_input_box(path)
    assert np.all(lower < upper)
