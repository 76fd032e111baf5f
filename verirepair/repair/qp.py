"""Last-layer repair QP: encoding (plain sparse data) separate from solving.

Variables z = [the free entries of [dW | db] (row-major over the (n_out, H+1) mask),
t (one per distinct unsafe row c and free column i: t >= |(c dW)_i|),
s (penalised box shortfall, optional), r (penalised decision slack, optional)].

Box row m: a leaf box with last-hidden post-ReLU bounds [hl, hu] (mid, rad) and, for the
chosen unsafe row c.y <= d, a sound lower bound ``base`` of c.y(x) - d over the box for
the ORIGINAL network (CROWN). Only the last layer changes; two sound lower bounds of
c.y'(x) - d on the box (computed in ``verirepair/lastlayer.py``) are linear in (dW, db)
once |.| gets auxiliary variables:
  "change" bound:   base + (c dW).mid - |c dW|.rad + c.db      (min of a sum >= sum of
                    mins; the interval looseness touches only the CHANGE: best for
                    small patches)
  "interval" bound: a.mid - |a|.rad + c.(b + db) - d  with a = c (W + dW)   (best when
                    the patch rewrites the row, e.g. a box deep in the unsafe set)
Each row uses one kind in a given QP (``kind``: True = interval); the caller picks per
row the larger at the current solution, which keeps that solution feasible, so the
objective never grows. |.| is replaced by t[kind, c, i] >= |.|_i, shared by every box
with the same kind and row c: the bound only weakens as t grows, so the optimum puts
t = |.| and sharing loses nothing. The box is safe if its bound is >= eps.

Sample row (h, win, lose): keep the decision ``win`` over ``lose`` (argmin convention,
the caller swaps for argmax): (W+dW)_win.h + (b+db)_win <= (W+dW)_lose.h + (b+db)_lose - margin.

Objective: ||dW||^2 + ||db||^2 (+ penalty * sum s, + penalty * sum r). Solved by Clarabel.

Relation to AutoRIC (TOSEM 2024): only its incremental selection of constraints is
taken (add the most violated rows, re-solve; here 400 rows per step instead of one).
AutoRIC's objective is a quadratic fitted by least squares to sampled changes of the
property measure, with Taylor-linearised classification constraints, a cap on flips and
trust-region constraints. Ours is the minimal-change QP: the property is a set of hard
certified constraints (linear in (dW, db) exactly, so no trust region is needed) and
decisions are kept by linear rows, penalised only when they conflict.
"""

from __future__ import annotations

from dataclasses import dataclass

import logging
import time

import numpy as np
import scipy.sparse as sp

from verirepair.lastlayer import BoxRows, best_kind, box_slack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleRows:
    """Decision-preserving rows: output ``win`` stays below ``lose`` by ``margin`` at h."""

    h: np.ndarray  # (S, H)
    win: np.ndarray  # (S,) int
    lose: np.ndarray  # (S,) int

    @property
    def size(self) -> int:
        return int(self.win.shape[0])


@dataclass(frozen=True)
class Penalties:
    """Linear costs per unit of broken margin; None keeps those rows hard."""

    box: float | None = None
    sample: float | None = None


@dataclass(frozen=True)
class QPProblem:
    """minimise 1/2 z'Pz + q'z  s.t.  G z <= h (all sparse CSC / dense vectors)."""

    P: sp.csc_matrix
    q: np.ndarray
    G: sp.csc_matrix
    h: np.ndarray
    free: np.ndarray  # (n_out, H+1) bool: which entries of [W | b] are variables
    n_box_slack: int
    n_sample_slack: int

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.G.shape[0]), int(self.G.shape[1])

    @property
    def n_weights(self) -> int:
        return int(self.free.sum())


def all_free(weight: np.ndarray) -> np.ndarray:
    """(n_out, H+1) mask: every weight and bias of the last layer may change."""
    return np.ones((weight.shape[0], weight.shape[1] + 1), dtype=bool)


