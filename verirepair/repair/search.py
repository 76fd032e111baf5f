"""Derivative-free last-layer patchers: particle swarm (CARE) and CMA-ES (SHARPEN).

A patcher only searches; the proof comes from the same construction as the QP (see
``qp.py``): a candidate (dW, db) is accepted only if every box row reaches its margin,
``box_slack(W, b, dW, db, boxes) >= eps`` (per-row eps). The search runs over the free
entries of [dW | db] (the ``free`` mask, last column = bias) and minimises, for a whole
population at once (one batched computation per generation),

    fitness = (1 - alpha) * UB + alpha * (1 - accuracy) + lam * ||delta||^2 / (n * rms^2)

  UB        = mean_m max(0, target_m - slack_m) / mean(eps) + fraction of box rows with
              slack_m < eps_m,  target_m = (1 + target_extra) * eps_m (aiming a little
              above eps keeps the accepted candidate off the edge);
  accuracy  = fraction of decision rows kept (sample_slack >= 0);
  ||delta|| = norm of the change, relative to the rms of the n free entries of [W | b].

This has the shape of CARE's fitness (1 - alpha) UB + alpha (1 - accuracy) (CARE Eq. 10),
with UB measured on the certified box bounds instead of a violation rate on samples, plus
a small change term. Not the same scale: CARE's UB is a rate in [0, 1], ours adds the
shortfall in units of the box margin eps (1e-5..2e-3 of the output scale), which dwarfs
the accuracy term until a candidate is feasible. So the search is in effect lexicographic
(reach every box margin first, then keep decisions), and alpha is not comparable with
the values in CARE's Table 6.
The best *feasible* candidate (all box rows >= eps) of smallest fitness is kept; with
none, dW = db = None and ``short`` marks the rows below 0.9 eps at the best candidate
found, so the caller can split those boxes.

Requires: BoxRows / SampleRows as built for the QP. Sound: the accepted candidate is
checked with the exact ``box_slack`` (the caller still re-checks float32 rounding with
``sound_box_margin``). Complete: no (a stochastic search may miss a feasible patch).
References: CARE (Sun et al., ICSE 2022) for PSO; SHARPEN (2026) for CMA-ES, using the
``cmaes`` package (Nomura & Shibata).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import logging
import time

import numpy as np

from verirepair.lastlayer import BoxRows, box_slack

from .qp import QPOutcome, SampleRows, sample_slack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOptions:
    """Settings of both searches. The PSO constants are CARE's published ones (Sec. 4.1:
    omega = 0.8, c1 = c2 = 0.41, 20 particles, at most 100 iterations, stop after 10
    iterations without a better location -- here only once a candidate is feasible).
    alpha = 0.3 is the value CARE's Table 6 gives for ACAS Xu N2,9 (NN_7), but our UB has
    another scale (module docstring), so it only weighs decisions among near-feasible
    candidates. CMA-ES (SHARPEN publishes no settings) gets the ``cmaes`` package's
    population 4 + floor(3 ln n) and a step size of our own (SIGMA_REL), and 1000
    generations: about 10x PSO's 2000 evaluations at n = 255. Both get the same seconds."""

    alpha: float = 0.3  # weight of the broken-decision fraction (CARE's 1 - accuracy)
    lam: float = 0.1  # weight of the relative squared change
    target_extra: float = 0.2  # the shortfall term aims at (1 + target_extra) * eps
    sigma_rel: float | None = None  # initial step / rms of the free [W | b] entries
    #   (None: SIGMA_REL of the method, tuned on ACAS Xu N2,1 phi2)
    iterations: int | None = None  # generations (None: ITERATIONS of the method)
    patience: int = 10  # stop once feasible and no better fitness for this many generations
    seed: int = 0
    particles: int = 20  # PSO swarm size
    inertia: float = 0.8  # PSO omega
    c1: float = 0.41  # PSO cognitive parameter
    c2: float = 0.41  # PSO social parameter
    population: int | None = None  # CMA-ES lambda (None: 4 + floor(3 ln n))


# Initial step relative to the rms of the free entries; chosen on ACAS Xu N2,1 phi2 (one
# of the benchmark pairs, so the ablation is not blind to it).
SIGMA_REL = {"pso": 0.2, "cmaes": 0.1}
ITERATIONS = {"pso": 100, "cmaes": 1000}  # CARE's limit; CMA-ES needs ~200 on N2,9 phi8


