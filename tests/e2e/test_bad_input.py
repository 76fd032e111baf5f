"""Bad input to ``verirepair check``: one clear line on stderr, exit code 2, no traceback.

Every test runs the CLI in a fresh subprocess, exactly as a user would.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "demo_advisory.onnx"
PROP = ROOT / "properties" / "demo_near_turn.vnnlib"
EXIT_BAD_INPUT = 2


# --------------------------------------------------------------------------- helpers

def run_check(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "verirepair.cli", "check", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def error_line(proc: subprocess.CompletedProcess, *must_contain: str | Path) -> str:
    """Assert the bad-input contract and return the single error line."""
    everything = proc.stdout + proc.stderr
    assert "Traceback" not in everything, everything
    assert proc.returncode == EXIT_BAD_INPUT, (proc.returncode, everything)
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, repr(proc.stderr)
    line = proc.stderr.rstrip("\n")
    assert line.startswith("error: ") and len(line) > len("error: ") + 10, line
    for text in must_contain:
        assert str(text) in line, (text, line)
    return line


def decls(n_in: int = 5, n_out: int = 5) -> str:
    xs = [f"(declare-const X_{i} Real)" for i in range(n_in)]
    ys = [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    return "\n".join(xs + ys) + "\n"


def box(n_in: int = 5, lo: float = -0.5, hi: float = 0.5) -> str:
    return "".join(f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))\n"
                   for i in range(n_in))


def write_prop(tmp_path: Path, text: str, name: str = "p.vnnlib") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def save_graph(path: Path, nodes: list, inits: list, n_in: int = 5, n_out: int = 5) -> Path:
    """A model with input ``input`` [1, n_in] and output ``output`` [1, n_out]."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, n_in])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n_out])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def small_mlp(path: Path, weight: np.ndarray | None = None) -> Path:
    """input -> MatMul(W1) -> Add -> Relu -> MatMul(W2) -> output (5 -> 4 -> 5)."""
    rng = np.random.default_rng(0)
    w1 = rng.uniform(-1, 1, (5, 4)).astype(np.float32) if weight is None else weight
    inits = [numpy_helper.from_array(w1, "W1"),
             numpy_helper.from_array(np.zeros(4, np.float32), "B1"),
             numpy_helper.from_array(rng.uniform(-1, 1, (4, 5)).astype(np.float32), "W2")]
    nodes = [helper.make_node("MatMul", ["input", "W1"], ["h"], name="layer1"),
             helper.make_node("Add", ["h", "B1"], ["a"], name="bias1"),
             helper.make_node("Relu", ["a"], ["r"], name="relu1"),
             helper.make_node("MatMul", ["r", "W2"], ["output"], name="layer2")]
    return save_graph(path, nodes, inits)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def good_prop(tmp_path: Path) -> Path:
    return write_prop(tmp_path, decls() + box() + "(assert (<= Y_0 -1000))\n", "good.vnnlib")


# --------------------------------------------------------------------------- files

def test_missing_model_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    error_line(run_check(missing, PROP), missing, "not found")


def test_missing_property_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.vnnlib"
    error_line(run_check(MODEL, missing), missing)


