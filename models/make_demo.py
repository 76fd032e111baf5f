"""Build the bundled demo network ``models/demo_advisory.onnx`` deterministically.

Usage::

    python models/make_demo.py [--out models/demo_advisory.onnx]

The network is a small ACAS-Xu-like "advisory" MLP: 5 inputs in [-1, 1]^5
(normalised distance, angle, heading, own speed, intruder speed), three hidden
layers of 16 ReLU units and 5 output scores; the chosen advisory is the ARGMIN
score (0 = clear-of-conflict, 1 = weak left, 2 = weak right, 3 = strong left,
4 = strong right).

Labels come from a simple synthetic rule (see :func:`advisory_rule`) with one
deliberately planted bug: in the corner ``distance >= 0.6, angle >= 0.75,
heading >= 0.75`` the training data says "weak right" although the intruder is
far, so the trained network violates ``properties/demo_far_is_coc.vnnlib`` on a
small part of that property's box.

Training runs in float64 on a fixed data set: full-batch Adam with a cosine
schedule, cross-entropy on the negated scores with label smoothing 0.05 (keeps
the scores in a moderate range, |y| < ~5), fixed seeds, deterministic
algorithms, one thread. The trained parameters are then rounded
to the dyadic grid 2^-12 (exact in float32), so tiny platform-dependent
floating-point differences during training almost never change the output
bytes. The ONNX graph is written with ``onnx.helper`` in the style of the
VNN-COMP ACAS Xu networks (``input`` [1,1,1,5] -> Flatten -> MatMul/Add/Relu
... -> ``output`` [1,5]), checked with ``onnx.checker`` and compared against
torch on random inputs with onnxruntime, then written atomically.

Measured (torch 2.13 CPU, onnxruntime 1.32, 2 CPU cores; 10^5 uniform samples
per box, numpy seed 0, evaluated with onnxruntime):

* generation (train + export + checks) ~2.7 s, ~6 s wall for the whole script
  including the sampling summary; training accuracy 0.9914;
  max |onnxruntime - torch| on 256 random inputs 3.9e-06;
* demo_far_is_coc (X_0 in [0.6, 1], others in [-1, 1]): 2.74 % of the samples
  violate it (COC not minimal; the net picks "weak right" there). The violators
  lie in/near the planted corner (X_1, X_2 >~ 0.5), so the property is VIOLATED;
* demo_near_turn (X_0 in [-1, -0.8], X_1 in [0.4, 0.8], X_2..X_4 in
  [-0.25, 0.25]): no sample violates it (all pick "strong right"); minimum
  sampled margin ``Y_0 - min_{j>0} Y_j`` = 5.269. A plain input-bisection
  interval check of ``Y_0 - Y_4 > 0`` (56,703 boxes, float64) proves it HOLDS.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

LOG = logging.getLogger("make_demo")

N_INPUTS = 5
HIDDEN = (16, 16, 16)
N_OUTPUTS = 5
DATA_SEED = 0
TORCH_SEED = 0
N_SAMPLES = 6_000
N_PLANTED = 300
STEPS = 500
LABEL_SMOOTHING = 0.05
LEARNING_RATE = 1e-2
ROUND_QUANTUM = 2.0**-12

#: Corner where the training labels are deliberately wrong (lower bounds of x0, x1, x2).
PLANTED_CORNER = (0.6, 0.75, 0.75)
PLANTED_LABEL = 2  # weak right instead of COC

#: Input boxes of the two bundled properties (must match properties/demo_*.vnnlib).
FAR_BOX = ((0.6, 1.0), (-1.0, 1.0), (-1.0, 1.0), (-1.0, 1.0), (-1.0, 1.0))
NEAR_BOX = ((-1.0, -0.8), (0.4, 0.8), (-0.25, 0.25), (-0.25, 0.25), (-0.25, 0.25))

DEFAULT_OUT = Path(__file__).resolve().parent / "demo_advisory.onnx"


def advisory_rule(x: np.ndarray) -> np.ndarray:
    """Ground-truth advisory (0..4) for inputs ``x`` of shape (N, 5), without the planted bug.

    A faster closing speed moves both thresholds outwards: the intruder is "far"
    (clear of conflict) when ``distance > 0.1 + 0.2 * closing`` and "close" (strong
    turn) when ``distance < -0.5 + 0.2 * closing``; in between a weak turn is
    advised. Turn right (away) when the angle is >= 0, otherwise turn left.
    """
    distance, angle = x[:, 0], x[:, 1]
    closing = 0.5 * (x[:, 3] + x[:, 4])
    far = distance > 0.1 + 0.2 * closing
    close = distance < -0.5 + 0.2 * closing
    right = angle >= 0.0
    weak = np.where(right, 2, 1)
    strong = np.where(right, 4, 3)
    return np.where(far, 0, np.where(close, strong, weak)).astype(np.int64)


def in_planted_corner(x: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``x`` that lie in the mislabelled corner."""
    lo = np.asarray(PLANTED_CORNER)
    return np.all(x[:, :3] >= lo, axis=1)


def make_dataset() -> tuple[np.ndarray, np.ndarray]:
    """Fixed training set: uniform samples plus extra points in the planted corner."""
    rng = np.random.default_rng(DATA_SEED)
    x = rng.uniform(-1.0, 1.0, size=(N_SAMPLES, N_INPUTS))
    corner = rng.uniform(-1.0, 1.0, size=(N_PLANTED, N_INPUTS))
    lo = np.asarray(PLANTED_CORNER)
    corner[:, :3] = lo + (1.0 - lo) * rng.uniform(0.0, 1.0, size=(N_PLANTED, 3))
    x = np.concatenate([x, corner])
    y = advisory_rule(x)
    y[in_planted_corner(x)] = PLANTED_LABEL
    return x, y


