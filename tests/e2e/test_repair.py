"""``verirepair repair`` end to end, plus unit tests of the last-layer QP encoding."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from verirepair.lastlayer import BoxRows
from verirepair.repair.qp import SampleRows, build_qp, solve

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "demo_advisory.onnx"
FAR_IS_COC = ROOT / "properties" / "demo_far_is_coc.vnnlib"  # violated
NEAR_TURN = ROOT / "properties" / "demo_near_turn.vnnlib"  # holds


def run_cli(*args: str | Path, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "verirepair.cli", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- tiny models

def tiny_model(seed: int = 3, sizes: tuple[int, ...] = (2, 8, 8, 2)) -> onnx.ModelProto:
    """MatMul + Add (+ Relu) MLP with float32 weights; input 'x' [1, n], output 'y'."""
    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], [], "x"
    last = len(sizes) - 2
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (0.3 * rng.standard_normal(b)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(bias, f"B{i}")]
        out = "y" if i == last else f"a{i}"
        nodes += [helper.make_node("MatMul", [cur, f"W{i}"], [f"m{i}"], name=f"MatMul{i}"),
                  helper.make_node("Add", [f"m{i}", f"B{i}"], [out], name=f"Add{i}")]
        cur = out
        if i < last:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"], name=f"Relu{i}"))
            cur = f"r{i}"
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, sizes[-1]])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def vnnlib(lower: list[float], upper: list[float], n_out: int, unsafe: str) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines += [f"(assert (>= X_{i} {lo!r}))", f"(assert (<= X_{i} {hi!r}))"]
    return "\n".join(lines + [unsafe]) + "\n"


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    return np.stack([sess.run(None, {inp.name: row.astype(np.float32).reshape(shape)})[0]
                     .reshape(-1) for row in x])


def planted_problem(tmp_path: Path, steps: int) -> tuple[Path, Path, np.ndarray, float]:
    """Tiny model and a property violated on ~10 % of [0, 0.5]^2 ("Y_0 - Y_1 > t").

    Returns (model path, property path, the steps x steps grid used, t).
    """
    model_path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), str(model_path))
    grid = np.stack(np.meshgrid(np.linspace(0, 0.5, steps), np.linspace(0, 0.5, steps)),
                    -1).reshape(-1, 2)
    gap = ort_run(model_path, grid) @ np.array([1.0, -1.0])
    threshold = float(np.quantile(gap, 0.1))
    prop = tmp_path / "planted.vnnlib"
    prop.write_text(vnnlib([0.0, 0.0], [0.5, 0.5], 2,
                           f"(assert (<= (+ Y_0 (* -1.0 Y_1)) {threshold!r}))"))
    return model_path, prop, grid, threshold


# --------------------------------------------------------------------------- (a) demo

def test_demo_repair_is_proven(tmp_path: Path) -> None:
    before = sha256(MODEL)
    out, report = tmp_path / "repaired.onnx", tmp_path / "report.json"
    cert = tmp_path / "proof.npz"
    proc = run_cli("repair", MODEL, FAR_IS_COC, "--preserve", NEAR_TURN, "-o", out,
                   "--report", report, "--budget", "600", "--quiet", "--certificate", cert)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "proven" in proc.stdout
    assert sha256(MODEL) == before
    data = json.loads(report.read_text())
    assert data["status"] == "proven"
    assert data["agreement"] >= 0.99
    assert all(p["after"] == "holds" for p in data["properties"])
    assert 0 < data["max_output_change"] < 10 * data["output_scale"]
    y = ort_run(out, np.random.default_rng(0).uniform(-1, 1, (16, 5)))
    assert y.shape == (16, 5) and np.all(np.isfinite(y))
    assert all(p["engine"].startswith("certificate") for p in data["properties"])
    for prop in (FAR_IS_COC, NEAR_TURN):
        check = run_cli("check", out, prop, "--timeout", "120", "--quiet")
        assert check.returncode == 0 and check.stdout.startswith("holds"), check.stdout
        check = run_cli("check", out, prop, "--timeout", "120", "--quiet", "--certificate",
                        cert)
        assert check.returncode == 0 and check.stdout.startswith("holds"), check.stdout
        assert "proof: certificate" in check.stdout
    if importlib.util.find_spec("maraboupy") is not None:  # the certificate decides all:
        check = run_cli("check", out, NEAR_TURN, "--quiet", "--certificate", cert,
                        "--engine", "marabou")  # a proof, whatever the unsound engine
        assert check.returncode == 0 and "proof: certificate" in check.stdout
        assert "not a proof" not in check.stdout + check.stderr, check.stderr
    # The same certificate on the ORIGINAL model: the violation is still found.
    check = run_cli("check", MODEL, FAR_IS_COC, "--quiet", "--certificate", cert)
    assert check.returncode == 10 and check.stdout.startswith("violated"), check.stdout
    # A property the certificate does not cover: a warning, then a plain proof.
    other = tmp_path / "other.vnnlib"
    other.write_text(NEAR_TURN.read_text() + "\n; a different file\n")
    check = run_cli("check", out, other, "--quiet", "--certificate", cert)
    assert check.returncode == 0 and "holds no certificate" in check.stderr
    # Not a certificate: one line, exit 2.
    bad = tmp_path / "bad.npz"
    bad.write_text("not a certificate")
    check = run_cli("check", out, NEAR_TURN, "--quiet", "--certificate", bad)
    assert check.returncode == 2 and check.stderr.count("\n") == 1, check.stderr
    assert "not a verirepair certificate" in check.stderr


# --------------------------------------------------------------------------- (b) planted

def test_generated_network_with_planted_violation(tmp_path: Path) -> None:
    model_path, prop, grid, threshold = planted_problem(tmp_path, 41)
    assert run_cli("check", model_path, prop, "--quiet").returncode == 10
    out = tmp_path / "fixed.onnx"
    report = tmp_path / "report.json"
    proc = run_cli("repair", model_path, prop, "-o", out, "--budget", "300", "--report", report,
                   "--domain-lower", "-1", "-1", "--domain-upper", "1", "1", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run_cli("check", out, prop, "--quiet").returncode == 0
    y2 = ort_run(out, grid)
    assert np.all(y2[:, 0] - y2[:, 1] > threshold)
    # the report says where the fidelity figures were measured
    where = json.loads(report.read_text())["fidelity_domain"]
    assert where == {"lower": [-1.0, -1.0], "upper": [1.0, 1.0], "given": True,
                     "decision": "argmin", "samples": 100_000}
    assert "(argmin, 100,000 samples of the --domain box)" in proc.stdout


def test_nothing_to_repair_writes_the_original_over_a_stale_output(tmp_path: Path) -> None:
    out, cert = tmp_path / "fixed.onnx", tmp_path / "proof.npz"
    out.write_bytes(b"a model from an earlier run")
    cert.write_bytes(b"a certificate from an earlier run")
    proc = run_cli("repair", MODEL, NEAR_TURN, "-o", out, "--certificate", cert,
                   "--budget", "120", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing to repair" in proc.stdout and f"written: {out}" in proc.stdout
    assert out.read_bytes() == MODEL.read_bytes()
    check = run_cli("check", out, NEAR_TURN, "--quiet", "--certificate", cert)
    assert check.returncode == 0 and "holds no certificate" in check.stderr
    # a gzip-compressed input: -o gets the model itself, uncompressed
    packed = tmp_path / "demo.onnx.gz"
    packed.write_bytes(gzip.compress(MODEL.read_bytes()))
    proc = run_cli("repair", packed, NEAR_TURN, "-o", out, "--budget", "120", "--quiet")
    assert proc.returncode == 0 and out.read_bytes() == MODEL.read_bytes(), proc.stderr


def test_a_failed_certificate_write_publishes_nothing(tmp_path: Path, monkeypatch) -> None:
    from verirepair.errors import InputFileError
    from verirepair.repair import loop

    model_path, prop, _, _ = planted_problem(tmp_path, 5)

    def refuse(path, certs) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loop, "save_certificates", refuse)
    out = tmp_path / "fixed.onnx"
    with pytest.raises(InputFileError, match="proof.npz: cannot write the certificate"):
        loop.repair(model_path, [prop], [], out, 300.0,
                    loop.RepairOptions(domain_lower=(-1.0, -1.0), domain_upper=(1.0, 1.0)),
                    tmp_path / "proof.npz")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fixed")]


# --------------------------------------------------------------------------- (c) impossible

def test_impossible_repair_exits_30_without_output(tmp_path: Path) -> None:
    model_path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), str(model_path))
    prop = tmp_path / "everything_unsafe.vnnlib"
    prop.write_text(vnnlib([0.0, 0.0], [0.5, 0.5], 2,
                           "(assert (or (and (<= Y_0 Y_1)) (and (<= Y_1 Y_0))))"))
    out = tmp_path / "never.onnx"
    proc = run_cli("repair", model_path, prop, "-o", out, "--budget", "120", "--quiet")
    assert proc.returncode == 30, proc.stdout + proc.stderr
    assert "failed" in proc.stdout
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_missing_output_folder_is_bad_input(tmp_path: Path) -> None:
    proc = run_cli("repair", MODEL, FAR_IS_COC, "-o", tmp_path / "no" / "x.onnx")
    assert proc.returncode == 2 and proc.stderr.startswith("error:")


# --------------------------------------------------------------------------- (d) QP encoding

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind_name", ["change", "interval", "mixed"])
def test_qp_solution_makes_every_box_safe(seed: int, kind_name: str) -> None:
    rng = np.random.default_rng(seed)
    n_out, width, m = 3, 6, 25
    weight, bias = rng.standard_normal((n_out, width)), rng.standard_normal(n_out)
    hl = np.maximum(rng.standard_normal((m, width)), 0.0)
    hu = hl + np.where(rng.random((m, width)) < 0.3, 0.0, rng.random((m, width)))
    c = 0.3 * rng.standard_normal((m, n_out))
    c[:, 0] = 1.0  # raising b_0 helps every row: feasible by construction
    mid, rad = (hl + hu) / 2, (hu - hl) / 2
    a = c @ weight
    lb0 = np.einsum("mh,mh->m", mid, a) - np.einsum("mh,mh->m", rad, np.abs(a)) + c @ bias
    d = lb0 + rng.uniform(-1.0, 0.5, m)  # about a third of the rows need a change
    rows = BoxRows(mid=(hl + hu) / 2, rad=(hu - hl) / 2, c=c, base=lb0 - d, d=d,
                   leaf=np.arange(m))
    samples = SampleRows(np.zeros((0, width)), np.zeros(0, int), np.zeros(0, int))
    eps = 1e-3
    kind = {"change": np.zeros(m, bool), "interval": np.ones(m, bool),
            "mixed": rng.random(m) < 0.5}[kind_name]
    problem = build_qp(weight, bias, rows, np.ones(m, bool), samples, np.zeros(0, bool),
                       eps, 0.0, kind=kind)
    sol = solve(problem, n_out, width)
    assert sol is not None
    w2, b2 = weight + sol[0], bias + sol[1]
    h = hl[:, None, :] + (hu - hl)[:, None, :] * rng.random((m, 2000, width))
    corners = np.where(rng.random((m, 64, width)) < 0.5, hl[:, None], hu[:, None])
    for pts in (h, corners):
        value = np.einsum("mo,mso->ms", c, pts @ w2.T + b2) - d[:, None]
        assert np.all(value >= eps - 1e-6)


def test_qp_sample_rows_keep_decisions() -> None:
    rng = np.random.default_rng(5)
    n_out, width = 3, 4
    weight, bias = rng.standard_normal((n_out, width)), rng.standard_normal(n_out)
    h = np.abs(rng.standard_normal((10, width)))
    c = np.array([[1.0, -1.0, 0.0]])
    rows = BoxRows(mid=h[:1], rad=np.zeros((1, width)), c=c,
                   base=c @ (weight @ h[0] + bias) + 5.0, d=np.array([-5.0]),
                   leaf=np.zeros(1, int))
    y = h @ weight.T + bias
    win = y.argmin(1)
    lose = (win + 1) % n_out
    samples = SampleRows(h, win, lose)
    problem = build_qp(weight, bias, rows, np.ones(1, bool), samples, np.ones(10, bool),
                       1e-3, 1e-3)
    sol = solve(problem, n_out, width)
    assert sol is not None
    y2 = h @ (weight + sol[0]).T + bias + sol[1]
    n = np.arange(10)
    assert np.all(y2[n, win] <= y2[n, lose] - 1e-3 + 1e-6)


# --------------------------------------------------------------------------- save

def _gemm_model(trans_b: int) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    w0 = rng.standard_normal((2, 3)).astype(np.float32)
    w1 = rng.standard_normal((3, 2) if not trans_b else (2, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w0, "W0"),
             numpy_helper.from_array(np.zeros(3, np.float32), "B0"),
             numpy_helper.from_array(w1, "W1"),
             numpy_helper.from_array(np.ones(2, np.float32), "B1")]
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["m0"], name="MatMul0"),
             helper.make_node("Add", ["m0", "B0"], ["a0"], name="Add0"),
             helper.make_node("Relu", ["a0"], ["r0"], name="Relu0"),
             helper.make_node("Gemm", ["r0", "W1", "B1"], ["y"], name="Gemm1", transB=trans_b)]
    graph = helper.make_graph(
        nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("trans_b", [0, 1])
def test_patched_gemm_round_trip(tmp_path: Path, trans_b: int) -> None:
    from verirepair.network import load_network
    from verirepair.repair.save import patched_model

    path = tmp_path / "gemm.onnx"
    onnx.save(_gemm_model(trans_b), str(path))
    network = load_network(path)
    new_w = np.arange(6, dtype=np.float64).reshape(2, 3) / 8
    new_b = np.array([0.5, -0.25])
    out = tmp_path / "patched.onnx"
    onnx.save(patched_model(network, new_w, new_b), str(out))
    again = load_network(out)
    np.testing.assert_array_equal(again.net.layers[-1].weight, new_w)
    np.testing.assert_array_equal(again.net.layers[-1].bias, new_b)
    np.testing.assert_array_equal(again.net.layers[0].weight, network.net.layers[0].weight)


def test_unsupported_last_layer_is_a_clear_error(tmp_path: Path) -> None:
    model = tiny_model()
    last_add = next(n for n in model.graph.node if n.name == "Add2")
    last_add.input[1] = "B2x"
    model.graph.node.insert(0, helper.make_node("Identity", ["B2"], ["B2x"], name="Id"))
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    prop = tmp_path / "p.vnnlib"
    prop.write_text(vnnlib([0.0, 0.0], [0.5, 0.5], 2, "(assert (<= Y_0 -100.0))"))
    proc = run_cli("repair", path, prop, "-o", tmp_path / "x.onnx")
    assert proc.returncode == 2 and proc.stderr.startswith("error:"), proc.stderr
    assert "last layer" in proc.stderr
    assert not (tmp_path / "x.onnx").exists()


# --------------------------------------------------------------------------- localize, cross-check

def test_localized_repair_with_cross_check_records_both(tmp_path: Path) -> None:
    model_path, prop, _, _ = planted_problem(tmp_path, 21)
    out, report = tmp_path / "fixed.onnx", tmp_path / "report.json"
    proc = run_cli("repair", model_path, prop, "-o", out, "--budget", "300", "--quiet",
                   "--domain-lower", "-1", "-1", "--domain-upper", "1", "1",
                   "--localize", "causal", "--cross-check", "z3", "--report", report)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    assert data["localize"] == "causal" and data["free_set"]
    assert data["patched_neurons"] and all(0 <= j < 8 for j in data["patched_neurons"])
    assert data["properties"][0]["cross_check"] == "z3: holds"
    assert run_cli("check", out, prop, "--quiet", "--engine", "z3").returncode == 0


def test_repair_cross_check_with_unknown_engine_is_bad_input(tmp_path: Path) -> None:
    proc = run_cli("repair", MODEL, FAR_IS_COC, "-o", tmp_path / "x.onnx",
                   "--cross-check", "nosuch")
    assert proc.returncode == 2 and "nosuch" in proc.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("flags, words", [
    (["-o", "{tmp}/fixed.onnx.gz"], "written uncompressed"),
    (["-o", "{tmp}/fixed.onnx", "--report", "{model}"], "--report would overwrite the input"),
    (["-o", "{tmp}/fixed.onnx", "--certificate", "{tmp}/fixed.onnx"],
     "--certificate would overwrite -o"),
    (["-o", "{prop}"], "-o would overwrite the property")])
def test_outputs_that_would_clobber_a_file_are_refused(tmp_path: Path, flags: list[str],
                                                        words: str) -> None:
    model, prop = tmp_path / "m.onnx", tmp_path / "p.vnnlib"
    model.write_bytes(MODEL.read_bytes())
    prop.write_text(FAR_IS_COC.read_text())
    args = [f.format(tmp=tmp_path, model=model, prop=prop) for f in flags]
    proc = run_cli("repair", model, prop, *args, "--quiet")
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert model.read_bytes() == MODEL.read_bytes() and prop.read_text() == FAR_IS_COC.read_text()


def test_a_cross_check_engine_that_cannot_take_the_network_is_refused_at_once(
        tmp_path: Path) -> None:
    """z3 takes at most 200 hidden neurons: refused before the repair, not after it."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((5, 201)).astype(np.float32)
    w2 = rng.standard_normal((201, 5)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "W1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["output"])]
    graph = helper.make_graph(
        nodes, "wide", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5])],
        initializer=[numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    wide = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), wide)
    proc = run_cli("repair", wide, FAR_IS_COC, "-o", tmp_path / "x.onnx", "--cross-check",
                   "z3", "--quiet")
    assert proc.returncode == 2 and "201 hidden neurons" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("patch", ["pso", "cmaes", "milp"])