@pytest.mark.parametrize("content", [
    np.random.default_rng(1).bytes(4096),
    np.random.default_rng(2).bytes(333),
    b"this is not an ONNX model\n",
    b"",
], ids=["random-4k", "random-333", "text", "empty"])
def test_model_file_that_is_not_onnx(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(content)
    error_line(run_check(path, PROP), path)


def test_truncated_onnx_gz(tmp_path: Path) -> None:
    packed = gzip.compress(MODEL.read_bytes())
    path = tmp_path / "model.onnx.gz"
    path.write_bytes(packed[: len(packed) // 2])
    error_line(run_check(path, PROP), path)


def test_onnx_gz_that_is_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx.gz"
    path.write_bytes(MODEL.read_bytes())
    error_line(run_check(path, PROP), path)


def test_truncated_vnnlib_gz(tmp_path: Path) -> None:
    packed = gzip.compress(PROP.read_bytes())
    path = tmp_path / "prop.vnnlib.gz"
    path.write_bytes(packed[: len(packed) // 2])
    error_line(run_check(MODEL, path), path)


def test_model_path_is_a_directory(tmp_path: Path) -> None:
    error_line(run_check(tmp_path, PROP), tmp_path)


def test_property_path_is_a_directory(tmp_path: Path) -> None:
    error_line(run_check(MODEL, tmp_path), tmp_path)


# --------------------------------------------------------------------------- VNN-LIB

def test_vnnlib_unbalanced_paren_has_line_and_column(tmp_path: Path) -> None:
    text = decls() + box() + "(assert (<= Y_0 Y_1)\n"  # missing ')'
    path = write_prop(tmp_path, text)
    line_no = text.count("\n")  # the last line
    line = error_line(run_check(MODEL, path), f"{path}:{line_no}:1:")
    assert "')'" in line


def test_vnnlib_extra_close_paren_has_line_and_column(tmp_path: Path) -> None:
    text = decls() + box() + "(assert (<= Y_0 Y_1)))\n"
    path = write_prop(tmp_path, text)
    line_no = text.count("\n")
    error_line(run_check(MODEL, path), f"{path}:{line_no}:22:")


def test_vnnlib_unknown_operator_has_line_and_column(tmp_path: Path) -> None:
    text = decls() + box() + "(assert\n   (frobnicate Y_0 Y_1))\n"
    path = write_prop(tmp_path, text)
    line_no = text.count("\n")
    error_line(run_check(MODEL, path), f"{path}:{line_no}:5:", "frobnicate")


def test_vnnlib_undeclared_variable(tmp_path: Path) -> None:
    text = decls() + box() + "(assert (<= Y_9 0))\n"
    path = write_prop(tmp_path, text)
    error_line(run_check(MODEL, path), f"{path}:{text.count(chr(10))}:13:", "Y_9")


def test_vnnlib_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "binary.vnnlib"
    path.write_bytes(b"(declare-const X_0 Real)\n\xff\xfe\x00garbage")
    error_line(run_check(MODEL, path), path)


# --------------------------------------------------------------------------- mismatches

def test_spec_with_fewer_inputs_than_model(tmp_path: Path) -> None:
    path = write_prop(tmp_path, decls(4, 5) + box(4) + "(assert (<= Y_0 0))\n")
    line = error_line(run_check(MODEL, path), path, MODEL)
    assert "4" in line and "5" in line and "input" in line


def test_spec_with_more_outputs_than_model(tmp_path: Path) -> None:
    path = write_prop(tmp_path, decls(5, 6) + box() + "(assert (<= Y_5 0))\n")
    line = error_line(run_check(MODEL, path), path, MODEL)
    assert "6" in line and "output" in line


def test_empty_input_box(tmp_path: Path) -> None:
    text = decls() + box(4) + "(assert (>= X_4 0.5))\n(assert (<= X_4 0.25))\n" \
        "(assert (<= Y_0 0))\n"
    path = write_prop(tmp_path, text)
    line = error_line(run_check(MODEL, path), f"{path}:")
    assert "X_4" in line and "empty" in line
    # the location is a line:column inside the file
    loc = line.split(str(path), 1)[1].split(":")
    assert loc[1].isdigit() and loc[2].isdigit()


# --------------------------------------------------------------------------- models

@pytest.mark.parametrize("op", ["Sigmoid", "Softmax", "Tanh"])
def test_unsupported_operator_names_operator_and_node(tmp_path: Path, op: str,
                                                      good_prop: Path) -> None:
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.uniform(-1, 1, (5, 5)).astype(np.float32), "W")]
    nodes = [helper.make_node("MatMul", ["input", "W"], ["h"], name="dense"),
             helper.make_node(op, ["h"], ["output"], name="the_squash")]
    path = save_graph(tmp_path / f"{op}.onnx", nodes, inits)
    error_line(run_check(path, good_prop), path, op, "the_squash")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_weight(tmp_path: Path, bad: float, good_prop: Path) -> None:
    w = np.random.default_rng(4).uniform(-1, 1, (5, 4)).astype(np.float32)
    w[2, 1] = bad
    path = small_mlp(tmp_path / "nonfinite.onnx", weight=w)
    line = error_line(run_check(path, good_prop), path, "W1")
    assert "NaN" in line or "Inf" in line or "finite" in line


def test_branching_graph_is_rejected(tmp_path: Path, good_prop: Path) -> None:
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.uniform(-1, 1, (5, 5)).astype(np.float32), "W")]
    nodes = [helper.make_node("MatMul", ["input", "W"], ["h"], name="dense"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "input"], ["output"], name="residual")]
    path = save_graph(tmp_path / "residual.onnx", nodes, inits)
    error_line(run_check(path, good_prop), path, "input")