def build_mlp() -> torch.nn.Sequential:
    """The float64 MLP 5 -> 16 -> 16 -> 16 -> 5 with ReLU between layers."""
    sizes = (N_INPUTS, *HIDDEN, N_OUTPUTS)
    layers: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1], dtype=torch.float64))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def linear_layers(model: torch.nn.Sequential) -> list[torch.nn.Linear]:
    """The affine layers of ``model`` in order."""
    return [m for m in model if isinstance(m, torch.nn.Linear)]


def train() -> tuple[torch.nn.Sequential, float]:
    """Train deterministically; return the model (rounded weights) and its training accuracy."""
    torch.manual_seed(TORCH_SEED)
    x_np, y_np = make_dataset()
    x = torch.from_numpy(x_np)
    y = torch.from_numpy(y_np)
    model = build_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    for step in range(STEPS):
        opt.zero_grad()
        loss = loss_fn(-model(x), y)  # the advisory is the argmin score
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == STEPS - 1:
            LOG.info("step %d loss %.4f", step, float(loss.detach()))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.round(p / ROUND_QUANTUM) * ROUND_QUANTUM)
        acc = float((model(x).argmin(dim=1) == y).double().mean())
    return model, acc


def to_onnx(model: torch.nn.Sequential) -> onnx.ModelProto:
    """ACAS-Xu-style graph: input [1,1,1,5] -> Flatten -> (MatMul, Add, Relu)* -> output [1,5]."""
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], name="Flatten_0", axis=1)]
    inits: list[TensorProto] = []
    current = "flat"
    layers = linear_layers(model)
    for i, layer in enumerate(layers):
        w = layer.weight.detach().numpy().T.astype(np.float32)  # [in, out]
        b = layer.bias.detach().numpy().astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == len(layers) - 1
        nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [f"mm{i}"], name=f"MatMul_{i}"))
        add_out = "output" if last else f"add{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"B{i}"], [add_out], name=f"Add_{i}"))
        current = add_out
        if not last:
            nodes.append(helper.make_node("Relu", [add_out], [f"relu{i}"], name=f"Relu_{i}"))
            current = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "demo_advisory",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 1, N_INPUTS])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, N_OUTPUTS])],
        initializer=inits,
    )
    proto = helper.make_model(
        graph, producer_name="verirepair.make_demo", opset_imports=[helper.make_opsetid("", 13)]
    )
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return proto


def run_onnx(data: bytes, x: np.ndarray) -> np.ndarray:
    """Evaluate the serialised model on rows of ``x`` (N, 5) one sample at a time (batch is 1)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    xs = x.astype(np.float32).reshape(-1, 1, 1, 1, N_INPUTS)
    return np.concatenate([sess.run(["output"], {"input": row})[0] for row in xs])


def compare_with_torch(model: torch.nn.Sequential, data: bytes, n: int = 256) -> float:
    """Max |onnxruntime - torch| on ``n`` random inputs; raises if it is >= 1e-5."""
    x = np.random.default_rng(1).uniform(-1.0, 1.0, size=(n, N_INPUTS))
    with torch.no_grad():
        ref = model(torch.from_numpy(x.astype(np.float32).astype(np.float64))).numpy()
    diff = float(np.max(np.abs(run_onnx(data, x) - ref)))
    if not diff < 1e-5:
        raise RuntimeError(f"onnxruntime and torch disagree: max abs diff {diff:.3g}")
    return diff


def sample_box(box: tuple[tuple[float, float], ...], n: int, seed: int = 0) -> np.ndarray:
    """``n`` uniform samples from an axis-aligned box."""
    lo, hi = np.asarray(box, dtype=np.float64).T
    return lo + (hi - lo) * np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, len(lo)))


def coc_margin(y: np.ndarray) -> np.ndarray:
    """``min_{j>0} Y_j - Y_0``: positive iff COC is strictly the minimal score."""
    return y[:, 1:].min(axis=1) - y[:, 0]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """Train, export, check and write the demo network; print a short summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output ONNX path")
    parser.add_argument("--samples", type=int, default=100_000,
                        help="uniform samples per property box for the summary (0 to skip)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    start = time.perf_counter()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model, acc = train()
    data = to_onnx(model).SerializeToString()
    diff = compare_with_torch(model, data)
    write_atomic(args.out, data)
    elapsed = time.perf_counter() - start

    print(f"wrote {args.out} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]})")
    print(f"train accuracy {acc:.4f}; max |ort - torch| {diff:.2e}; time {elapsed:.1f} s")
    if args.samples > 0:
        y_far = run_onnx(data, sample_box(FAR_BOX, args.samples))
        y_near = run_onnx(data, sample_box(NEAR_BOX, args.samples))
        far_bad = float(np.mean(coc_margin(y_far) <= 0.0))  # unsafe: some Y_j <= Y_0
        near_margin = -coc_margin(y_near)  # holds iff some Y_j < Y_0, i.e. this is > 0
        print(f"demo_far_is_coc: violated by {far_bad:.2%} of {args.samples} samples")
        print(f"demo_near_turn: {int(np.sum(near_margin <= 0.0))} violating samples, "
              f"min margin Y_0 - min_j Y_j = {near_margin.min():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