def test_every_patcher_ends_in_the_same_proof(tmp_path: Path, patch: str) -> None:
    model_path, prop, _, _ = planted_problem(tmp_path, 21)
    out, report = tmp_path / "fixed.onnx", tmp_path / "report.json"
    proc = run_cli("repair", model_path, prop, "-o", out, "--budget", "300", "--quiet",
                   "--domain-lower", "-1", "-1", "--domain-upper", "1", "1",
                   "--patch", patch, "--report", report)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    assert data["patch"] == patch
    assert run_cli("check", out, prop, "--quiet").returncode == 0
    if patch == "milp":  # the hidden-layer stage ran and its change is in the saved file
        assert data["hidden_patch"]["layer"] == 1
        assert data["hidden_patch"]["status"] in ("optimal", "feasible")


def test_fidelity_samples_end_in_the_same_proof(tmp_path: Path) -> None:
    model_path, prop, _, _ = planted_problem(tmp_path, 21)
    out, report = tmp_path / "fixed.onnx", tmp_path / "report.json"
    proc = run_cli("repair", model_path, prop, "-o", out, "--budget", "300", "--quiet",
                   "--domain-lower", "-1", "-1", "--domain-upper", "1", "1",
                   "--fidelity-samples", "500", "--report", report)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    assert data["status"] == "proven" and data["sample_rows"] >= 0
    assert run_cli("check", out, prop, "--quiet").returncode == 0
    bad = run_cli("repair", model_path, prop, "-o", tmp_path / "y.onnx",
                  "--fidelity-samples", "-1")
    assert bad.returncode == 2 and "--fidelity-samples" in bad.stderr
    assert not (tmp_path / "y.onnx").exists()