def test_two_input_dependent_operands_is_rejected(tmp_path: Path, good_prop: Path) -> None:
    """Mul of a tensor with itself (the only consumer twice) is not linear."""
    nodes = [helper.make_node("Mul", ["input", "input"], ["output"], name="square")]
    path = save_graph(tmp_path / "square.onnx", nodes, [])
    error_line(run_check(path, good_prop), path)


def test_constant_folding_shape_mismatch(tmp_path: Path, good_prop: Path) -> None:
    """A malformed graph (constants of incompatible shapes) is bad input, not a crash."""
    inits = [numpy_helper.from_array(np.ones((5, 5), np.float32), "W"),
             numpy_helper.from_array(np.ones(3, np.float32), "a"),
             numpy_helper.from_array(np.ones(4, np.float32), "b")]
    nodes = [helper.make_node("Add", ["a", "b"], ["c"], name="fold_me"),
             helper.make_node("MatMul", ["input", "W"], ["h"], name="dense"),
             helper.make_node("Add", ["h", "c"], ["output"], name="bias")]
    path = save_graph(tmp_path / "fold.onnx", nodes, inits)
    error_line(run_check(path, good_prop), path, "fold_me")


def test_model_rejected_by_onnxruntime(tmp_path: Path, good_prop: Path) -> None:
    """float64 weights with a float32 input: we could lower it, onnxruntime cannot run it."""
    inits = [numpy_helper.from_array(np.ones((5, 5), np.float64), "W")]
    nodes = [helper.make_node("MatMul", ["input", "W"], ["output"], name="dense")]
    path = save_graph(tmp_path / "double.onnx", nodes, inits)
    error_line(run_check(path, good_prop), path, "onnxruntime")


def test_missing_external_data(tmp_path: Path, good_prop: Path) -> None:
    tensor = numpy_helper.from_array(np.ones((5, 5), np.float32), "W")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "missing.bin"
    nodes = [helper.make_node("MatMul", ["input", "W"], ["output"], name="dense")]
    path = save_graph(tmp_path / "external.onnx", nodes, [tensor])
    error_line(run_check(path, good_prop), path, "'W'")


def test_result_file_in_missing_folder(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "folder" / "result.txt"
    error_line(run_check(MODEL, PROP, "--result-file", target), target.parent)
    assert not (tmp_path / "no").exists()


def test_result_file_that_is_a_folder(tmp_path: Path) -> None:
    error_line(run_check(MODEL, PROP, "--result-file", tmp_path), tmp_path, "folder")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", [["--timeout", "-5"], ["--timeout", "nan"],
                                    ["--timeout", "soon"], ["--threads", "-1"]],
                         ids=["timeout-negative", "timeout-nan", "timeout-text",
                              "threads-negative"])
def test_bad_option_values(option: list[str]) -> None:
    """Option errors are argparse's (usage + one error line), never a traceback."""
    proc = run_check(MODEL, PROP, *option)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == EXIT_BAD_INPUT
    last = proc.stderr.rstrip("\n").splitlines()[-1]
    assert "error:" in last and option[0] in last


# --------------------------------------------------------------------------- inputs untouched

def test_inputs_are_never_modified(tmp_path: Path) -> None:
    model = small_mlp(tmp_path / "m.onnx")
    prop = write_prop(tmp_path, decls() + box() + "(assert (<= Y_0 -1000))\n")
    before = (sha(model), sha(prop), model.stat().st_mtime_ns)
    proc = run_check(model, prop, "--quiet", "--result-file", tmp_path / "out.txt",
                     "--timeout", "60")
    assert proc.returncode in (0, 10), proc.stderr
    assert (sha(model), sha(prop), model.stat().st_mtime_ns) == before
    # also when the run fails on bad input after the model was read
    bad = write_prop(tmp_path, decls(4, 5) + box(4), "bad.vnnlib")
    error_line(run_check(model, bad))
    assert (sha(model), sha(prop), model.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.vnnlib", "m.onnx",
                                                          "out.txt", "p.vnnlib"]