@dataclass(frozen=True)
class _Problem:
    """Everything the fitness needs, precomputed once."""

    weight: np.ndarray  # (n_out, H)
    bias: np.ndarray  # (n_out,)
    boxes: BoxRows
    samples: SampleRows
    eps: np.ndarray  # (M,)
    margin: float
    free: np.ndarray  # (n_out, H+1) bool
    cw: np.ndarray  # (M, H) c @ W
    cb: np.ndarray  # (M,) c @ b - d
    pick: np.ndarray  # (S, n_out) one-hot(lose) - one-hot(win)
    y0_slack: np.ndarray  # (S,) sample_slack of the original layer
    rms: float  # rms of the free [W | b] entries (scale of the change term)
    sigma: float  # initial step of the search
    options: SearchOptions

    @property
    def n_free(self) -> int:
        return int(self.free.sum())


@dataclass(frozen=True)
class _Scores:
    """Per-candidate evaluation of a population (P candidates)."""

    fitness: np.ndarray  # (P,)
    feasible: np.ndarray  # (P,) bool: every box row >= eps


def _problem(weight: np.ndarray, bias: np.ndarray, boxes: BoxRows, samples: SampleRows,
             eps: np.ndarray, margin: float, free: np.ndarray,
             options: SearchOptions, method: str = "pso") -> _Problem:
    eps = np.broadcast_to(np.asarray(eps, dtype=np.float64), (boxes.size,)).copy()
    full = np.hstack([weight, bias[:, None]])[free]
    rms = max(float(np.sqrt(np.mean(full ** 2))) if full.size else 1.0, 1e-12)
    sigma_rel = SIGMA_REL[method] if options.sigma_rel is None else options.sigma_rel
    return _Problem(weight, bias, boxes, samples, eps, margin, free,
                    boxes.c @ weight, boxes.c @ bias - boxes.d,
                    _pick(samples, weight.shape[0]), sample_slack(weight, bias, samples, margin),
                    rms, sigma_rel * rms, options)


def _pick(samples: SampleRows, n_out: int) -> np.ndarray:
    """(S, n_out) one-hot(lose) - one-hot(win): y . pick = y_lose - y_win."""
    eye = np.eye(n_out)
    return eye[samples.lose] - eye[samples.win]


