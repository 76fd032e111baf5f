"""Last-layer repair QP: encoding (plain sparse data) separate from solving.

Variables z = [vec(dW) (n_out*H, row-major), db (n_out), t (aux, |a| per box row)].

Box row m (leaf box with last-hidden bounds [hl, hu], unsafe row c.y <= d): with
a = c (W + dW), mid = (hl+hu)/2, rad = (hu-hl)/2, the patched network is safe on the box
if   a.mid - t.rad + c.(b + db) - d >= eps,   t >= a, t >= -a   (t only where rad > 0).
Since t >= |a| and rad >= 0, that implies  min_{h in [hl,hu]} c.((W+dW) h + b+db) - d >= eps.

Sample row (h, win, lose): keep the decision ``win`` over ``lose`` (argmin convention,
the caller swaps for argmax): (W+dW)_win.h + (b+db)_win <= (W+dW)_lose.h + (b+db)_lose - margin.

Objective: ||dW||^2 + ||db||^2. Solved by Clarabel through qpsolvers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class BoxRows:
    """One constraint per (leaf box, disjunct): the chosen unsafe row c.y <= d."""

    mid: np.ndarray  # (M, H)
    rad: np.ndarray  # (M, H)
    c: np.ndarray  # (M, n_out)
    d: np.ndarray  # (M,)
    leaf: np.ndarray  # (M,) index of the leaf box (for splitting)

    @property
    def size(self) -> int:
        return int(self.d.shape[0])


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
class QPProblem:
    """minimise 1/2 z'Pz + q'z  s.t.  G z <= h (all sparse CSC / dense vectors)."""

    P: sp.csc_matrix
    q: np.ndarray
    G: sp.csc_matrix
    h: np.ndarray
    n_base: int  # variables dW, db

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.G.shape[0]), int(self.G.shape[1])


def box_slack(weight: np.ndarray, bias: np.ndarray, rows: BoxRows) -> np.ndarray:
    """min over the box of c.(weight h + bias) - d per row (M,), float64."""
    a = np.einsum("mo,oh->mh", rows.c, weight)
    return (np.einsum("mh,mh->m", rows.mid, a) - np.einsum("mh,mh->m", rows.rad, np.abs(a))
            + rows.c @ bias - rows.d)


def sound_box_margin(weight: np.ndarray, bias: np.ndarray, rows: BoxRows) -> np.ndarray:
    """box_slack widened down by a bound on its float64 rounding error. Sound: yes."""
    mag = (np.einsum("mh,mh->m", np.abs(rows.mid) + rows.rad,
                     np.einsum("mo,oh->mh", np.abs(rows.c), np.abs(weight)))
           + np.abs(rows.c) @ np.abs(bias) + np.abs(rows.d))
    return box_slack(weight, bias, rows) - 1e-12 * mag - 1e-300


def sample_slack(weight: np.ndarray, bias: np.ndarray, rows: SampleRows,
                 margin: float) -> np.ndarray:
    """y_lose - y_win - margin per sample row (>= 0 when kept), float64."""
    y = rows.h @ weight.T + bias
    n = np.arange(rows.size)
    return y[n, rows.lose] - y[n, rows.win] - margin


def _box_block(weight: np.ndarray, bias: np.ndarray, rows: BoxRows, sel: np.ndarray,
               eps: float, n_base: int) -> tuple[sp.coo_matrix, np.ndarray, int]:
    """Rows of G, h for the selected box rows; returns (G block, h block, number of t)."""
    n_out, width = weight.shape
    c, mid, rad, d = rows.c[sel], rows.mid[sel], rows.rad[sel], rows.d[sel]
    k = c.shape[0]
    cw = c @ weight  # (k, H)
    nondeg = rad > 0
    n_t = int(nondeg.sum())
    tid = np.full(nondeg.shape, -1)
    tid[nondeg] = n_base + np.arange(n_t)
    # main rows: -mid.(c dW) - c.db + rad.t <= mid.(cW) + c.b - d - eps
    r_dw = np.broadcast_to(np.arange(k)[:, None, None], (k, n_out, width))
    v_dw = -c[:, :, None] * mid[:, None, :]
    col_dw = np.broadcast_to(np.arange(n_out * width).reshape(n_out, width), (k, n_out, width))
    kk, ii = np.nonzero(nondeg)
    rows_i = [r_dw.ravel(), np.repeat(np.arange(k), n_out), kk]
    cols_i = [col_dw.ravel(), np.tile(n_out * width + np.arange(n_out), k), tid[kk, ii]]
    vals_i = [v_dw.ravel(), -c.ravel(), rad[kk, ii]]
    h_main = np.einsum("kh,kh->k", mid, cw) + c @ bias - d - eps
    # aux rows: +-(c dW)_i - t_i <= -+(cW)_i  for each nondegenerate (k, i)
    aux = np.arange(n_t)
    for sign, offset in ((1.0, k), (-1.0, k + n_t)):
        rows_i += [np.repeat(offset + aux, n_out), offset + aux]
        cols_i += [(np.arange(n_out)[None, :] * width + ii[:, None]).ravel(), tid[kk, ii]]
        vals_i += [sign * c[kk].ravel(), -np.ones(n_t)]
    h_aux = np.concatenate([-cw[kk, ii], cw[kk, ii]])
    g = sp.coo_matrix((np.concatenate(vals_i), (np.concatenate(rows_i),
                                                np.concatenate(cols_i))),
                      shape=(k + 2 * n_t, n_base + n_t))
    return g, np.concatenate([h_main, h_aux]), n_t


def _sample_block(weight: np.ndarray, bias: np.ndarray, rows: SampleRows, sel: np.ndarray,
                  margin: float, n_base: int) -> tuple[sp.coo_matrix, np.ndarray]:
    """(dW_win - dW_lose).h + db_win - db_lose <= -margin - (y_win - y_lose)."""
    n_out, width = weight.shape
    h, win, lose = rows.h[sel], rows.win[sel], rows.lose[sel]
    s = h.shape[0]
    r = np.arange(s)
    rr = np.repeat(r, width)
    cols = np.concatenate([(win[:, None] * width + np.arange(width)).ravel(),
                           (lose[:, None] * width + np.arange(width)).ravel(),
                           n_out * width + win, n_out * width + lose])
    vals = np.concatenate([h.ravel(), -h.ravel(), np.ones(s), -np.ones(s)])
    g = sp.coo_matrix((vals, (np.concatenate([rr, rr, r, r]), cols)), shape=(s, n_base))
    y = h @ weight.T + bias
    return g, -margin - (y[r, win] - y[r, lose])


def build_qp(weight: np.ndarray, bias: np.ndarray, boxes: BoxRows, box_sel: np.ndarray,
             samples: SampleRows, sample_sel: np.ndarray, eps: float, margin: float,
             soft: float | None = None) -> QPProblem:
    """The QP over the selected rows (see module docstring). Pure data, no solving.

    With ``soft`` = lambda, each decision row gets a slack s >= 0 costing lambda * s
    (box rows stay hard: they carry the proof).
    """
    n_out, width = weight.shape
    n_base = n_out * width + n_out
    gb, hb, n_t = _box_block(weight, bias, boxes, box_sel, eps, n_base)
    gs, hs = _sample_block(weight, bias, samples, sample_sel, margin, n_base)
    n_s = gs.shape[0] if soft is not None else 0
    blocks = [[gb, sp.coo_matrix((gb.shape[0], n_s))],
              [sp.hstack([gs, sp.coo_matrix((gs.shape[0], n_t))]), -sp.eye(gs.shape[0], n_s)]]
    h = [hb, hs]
    if n_s:
        blocks.append([sp.coo_matrix((n_s, n_base + n_t)), -sp.eye(n_s)])
        h.append(np.zeros(n_s))
    g = sp.vstack([sp.hstack(b) for b in blocks]).tocsc()
    diag = np.concatenate([np.full(n_base, 2.0), np.zeros(n_t + n_s)])
    q = np.concatenate([np.zeros(n_base + n_t), np.full(n_s, soft or 0.0)])
    return QPProblem(P=sp.diags(diag).tocsc(), q=q, G=g, h=np.concatenate(h), n_base=n_base)


def solve(problem: QPProblem, n_out: int, width: int
          ) -> tuple[np.ndarray, np.ndarray] | None:
    """Solve with Clarabel; returns (dW, db) or None when infeasible / failed."""
    import warnings

    from qpsolvers import solve_qp

    with warnings.catch_warnings():  # an infeasible QP is an expected outcome here
        warnings.simplefilter("ignore", UserWarning)
        z = solve_qp(problem.P, problem.q, problem.G, problem.h, solver="clarabel",
                     verbose=False)
    if z is None or not np.all(np.isfinite(z)):
        return None
    return z[:n_out * width].reshape(n_out, width), z[n_out * width:problem.n_base]


@dataclass(frozen=True)
class QPOutcome:
    dW: np.ndarray | None
    db: np.ndarray | None
    iterations: int
    sizes: list[tuple[int, int]]  # (constraints, variables) per solve
    box_rows_used: int
    sample_rows_used: int


def solve_incremental(weight: np.ndarray, bias: np.ndarray, boxes: BoxRows,
                      samples: SampleRows, eps: float, margin: float,
                      max_iterations: int = 30, seed_rows: int = 20,
                      soft: float | None = None) -> QPOutcome:
    """AutoRIC-style: solve on the violated (+ strictest) rows, add every violated row,
    repeat until the solution satisfies all rows (to a 10% slack on eps) or the limit.

    Returns dW, db = None when the QP is infeasible or the limit is reached.
    """
    lb0 = box_slack(weight, bias, boxes)
    box_sel = lb0 < eps
    box_sel[np.argsort(lb0)[:seed_rows]] = True
    sample_sel = sample_slack(weight, bias, samples, margin) < 0
    sizes: list[tuple[int, int]] = []
    for it in range(1, max_iterations + 1):
        problem = build_qp(weight, bias, boxes, box_sel, samples, sample_sel, eps, margin,
                           soft)
        sizes.append(problem.shape)
        sol = solve(problem, *weight.shape)
        if sol is None:
            return QPOutcome(None, None, it, sizes, int(box_sel.sum()), int(sample_sel.sum()))
        dw, db = sol
        new_box = (box_slack(weight + dw, bias + db, boxes) < 0.9 * eps) & ~box_sel
        new_smp = (sample_slack(weight + dw, bias + db, samples, margin)
                   < -0.1 * max(margin, eps)) & ~sample_sel
        if not new_box.any() and not new_smp.any():
            return QPOutcome(dw, db, it, sizes, int(box_sel.sum()), int(sample_sel.sum()))
        box_sel |= new_box
        sample_sel |= new_smp
    return QPOutcome(None, None, max_iterations, sizes, int(box_sel.sum()),
                     int(sample_sel.sum()))