def test_repair_of_a_property_unsafe_for_every_output(tmp_path: Path) -> None:
    """A disjunct without output constraints makes every output unsafe: no repair can
    help, and repair says so in one line instead of trying."""
    prop = write_prop(tmp_path, decls() + box() + "(assert (or (<= Y_0 -1000.0) (<= 0 1)))\n")
    out = tmp_path / "fixed.onnx"
    cmd = [sys.executable, "-m", "verirepair.cli", "repair", str(MODEL), str(prop),
           "-o", str(out), "--budget", "60", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    error_line(proc, prop, "every output is unsafe")
    assert not out.exists()


# --------------------------------------------------------------------------- in-process cases

def main_in_process(capsys, *args: str | Path) -> tuple[int, str]:
    """``verirepair ARGS`` in this process (cheaper than a subprocess for checks that stop
    before any work): (exit code, stderr), stderr being one line."""
    from verirepair import cli

    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as stop:  # argparse: usage and one error line
        code = stop.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def demo_copies(tmp_path: Path) -> tuple[Path, Path]:
    model, prop = tmp_path / "m.onnx", tmp_path / "p.vnnlib"
    model.write_bytes(MODEL.read_bytes())
    prop.write_bytes(PROP.read_bytes())
    return model, prop


def test_no_output_may_overwrite_an_input(tmp_path: Path, capsys) -> None:
    model, prop = demo_copies(tmp_path)
    before = (sha(model), sha(prop))
    csv_file = tmp_path / "instances.csv"
    csv_file.write_text(f"{model},{prop},10\n")
    expected = tmp_path / "expected.csv"
    expected.write_text(f"{model},{prop},holds\n")
    csvs = (sha(csv_file), sha(expected))
    for args, flag in [(("check", model, prop, "--result-file", prop), "--result-file"),
                       (("localize", model, prop, "--json", model), "--json"),
                       (("batch", csv_file, "-o", model, "--quiet"), "-o"),
                       (("batch", csv_file, "-o", csv_file, "--quiet"), "-o"),
                       (("batch", csv_file, "--expected", expected, "-o", expected,
                         "--quiet"), "-o")]:
        code, err = main_in_process(capsys, *args)
        assert code == EXIT_BAD_INPUT and err.count("\n") == 1, err
        assert f"{flag} would overwrite" in err
    assert (sha(model), sha(prop)) == before
    assert (sha(csv_file), sha(expected)) == csvs


def test_names_too_long_are_one_line(tmp_path: Path, capsys) -> None:
    model, prop = demo_copies(tmp_path)
    long_name = "a" * 300
    cases = [("check", tmp_path / f"{long_name}.onnx", prop),
             ("check", model, prop, "--result-file", tmp_path / long_name),
             ("localize", model, prop, "--json", tmp_path / long_name),
             # a name the system takes, but not with the temporary file's extra characters
             ("repair", model, prop, "-o", tmp_path / f"{'b' * 250}.onnx")]
    for args in cases:
        code, err = main_in_process(capsys, *args)
        assert code == EXIT_BAD_INPUT and err.count("\n") == 1, (args, err)
        assert "too long" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "p.vnnlib"]


@pytest.mark.parametrize("args, words", [
    (["localize", "{model}", "{prop}", "--samples", "1000000000"], "--samples"),
    (["repair", "{model}", "{prop}", "-o", "{tmp}/r.onnx", "--fidelity-samples",
      "1000000000"], "--fidelity-samples"),
    (["repair", "{model}", "{prop}", "-o", "{tmp}/r.onnx", "--domain-lower", "-1", "-1",
      "-1", "-1", "-1", "--domain-upper", "inf", "1", "1", "1", "1"], "must be finite"),
], ids=["localize-samples", "fidelity-samples", "infinite-domain"])
def test_sizes_and_domains_that_cannot_work_are_refused_up_front(tmp_path: Path, capsys,
                                                                  args, words) -> None:
    model, prop = demo_copies(tmp_path)
    filled = [a.format(model=model, prop=prop, tmp=tmp_path) for a in args]
    code, err = main_in_process(capsys, *filled)
    assert code == EXIT_BAD_INPUT and words in err.splitlines()[-1], err
    assert not (tmp_path / "r.onnx").exists()


def test_negative_numbers_with_exponents_are_option_values() -> None:
    # argparse alone reads '-1e-3' as an option name: "expected at least one argument"
    from verirepair.cli import build_parser

    args = build_parser().parse_args(
        ["repair", "m.onnx", "p.vnnlib", "-o", "f.onnx", "--domain-lower", "-1e-3",
         "-2E+1", "-.5", "-3", "--domain-upper", "1", "2", "3", "4"])
    assert args.domain_lower == [-1e-3, -20.0, -0.5, -3.0]
    assert args.domain_upper == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(SystemExit):  # an unknown option is still an error
        build_parser().parse_args(["repair", "m.onnx", "p.vnnlib", "-o", "f.onnx",
                                   "--domain-lower", "-x"])