def _expand(z: np.ndarray, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, n_free) search points -> dW (P, n_out, H), db (P, n_out)."""
    full = np.zeros((z.shape[0],) + free.shape)
    full[:, free] = z
    return full[:, :, :-1], full[:, :, -1]


def batch_box_slack(prob: _Problem, dw: np.ndarray, db: np.ndarray) -> np.ndarray:
    """``box_slack`` for a population: dw (P, n_out, H), db (P, n_out) -> (P, M)."""
    rows = prob.boxes
    a = np.einsum("mo,poh->pmh", rows.c, dw)
    cdb = db @ rows.c.T  # (P, M)
    change = (rows.base + np.einsum("mh,pmh->pm", rows.mid, a)
              - np.einsum("mh,pmh->pm", rows.rad, np.abs(a)) + cdb)
    a += prob.cw
    interval = (np.einsum("mh,pmh->pm", rows.mid, a)
                - np.einsum("mh,pmh->pm", rows.rad, np.abs(a)) + prob.cb + cdb)
    return np.maximum(change, interval)


def batch_sample_slack(prob: _Problem, dw: np.ndarray, db: np.ndarray) -> np.ndarray:
    """``sample_slack`` for a population -> (P, S)."""
    smp = prob.samples
    p, n_out, width = dw.shape
    dy = (smp.h @ dw.transpose(2, 0, 1).reshape(width, p * n_out)).reshape(-1, p, n_out)
    dy += db[None]  # (S, P, n_out): change of every output, one GEMM
    return np.einsum("spo,so->ps", dy, prob.pick) + prob.y0_slack


def evaluate(prob: _Problem, z: np.ndarray) -> _Scores:
    """Fitness (module docstring) of every row of z (P, n_free), in one batch."""
    opt = prob.options
    dw, db = _expand(z, prob.free)
    slack = batch_box_slack(prob, dw, db)
    target = (1.0 + opt.target_extra) * prob.eps
    scale = max(float(prob.eps.mean()), 1e-12) if prob.eps.size else 1.0
    below = slack < prob.eps
    ub = (np.maximum(0.0, target - slack).mean(axis=1) / scale + below.mean(axis=1)
          if prob.boxes.size else np.zeros(z.shape[0]))
    broken = ((batch_sample_slack(prob, dw, db) < 0).mean(axis=1) if prob.samples.size
              else np.zeros(z.shape[0]))
    change = (z ** 2).sum(axis=1) / (max(z.shape[1], 1) * prob.rms ** 2)
    fitness = (1.0 - opt.alpha) * ub + opt.alpha * broken + opt.lam * change
    return _Scores(fitness, ~below.any(axis=1))


@dataclass
class _Best:
    """Best feasible and best overall candidate seen so far (mutable search record)."""

    feasible_z: np.ndarray | None = None
    feasible_f: float = np.inf
    any_z: np.ndarray | None = None
    any_f: float = np.inf
    stale: int = 0  # generations since the last improvement

    def update(self, z: np.ndarray, scores: _Scores) -> None:
        improved = False
        k = int(np.argmin(scores.fitness))
        if scores.fitness[k] < self.any_f:
            self.any_z, self.any_f, improved = z[k].copy(), float(scores.fitness[k]), True
        if scores.feasible.any():
            f = np.where(scores.feasible, scores.fitness, np.inf)
            k = int(np.argmin(f))
            if f[k] < self.feasible_f:
                self.feasible_z, self.feasible_f, improved = z[k].copy(), float(f[k]), True
        self.stale = 0 if improved else self.stale + 1

    def done(self, patience: int) -> bool:
        return self.feasible_z is not None and self.stale >= patience


class _Stepper(Protocol):
    """One optimiser: ``ask`` a population (P, n), ``tell`` it its fitness."""

    def ask(self) -> np.ndarray: ...

    def tell(self, z: np.ndarray, fitness: np.ndarray) -> None: ...

    def stopped(self) -> bool: ...


class _Swarm:
    """PSO as in CARE eq. (8)-(9): v <- omega v + R(0,c1)(p_i - x) + R(0,c2)(p_g - x);
    x <- x + v, with R(0, c) uniform on [0, c] drawn per coordinate. CARE starts every
    particle at the original weights with zero velocity, where the update never moves;
    here particle 0 starts at zero change and the others at N(0, sigma^2) around it."""

    def __init__(self, n: int, sigma: float, options: SearchOptions) -> None:
        self.rng = np.random.default_rng(options.seed)
        self.opt = options
        self.x = sigma * self.rng.standard_normal((options.particles, n))
        self.x[0] = 0.0
        self.v = np.zeros_like(self.x)
        self.p = self.x.copy()
        self.pf = np.full(options.particles, np.inf)
        self.first = True

    def ask(self) -> np.ndarray:
        if not self.first:
            g = self.p[int(np.argmin(self.pf))]
            r1 = self.rng.uniform(0.0, self.opt.c1, self.x.shape)
            r2 = self.rng.uniform(0.0, self.opt.c2, self.x.shape)
            self.v = self.opt.inertia * self.v + r1 * (self.p - self.x) + r2 * (g - self.x)
            self.x = self.x + self.v
        self.first = False
        return self.x

    def tell(self, z: np.ndarray, fitness: np.ndarray) -> None:
        better = fitness < self.pf
        self.p[better], self.pf[better] = z[better], fitness[better]

    def stopped(self) -> bool:
        return False


class _Cma:
    """CMA-ES from the ``cmaes`` package, started at zero change with step sigma. The
    package needs at least two dimensions: a single free entry gets an ignored twin."""

    def __init__(self, n: int, sigma: float, options: SearchOptions) -> None:
        try:
            from cmaes import CMA
        except ImportError as err:  # a pinned dependency, missing from this install
            raise ImportError("--patch cmaes needs the 'cmaes' package: "
                              "pip install 'cmaes>=0.13'") from err
        self.n = n
        self.es = CMA(mean=np.zeros(max(n, 2)), sigma=sigma, seed=options.seed,
                      population_size=options.population)
        self.raw = np.zeros((0, max(n, 2)))

    def ask(self) -> np.ndarray:
        self.raw = np.stack([self.es.ask() for _ in range(self.es.population_size)])
        return self.raw[:, :self.n]

    def tell(self, z: np.ndarray, fitness: np.ndarray) -> None:
        self.es.tell(list(zip(self.raw, fitness.tolist())))

    def stopped(self) -> bool:
        """The package's own termination tests (step size collapsed, flat fitness)."""
        return bool(self.es.should_stop())