def sample_slack(weight: np.ndarray, bias: np.ndarray, rows: SampleRows,
                 margin: float) -> np.ndarray:
    """y_lose - y_win - margin per sample row (>= 0 when kept), float64."""
    y = rows.h @ weight.T + bias
    n = np.arange(rows.size)
    return y[n, rows.lose] - y[n, rows.win] - margin


@dataclass(frozen=True)
class _Layout:
    """Column numbering of the QP variables."""

    free: np.ndarray  # (n_out, H) bool: free weights
    index: np.ndarray  # (n_out, H+1) int: column of dW[o, i] (i < H) or db[o] (i = H)
    n_w: int  # number of free weights and biases
    n_out: int
    free_cols: np.ndarray  # (F,) hidden columns with at least one free entry
    n_groups: int
    bias_free: np.ndarray  # (n_out,) bool

    @property
    def t0(self) -> int:
        return self.n_w

    @property
    def n_base(self) -> int:
        return self.t0 + self.n_groups * self.free_cols.size

    def t_col(self, group: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return self.t0 + group * self.free_cols.size + pos


def _layout(free: np.ndarray, n_groups: int) -> _Layout:
    index = np.full(free.shape, -1)
    index[free] = np.arange(int(free.sum()))
    weights = free[:, :-1]
    cols = np.nonzero(weights.any(axis=0))[0]
    return _Layout(weights, index, int(free.sum()), free.shape[0], cols, n_groups,
                   free[:, -1].copy())


def _coo(rows: list, cols: list, vals: list, shape: tuple[int, int]) -> sp.coo_matrix:
    return sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=shape)


