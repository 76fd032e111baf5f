"""From partitions and samples to QP rows (BoxRows, SampleRows), vectorised."""

from __future__ import annotations

import numpy as np

from verirepair.net_types import AffineReluNet
from verirepair.lastlayer import BoxRows, case_rows
from verirepair.repair.partition import Partition
from verirepair.repair.qp import SampleRows
from verirepair.spec_types import Spec


def box_rows(parts: list[tuple[Spec, Partition]]) -> BoxRows:
    """One row per (leaf, disjunct): the unsafe row with the largest CROWN lower bound.

    Leaf indices count through ``parts`` in order.
    """
    mids, rads, cs, bases, ds, leaves = [], [], [], [], [], []
    offset = 0
    for spec, part in parts:
        for ci, case in enumerate(spec.cases):
            idx = np.nonzero(part.case == ci)[0]
            if idx.size == 0:
                continue
            rows = case_rows(case.unsafe)
            lb = part.row_lb[idx, :rows.count]
            for k in range(len(case.unsafe)):
                cols = np.nonzero(rows.disjunct == k)[0]
                best = cols[lb[:, cols].argmax(axis=1)]
                mids.append((part.hl[idx] + part.hu[idx]) / 2)
                rads.append((part.hu[idx] - part.hl[idx]) / 2)
                cs.append(rows.c[best])
                bases.append(lb[np.arange(idx.size), best])
                ds.append(rows.d[best])
                leaves.append(offset + idx)
        offset += part.size
    return BoxRows(mid=np.concatenate(mids), rad=np.concatenate(rads), c=np.concatenate(cs),
                   base=np.concatenate(bases), d=np.concatenate(ds),
                   leaf=np.concatenate(leaves))


def hidden_and_output(net: AffineReluNet, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Last hidden activation (N, H) and output (N, n_out), float64."""
    h = np.asarray(x, dtype=np.float64)
    for layer in net.layers[:-1]:
        h = np.maximum(h @ layer.weight.T + layer.bias, 0.0)
    last = net.layers[-1]
    return h, h @ last.weight.T + last.bias


def sample_boxes(rng: np.random.Generator, boxes: list[tuple[np.ndarray, np.ndarray]],
                 counts: list[int]) -> np.ndarray:
    """Uniform samples from each box (lower, upper), concatenated."""
    parts = [lo + (hi - lo) * rng.random((n, lo.shape[0])) for (lo, hi), n in
             zip(boxes, counts)]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def near_boundary(net: AffineReluNet, domain: tuple[np.ndarray, np.ndarray], count: int,
                  pool: int, argmax: bool, rng: np.random.Generator) -> np.ndarray:
    """The ``count`` points of a uniform pool of ``pool`` domain samples whose decision
    gap (best vs second-best output) is smallest: a decision flips where the output
    change exceeds the gap, so these are the decisions most at risk."""
    x = sample_boxes(rng, [domain], [pool])
    y = net.forward(x)
    order = np.sort(-y if argmax else y, axis=1)
    gap = order[:, 1] - order[:, 0]
    count = min(count, pool)
    return x[np.argpartition(gap, count - 1)[:count]] if count else x[:0]


def counterexample_mask(x: np.ndarray, y: np.ndarray, specs: list[Spec]) -> np.ndarray:
    """(N,) True where x lies in some case box and y in that case's unsafe set."""
    bad = np.zeros(x.shape[0], dtype=bool)
    for spec in specs:
        for case in spec.cases:
            inside = np.all((x >= case.box.lower) & (x <= case.box.upper), axis=1)
            for disjunct in case.unsafe:
                bad |= inside & np.all(y @ disjunct.matrix.T <= disjunct.rhs, axis=1)
    return bad


def decision_rows(h: np.ndarray, y: np.ndarray, exclude: np.ndarray, margin: float,
                  argmax: bool) -> SampleRows:
    """Rows keeping each sample's decision (argmin, or argmax) with ``margin``.

    Only samples whose original decision margin exceeds ``margin`` and that are not in
    ``exclude`` (counterexamples) get rows; one row per competing output.
    """
    score = -y if argmax else y
    order = np.sort(score, axis=1)
    gap = order[:, 1] - order[:, 0] if y.shape[1] > 1 else np.zeros(y.shape[0])
    keep = (gap > margin) & ~exclude
    best = score.argmin(axis=1)[keep]
    hk = h[keep]
    n_out = y.shape[1]
    others = np.array([[j for j in range(n_out) if j != i] for i in range(n_out)],
                      dtype=np.int64).reshape(n_out, n_out - 1)[best]
    win = np.repeat(best, n_out - 1)
    lose = others.ravel()
    if argmax:
        win, lose = lose, win
    return SampleRows(h=np.repeat(hk, n_out - 1, axis=0), win=win, lose=lose)