STEPPERS: dict[str, Callable[[int, float, SearchOptions], _Stepper]] = {
    "pso": _Swarm, "cmaes": _Cma}


def _outcome(prob: _Problem, best: _Best, generations: int) -> QPOutcome:
    """QPOutcome of the best candidate, re-checked with the exact (unbatched) box_slack."""
    sizes = [(prob.boxes.size, prob.n_free)]
    z = best.feasible_z if best.feasible_z is not None else best.any_z
    if z is None:
        z = np.zeros(prob.n_free)
    dw, db = (a[0] for a in _expand(z[None], prob.free))
    slack = box_slack(prob.weight, prob.bias, dw, db, prob.boxes)
    short = slack < 0.9 * prob.eps
    ok = best.feasible_z is not None and bool(np.all(slack >= prob.eps))
    return QPOutcome(dw if ok else None, db if ok else None, generations, sizes,
                     prob.boxes.size, prob.samples.size, short)


def _search(method: str, weight: np.ndarray, bias: np.ndarray, boxes: BoxRows,
            samples: SampleRows, eps: np.ndarray, margin: float, free: np.ndarray,
            options: SearchOptions, deadline_s: float) -> QPOutcome:
    """Run one optimiser for at most ``options.iterations`` generations or ``deadline_s``
    seconds; see the module docstring for the fitness and acceptance."""
    start = time.monotonic()
    prob = _problem(weight, bias, boxes, samples, eps, margin, free, options, method)
    best = _Best()
    best.update(np.zeros((1, prob.n_free)), evaluate(prob, np.zeros((1, prob.n_free))))
    if prob.n_free == 0 or best.feasible_z is not None:  # nothing to change / to search
        return _outcome(prob, best, 0)
    stepper = STEPPERS[method](prob.n_free, prob.sigma, options)
    limit = ITERATIONS[method] if options.iterations is None else options.iterations
    generation = 0
    while generation < limit and time.monotonic() - start < deadline_s:
        generation += 1
        z = stepper.ask()
        scores = evaluate(prob, z)
        stepper.tell(z, scores.fitness)
        best.update(z, scores)
        if best.done(options.patience) or stepper.stopped():
            break
    log.info("%s: %d generations in %.2f s, feasible=%s, fitness %.4g", method, generation,
             time.monotonic() - start, best.feasible_z is not None,
             min(best.feasible_f, best.any_f))
    return _outcome(prob, best, generation)


def pso_patch(weight: np.ndarray, bias: np.ndarray, boxes: BoxRows, samples: SampleRows,
              eps: np.ndarray, margin: float, free: np.ndarray, options: SearchOptions,
              deadline_s: float) -> QPOutcome:
    """CARE's particle swarm over the free entries of [dW | db].

    Requires: ``free`` (n_out, H+1) bool; ``eps`` one margin per box row; ``deadline_s``
    the seconds this call may take. Returns a QPOutcome whose (dW, db) satisfies every
    box row (>= eps), or None with ``short`` marking the rows below 0.9 eps.
    Sound: yes (exact re-check). Complete: no. Reference: CARE, ICSE 2022, Sec. 3.3.
    """
    return _search("pso", weight, bias, boxes, samples, eps, margin, free, options,
                   deadline_s)


def cmaes_patch(weight: np.ndarray, bias: np.ndarray, boxes: BoxRows, samples: SampleRows,
                eps: np.ndarray, margin: float, free: np.ndarray, options: SearchOptions,
                deadline_s: float) -> QPOutcome:
    """SHARPEN's CMA-ES over the free entries of [dW | db] (same contract as
    :func:`pso_patch`). Reference: SHARPEN (2026); the ``cmaes`` package's default
    population, our initial step (SIGMA_REL)."""
    return _search("cmaes", weight, bias, boxes, samples, eps, margin, free, options,
                   deadline_s)


PATCHERS = {"pso": pso_patch, "cmaes": cmaes_patch}
