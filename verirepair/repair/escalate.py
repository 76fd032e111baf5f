"""``--patch milp``: escalate to the last hidden layer before the last-layer proof.

A last-layer change is global: it shifts the outputs wherever the patched neurons are
active. Changing the INCOMING weights of a few last-hidden neurons instead can switch a
neuron on or off only where it is needed, so the activation pattern of that layer may
change and the patch is a MILP (verirepair/repair/milp.py, HiGHS or Gurobi). It is solved
on points only:
  - counterexamples of the target properties (found by sampling / the verifier), each
    required to leave the unsafe set with a margin through the row of its unsafe
    polytope that is nearest to being met (hard);
  - benign domain samples with the smallest decision gap, each required to keep its
    decision (soft: a cost per unit of broken margin).
Points are not a proof. The patched network then goes through the usual last-layer box
QP (which carries the proof over the whole region) and the saved file is verified, as
for every other patcher.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from verirepair.net_types import AffineReluNet
from verirepair.network import Network
from verirepair.repair.milp import MilpPatch, MilpPatchOptions, PointRequirements, solve_patch
from verirepair.repair.rows import near_boundary
from verirepair.spec_types import Spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EscalateOptions:
    neurons: int = 8  # last-hidden neurons whose incoming weights may change
    max_cex: int = 12  # counterexample points in the MILP
    benign: int = 300  # near-boundary benign points (soft decision rows)
    benign_pool: int = 100_000  # uniform domain samples they are chosen from
    margin_rel: float = 2e-3  # margin by which counterexamples must leave the unsafe set
    decision_margin_rel: float = 1e-5
    soft_cost: float = 100.0
    time_limit: float = 60.0
    argmax: bool = False
    seed: int = 0


def counterexample_rows(net: AffineReluNet, cex: np.ndarray, spec: Spec, margin: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, c, d): for every counterexample and every unsafe disjunct it is in, the row
    of that disjunct nearest to being met, as ``c.y >= d`` with d = rhs + margin."""
    y = net.forward(cex)
    points, cs, ds = [], [], []
    for case in spec.cases:
        inside = np.all((cex >= case.box.lower) & (cex <= case.box.upper), axis=1)
        for disjunct in case.unsafe:
            value = y @ disjunct.matrix.T - disjunct.rhs  # (P, rows) <= 0 everywhere: unsafe
            unsafe = inside & np.all(value <= 0, axis=1)
            idx = np.nonzero(unsafe)[0]
            best = value[idx].argmax(axis=1)
            points.append(idx)
            cs.append(disjunct.matrix[best])
            ds.append(disjunct.rhs[best] + margin)
    if not points:
        return np.zeros(0, int), np.zeros((0, y.shape[1])), np.zeros(0)
    return np.concatenate(points), np.concatenate(cs), np.concatenate(ds)


def decision_point_rows(net: AffineReluNet, x: np.ndarray, margin: float, argmax: bool
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, c, d): keep each point's decision over every other output by ``margin``."""
    y = net.forward(x)
    n_out = y.shape[1]
    best = (y.argmax(axis=1) if argmax else y.argmin(axis=1))
    points, cs = [], []
    eye = np.eye(n_out)
    for p, k in enumerate(best):
        for j in range(n_out):
            if j != k:
                points.append(p)
                cs.append(eye[k] - eye[j] if argmax else eye[j] - eye[k])
    return (np.asarray(points, int), np.asarray(cs).reshape(-1, n_out),
            np.full(len(points), margin))


def _group(x: np.ndarray, rows: tuple[np.ndarray, np.ndarray, np.ndarray], benign: bool
           ) -> PointRequirements:
    """Requirements on one set of points: benign ones are soft and keep their phases."""
    point, c, d = rows
    return PointRequirements(x=x, point=point, c=c, d=d, soft=np.full(point.size, benign),
                             keep=np.full(x.shape[0], benign))


def _concat(parts: list[PointRequirements]) -> PointRequirements:
    """One set of requirements: the points stacked, row point indices shifted to match."""
    offsets = np.cumsum([0] + [r.x.shape[0] for r in parts[:-1]])
    return PointRequirements(
        x=np.concatenate([r.x for r in parts]),
        point=np.concatenate([r.point + off for r, off in zip(parts, offsets)]),
        c=np.concatenate([r.c for r in parts]), d=np.concatenate([r.d for r in parts]),
        soft=np.concatenate([r.soft for r in parts]),
        keep=np.concatenate([r.keep for r in parts]))


def requirements(net: AffineReluNet, cex_by_spec: list[tuple[Spec, np.ndarray]],
                 benign: np.ndarray, scale: float, options: EscalateOptions
                 ) -> PointRequirements:
    """Hard rows for the counterexamples, soft decision rows for the benign points."""
    parts = [_group(cex, counterexample_rows(net, cex, spec, options.margin_rel * scale),
                    benign=False) for spec, cex in cex_by_spec]
    parts.append(_group(benign, decision_point_rows(net, benign,
                                                    options.decision_margin_rel * scale,
                                                    options.argmax), benign=True))
    return _concat(parts)


def hidden_patch(network: Network, targets: list[Spec], order: list[int],
                 domain: tuple[np.ndarray, np.ndarray], scale: float,
                 options: EscalateOptions) -> tuple[MilpPatch | None, tuple[int, ...]]:
    """Solve the MILP for the top ``options.neurons`` of ``order`` (last-hidden neurons);
    returns (patch or None, the neurons)."""
    from verirepair.localize.points import find_points

    rng = np.random.default_rng(options.seed)
    neurons = tuple(order[:options.neurons])
    cex_by_spec = []
    for spec in targets:
        points = find_points(network, spec, 4000, options.seed, options.time_limit / 2)
        cex = points.cex
        if cex.shape[0] > options.max_cex:
            cex = cex[rng.choice(cex.shape[0], options.max_cex, replace=False)]
        if cex.shape[0]:
            cex_by_spec.append((spec, cex))
    if not cex_by_spec or not neurons:
        return None, neurons
    benign = near_boundary(network.net, domain, options.benign, options.benign_pool,
                           options.argmax, rng)
    req = requirements(network.net, cex_by_spec, benign, scale, options)
    t0 = time.monotonic()
    patch = solve_patch(network.net, np.asarray(neurons), req,
                        MilpPatchOptions(soft_cost=options.soft_cost,
                                         time_limit=options.time_limit))
    log.info("hidden-layer MILP on %d points, neurons %s: %s in %.1f s", req.x.shape[0],
             list(neurons), "solved" if patch else "no patch", time.monotonic() - t0)
    return patch, neurons
