"""Input splitting vs ReLU splitting in branch and bound, by input dimension.

Generates seeded random ReLU networks (inputs x hidden layers given, 3 outputs; weights
as in the soundness tests) and a VNN-COMP-style robustness property per network (an
L-infinity ball around a random point, radius ``scale / sqrt(inputs)`` with the scale
drawn from --scales; unsafe: another output reaches the centre's top output). Every
instance is decided by ``verify`` with ``BabOptions(split="input")`` and with
``split="relu"`` in the same process, one after the other (same machine, same moment),
torch single-threaded. Both are sound, so a holds/violated disagreement is a bug and is
counted as wrong; every violated answer carries an onnxruntime-confirmed counterexample.

    python benchmarks/split_kinds.py                      # dims 5..100, 8 seeds, 20 s
    python benchmarks/split_kinds.py --dims 12,24 --seeds 4 --timeout 10

Writes OUT/split_kinds.csv (dim, seed, radius, kind, verdict, seconds, subproblems) and
OUT/split_kinds.md (per dimension and kind: decided, sum and median seconds, the largest
count of boxes (input) or subproblems (relu) bounded; the dimension from which ReLU
splitting decides at least as many instances in no more total time). Progress on stderr.
Exit 1 if any answer disagrees.
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from verirepair.net_types import Affine, AffineReluNet
from verirepair.network import load_network
from verirepair.spec_types import Box, Halfspaces, Spec, SpecCase
from verirepair.verify.bab import BabOptions
from verirepair.verify.engine import VerifyOptions, verify

log = logging.getLogger("split_kinds")
KINDS = ("input", "relu")
DECIDED = ("holds", "violated")


def random_network(rng: np.random.Generator, n_in: int, hidden: list[int]) -> AffineReluNet:
    sizes = [n_in, *hidden, 3]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        w = (rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32)
        bias = (0.5 * rng.standard_normal(b)).astype(np.float32)
        layers.append(Affine(w.astype(np.float64), bias.astype(np.float64)))
    return AffineReluNet(tuple(layers))


def save_onnx(net: AffineReluNet, path: Path) -> None:
    nodes, inits, current = [], [], "x"
    for i, layer in enumerate(net.layers):
        inits += [numpy_helper.from_array(layer.weight.T.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(layer.bias.astype(np.float32), f"B{i}")]
        last = i == len(net.layers) - 1
        nodes += [helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"B{i}"], ["y" if last else f"a{i}"])]
        current = "y" if last else f"a{i}"
        if not last:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    graph = helper.make_graph(
        nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                        [1, net.n_inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, net.n_outputs])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def robustness_spec(rng: np.random.Generator, net: AffineReluNet, radius: float) -> Spec:
    x0 = rng.uniform(-1.0, 1.0, net.n_inputs).astype(np.float32).astype(np.float64)
    top = int(np.argmax(net.forward(x0[None])[0]))
    disjuncts = []
    for j in range(net.n_outputs):
        if j != top:
            row = np.zeros((1, net.n_outputs))
            row[0, top], row[0, j] = 1.0, -1.0
            disjuncts.append(Halfspaces(row, np.zeros(1)))
    case = SpecCase(box=Box(x0 - radius, x0 + radius), unsafe=tuple(disjuncts))
    return Spec(n_inputs=net.n_inputs, n_outputs=net.n_outputs, cases=(case,),
                source="<generated>")


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    hidden = [int(h) for h in args.hidden.split(",")]
    scales = [float(s) for s in args.scales.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for dim in [int(d) for d in args.dims.split(",")]:
            for seed in range(args.seeds):
                rng = np.random.default_rng(1000 * dim + seed)
                net = random_network(rng, dim, hidden)
                path = Path(tmp) / f"net_{dim}_{seed}.onnx"
                save_onnx(net, path)
                network = load_network(path)
                radius = float(rng.choice(scales)) / np.sqrt(dim)
                spec = robustness_spec(rng, net, radius)
                verdicts = {}
                for kind in KINDS:
                    options = VerifyOptions(timeout=args.timeout, bab=BabOptions(split=kind))
                    start = time.perf_counter()
                    result = verify(network, spec, options)
                    seconds = time.perf_counter() - start
                    verdicts[kind] = result.verdict.value
                    rows.append({"dim": dim, "seed": seed, "radius": f"{radius:.4g}",
                                 "kind": kind, "verdict": result.verdict.value,
                                 "seconds": f"{seconds:.3f}",
                                 "subproblems": result.stats.boxes})
                    print(f"dim {dim} seed {seed} {kind}: {result.verdict.value} "
                          f"{seconds:.2f}s n={result.stats.boxes}", file=sys.stderr)
                if set(verdicts.values()) == set(DECIDED):
                    print(f"WRONG: dim {dim} seed {seed}: {verdicts}", file=sys.stderr)
                    rows[-1]["verdict"] += " (DISAGREES)"
                    rows[-2]["verdict"] += " (DISAGREES)"
    return rows


def summary(rows: list[dict], args: argparse.Namespace) -> tuple[str, int]:
    lines = [f"# Input vs ReLU splitting by input dimension ({time.strftime('%Y-%m-%d')})",
             "",
             f"Random networks, hidden layers {args.hidden}, 3 outputs; robustness balls of "
             f"radius scale/sqrt(dim), scale from {{{args.scales}}}; {args.seeds} seeds per "
             f"dimension; timeout {args.timeout:g} s; one process, torch single-threaded, "
             f"both kinds on each instance back to back.", "",
             "| inputs | kind | decided | sum s | median s | max subproblems |",
             "|---|---|---|---|---|---|"]
    wrong = sum("DISAGREES" in r["verdict"] for r in rows) // 2
    better_from = None
    for dim in sorted({r["dim"] for r in rows}):
        stats = {}
        for kind in KINDS:
            mine = [r for r in rows if r["dim"] == dim and r["kind"] == kind]
            secs = [float(r["seconds"]) for r in mine]
            decided = sum(r["verdict"] in DECIDED for r in mine)
            stats[kind] = (decided, sum(secs))
            lines.append(f"| {dim} | {kind} | {decided}/{len(mine)} | {sum(secs):.1f} | "
                         f"{statistics.median(secs):.2f} | "
                         f"{max(int(r['subproblems']) for r in mine)} |")
        relu_wins = (stats["relu"][0] >= stats["input"][0]
                     and stats["relu"][1] <= stats["input"][1])
        if relu_wins and better_from is None:
            better_from = dim
        elif not relu_wins:
            better_from = None
    lines += ["", f"Disagreements (wrong answers): {wrong}.",
              f"ReLU splitting decides at least as many in no more total time from "
              f"{better_from if better_from is not None else '(no tested dimension)'} "
              f"inputs on (and at every larger tested dimension)."]
    return "\n".join(lines) + "\n", wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default="5,8,12,16,24,48,100")
    parser.add_argument("--hidden", default="32,32")
    parser.add_argument("--scales", default="0.5,1.0,1.5")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    rows = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "split_kinds.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text, wrong = summary(rows, args)
    (args.out / "split_kinds.md").write_text(text)
    print(text)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