def _cdw_terms(coef: np.ndarray, lay: _Layout, row_ids: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse entries of sum_{o,i free} coef[k, o, i] dW[o, i] for each row k."""
    kk, oo, ii = np.nonzero(np.broadcast_to(lay.free, coef.shape))
    return row_ids[kk], lay.index[oo, ii], coef[kk, oo, ii]


def _box_block(weight: np.ndarray, bias: np.ndarray, rows: BoxRows, sel: np.ndarray,
               kind: np.ndarray, groups: np.ndarray, eps: float, lay: _Layout, n_cols: int
               ) -> tuple[sp.coo_matrix, np.ndarray]:
    """-(c dW).mid + t[g].rad - c.db <= rhs, one row per selected box row, where rhs is
    base - eps (change kind) or (cW).mid - sum_fixed rad |cW| + c.b - d - eps (interval
    kind; hidden columns without free entries keep their constant |cW|)."""
    c, mid, rad = rows.c[sel], rows.mid[sel], rows.rad[sel]
    k = c.shape[0]
    rid = np.arange(k)
    r1, c1, v1 = _cdw_terms(-c[:, :, None] * mid[:, None, :], lay, rid)
    pos = np.arange(lay.free_cols.size)
    r_t = np.repeat(rid, pos.size)
    c_t = lay.t_col(np.repeat(groups, pos.size), np.tile(pos, k))
    v_t = rad[:, lay.free_cols].ravel()
    kb, ob = np.nonzero(np.broadcast_to(lay.bias_free, c.shape))
    g = _coo([r1, kb, r_t], [c1, lay.index[ob, -1], c_t], [v1, -c[kb, ob], v_t],
             (k, n_cols))
    cw = c @ weight
    fixed = np.ones(weight.shape[1], dtype=bool)
    fixed[lay.free_cols] = False
    interval = (np.einsum("kh,kh->k", mid, cw) - np.einsum("kh,kh->k", rad[:, fixed],
                                                           np.abs(cw[:, fixed]))
                + c @ bias - rows.d[sel])
    return g, np.where(kind, interval, rows.base[sel]) - eps


def _aux_block(weight: np.ndarray, keys: np.ndarray, lay: _Layout, n_cols: int
               ) -> tuple[sp.coo_matrix, np.ndarray]:
    """+-(c dW)_i - t[g, i] <= -+ k (cW)_i for every group g = (k, c), free column i."""
    kind, unique_c = keys[:, 0], keys[:, 1:]
    n_g, n_f = unique_c.shape[0], lay.free_cols.size
    gi = np.arange(n_g * n_f)
    coef = np.zeros((n_g * n_f,) + lay.free.shape)
    g_idx, f_idx = np.divmod(gi, n_f)
    coef[gi, :, lay.free_cols[f_idx]] = unique_c[g_idx]
    offset_w = ((unique_c @ weight)[:, lay.free_cols] * kind[:, None]).ravel()
    rows, cols, vals = [], [], []
    for sign, offset in ((1.0, 0), (-1.0, n_g * n_f)):
        r, cc, v = _cdw_terms(sign * coef, lay, offset + gi)
        rows += [r, offset + gi]
        cols += [cc, lay.t_col(g_idx, f_idx)]
        vals += [v, -np.ones(gi.size)]
    return (_coo(rows, cols, vals, (2 * gi.size, n_cols)),
            np.concatenate([-offset_w, offset_w]))


def _sample_block(weight: np.ndarray, bias: np.ndarray, rows: SampleRows, sel: np.ndarray,
                  margin: float, lay: _Layout, n_cols: int) -> tuple[sp.coo_matrix, np.ndarray]:
    """(dW_win - dW_lose).h + db_win - db_lose <= -margin - (y_win - y_lose)."""
    h, win, lose = rows.h[sel], rows.win[sel], rows.lose[sel]
    s = h.shape[0]
    r = np.arange(s)
    out, cols, vals = [], [], []
    for sign, which in ((1.0, win), (-1.0, lose)):
        has = lay.bias_free[which]
        out.append(r[has])
        cols.append(lay.index[which[has], -1])
        vals.append(np.full(int(has.sum()), sign))
    for sign, which in ((1.0, win), (-1.0, lose)):
        mask = lay.free[which]  # (s, H)
        kk, ii = np.nonzero(mask)
        out.append(kk)
        cols.append(lay.index[which[kk], ii])
        vals.append(sign * h[kk, ii])
    y = h @ weight.T + bias
    return _coo(out, cols, vals, (s, n_cols)), -margin - (y[r, win] - y[r, lose])


def build_qp(weight: np.ndarray, bias: np.ndarray, boxes: BoxRows, box_sel: np.ndarray,
             samples: SampleRows, sample_sel: np.ndarray, eps: float | np.ndarray,
             margin: float,
             penalties: Penalties = Penalties(), free: np.ndarray | None = None,
             kind: np.ndarray | None = None) -> QPProblem:
    """The QP over the selected rows (see module docstring). Pure data, no solving.

    ``free`` (n_out, H+1) bool marks the entries of [W | b] that may change (default
    all); ``kind`` (M,) bool picks the interval bound for a box row (default: the change
    bound); ``eps`` is one margin or one per box row (M,). With penalties, the box rows
    get a shortfall s >= 0 and/or the decision rows a slack r >= 0, each costing
    ``penalty`` per unit.
    """
    free = all_free(weight) if free is None else free
    kind = np.zeros(boxes.size, dtype=bool) if kind is None else kind
    eps = np.broadcast_to(np.asarray(eps, dtype=np.float64), (boxes.size,))[box_sel]
    keys = np.hstack([kind[box_sel, None].astype(float), boxes.c[box_sel]])
    keys, groups = (np.unique(keys, axis=0, return_inverse=True) if box_sel.any()
                    else (np.zeros((0, weight.shape[0] + 1)), np.zeros(0, int)))
    lay = _layout(free, keys.shape[0])
    n_box = int(box_sel.sum()) if penalties.box is not None else 0
    n_smp = int(sample_sel.sum()) if penalties.sample is not None else 0
    n_cols = lay.n_base + n_box + n_smp
    gb, hb = _box_block(weight, bias, boxes, box_sel, kind[box_sel], groups.reshape(-1), eps,
                        lay, n_cols)
    ga, ha = _aux_block(weight, keys, lay, n_cols)
    gs, hs = _sample_block(weight, bias, samples, sample_sel, margin, lay, n_cols)
    slack_b = sp.coo_matrix((-np.ones(n_box), (np.arange(n_box), lay.n_base + np.arange(n_box))),
                            shape=(gb.shape[0], n_cols))
    slack_s = sp.coo_matrix((-np.ones(n_smp), (np.arange(n_smp),
                                               lay.n_base + n_box + np.arange(n_smp))),
                            shape=(gs.shape[0], n_cols))
    nonneg = sp.coo_matrix((-np.ones(n_box + n_smp),
                            (np.arange(n_box + n_smp), lay.n_base + np.arange(n_box + n_smp))),
                           shape=(n_box + n_smp, n_cols))
    g = sp.vstack([gb + slack_b, ga, gs + slack_s, nonneg]).tocsc()
    q = np.concatenate([np.zeros(lay.n_base), np.full(n_box, penalties.box or 0.0),
                        np.full(n_smp, penalties.sample or 0.0)])
    diag = np.concatenate([np.full(lay.n_w, 2.0), np.zeros(n_cols - lay.t0)])
    return QPProblem(P=sp.diags(diag).tocsc(), q=q, G=g,
                     h=np.concatenate([hb, ha, hs, np.zeros(n_box + n_smp)]), free=free,
                     n_box_slack=n_box, n_sample_slack=n_smp)


ACCEPTED = ("Solved", "AlmostSolved")  # the solution is re-checked exactly afterwards
# A penalised QP is always feasible; Clarabel often stalls on it (InsufficientProgress,
# MaxIterations) at a usable point. Every row of any solution is re-checked exactly
# afterwards, so a point that is not optimal costs fidelity at worst, never soundness
# (N5,8: the box-penalised stage stalled in every split round -> 96.4 % agreement;
# accepted -> 99.95 %). Hard QPs must converge: there a stall may mean infeasible.
ACCEPTED_PENALISED = ACCEPTED + ("InsufficientProgress", "MaxIterations")
MAX_ITER = 200  # Clarabel's default
MAX_ITER_PENALISED = 50  # N2,1: box-penalised stage 21 s -> 6 s, same patch quality


def _row_scaled(g: sp.csc_matrix, h: np.ndarray) -> tuple[sp.csc_matrix, np.ndarray]:
    """Each row of G z <= h divided by its largest |coefficient| (same feasible set;
    avoids Clarabel's numerical failures on rows of very different sizes)."""
    norm = np.asarray(abs(g).max(axis=1).todense()).ravel()
    norm = np.where(norm > 0, norm, 1.0)
    return (sp.diags(1.0 / norm) @ g).tocsc(), h / norm


def _clarabel(problem: QPProblem) -> np.ndarray | None:
    import clarabel

    settings = clarabel.DefaultSettings()
    settings.verbose = False
    penalised = problem.n_box_slack + problem.n_sample_slack > 0
    settings.max_iter = MAX_ITER_PENALISED if penalised else MAX_ITER
    g, h = _row_scaled(problem.G, problem.h)
    solver = clarabel.DefaultSolver(sp.triu(problem.P).tocsc(), problem.q, g, h,
                                    [clarabel.NonnegativeConeT(g.shape[0])], settings)
    result = solver.solve()
    if str(result.status) not in (ACCEPTED_PENALISED if penalised else ACCEPTED):
        log.debug("clarabel: %s after %d iterations", result.status, result.iterations)
        return None
    return np.asarray(result.x)


QP_SOLVERS = {"clarabel": _clarabel}


def solve(problem: QPProblem, n_out: int, width: int, solver: str = "clarabel"
          ) -> tuple[np.ndarray, np.ndarray] | None:
    """Solve; returns (dW, db) or None when infeasible / failed. Callers re-check every
    constraint of the solution themselves (solvers work to a tolerance)."""
    z = QP_SOLVERS[solver](problem)
    if z is None or not np.all(np.isfinite(z)):
        return None
    full = np.zeros((n_out, width + 1))
    full[problem.free] = z[:problem.n_weights]
    return full[:, :-1], full[:, -1]


@dataclass(frozen=True)
class QPOutcome:
    dW: np.ndarray | None
    db: np.ndarray | None
    iterations: int
    sizes: list[tuple[int, int]]  # (constraints, variables) per solve
    box_rows_used: int
    sample_rows_used: int
    short: np.ndarray  # (M,) bool: box rows left below eps (penalised shortfall)


def _most_violated(value: np.ndarray, threshold: float, selected: np.ndarray,
                   limit: int) -> np.ndarray:
    """Mask of at most ``limit`` unselected rows with value < threshold, lowest first."""
    cand = np.nonzero((value < threshold) & ~selected)[0]
    if cand.size > limit:
        cand = cand[np.argpartition(value[cand], limit)[:limit]]
    mask = np.zeros(value.shape[0], dtype=bool)
    mask[cand] = True
    return mask


def solve_incremental(weight: np.ndarray, bias: np.ndarray, boxes: BoxRows,
                      samples: SampleRows, eps: float | np.ndarray, margin: float,
                      max_iterations: int = 40, add_rows: int = 400,
                      penalties: Penalties = Penalties(), free: np.ndarray | None = None,
                      deadline: float | None = None) -> QPOutcome:
    """Incremental constraint selection in the manner of AutoRIC (Alg. 1): solve on a
    few of the strictest rows, add the ``add_rows`` most violated box rows and decision
    rows, repeat until the solution breaks no row outside the selection (to a 10% slack
    on eps) or the iteration limit. Rows inside the selection may fall short of eps only
    where a penalty allows it; those are reported in ``short``.

    ``eps`` is the margin each box row must reach: one number or one per row (M,).
    Returns dW, db = None when the QP is infeasible, the limit is reached or
    ``deadline`` (time.monotonic()) passes before the next solve.
    """
    eps = np.broadcast_to(np.asarray(eps, dtype=np.float64), (boxes.size,))
    none = np.zeros(boxes.size, dtype=bool)
    dw, db = np.zeros_like(weight), np.zeros_like(bias)
    box_sel = _most_violated(box_slack(weight, bias, dw, db, boxes), eps, none, add_rows)
    sample_sel = np.zeros(samples.size, dtype=bool)
    sizes: list[tuple[int, int]] = []
    for it in range(1, max_iterations + 1):
        if deadline is not None and it > 1 and time.monotonic() > deadline:
            log.debug("QP: deadline passed after %d solves", it - 1)
            return QPOutcome(None, None, it - 1, sizes, int(box_sel.sum()),
                             int(sample_sel.sum()), none)
        # The first QP uses the interval bound for every row (measured on ACAS Xu: starting
        # from the bound that is best at zero change can trap the descent in a patch ~100x
        # larger, e.g. N2,9 phi2+phi8: ||d|| 6.49 vs 0.032); later ones the best at dw.
        kind = (np.ones(boxes.size, dtype=bool) if it == 1
                else best_kind(weight, bias, dw, db, boxes))
        problem = build_qp(weight, bias, boxes, box_sel, samples, sample_sel, eps, margin,
                           penalties, free, kind)
        sizes.append(problem.shape)
        sol = solve(problem, *weight.shape)
        if sol is None:
            return QPOutcome(None, None, it, sizes, int(box_sel.sum()), int(sample_sel.sum()),
                             none)
        dw, db = sol
        box_value = box_slack(weight, bias, dw, db, boxes)
        new_box = _most_violated(box_value, 0.9 * eps, box_sel, add_rows)
        new_smp = _most_violated(sample_slack(weight + dw, bias + db, samples, margin),
                                 -0.1 * margin, sample_sel, add_rows)
        if not new_box.any() and not new_smp.any():
            return QPOutcome(dw, db, it, sizes, int(box_sel.sum()), int(sample_sel.sum()),
                             box_value < 0.9 * eps)
        box_sel |= new_box
        sample_sel |= new_smp
    return QPOutcome(None, None, max_iterations, sizes, int(box_sel.sum()),
                     int(sample_sel.sum()), none)
