"""Linear programs for the leaves of ReLU-splitting branch and bound.

A subproblem in which every ReLU is fixed (split, or stable under the subproblem's own
hidden bounds) is linear: z_k = x @ A_k + a_k for every hidden layer and y = x @ A + a. Whether some
input of the box that keeps the split constraints (sign * z >= 0) satisfies a disjunct of
the unsafe set is then one LP: minimise t subject to ``c_r . y - d_r <= t`` for the
disjunct's rows r. Encodings here are plain data (:class:`Lp`); :func:`solve_lp` hands
one to HiGHS. The caller never trusts an LP answer as such: a proof is rebuilt from the
LP's multipliers by the sound bound (bounds.Splits), a point is confirmed in onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verirepair.lp import quiet_highs


@dataclass(frozen=True)
class LinearPiece:
    """The network restricted to one activation pattern."""

    pre: list[tuple[np.ndarray, np.ndarray]]  # per hidden layer: (n_in, w_k), (w_k,)
    out: tuple[np.ndarray, np.ndarray]  # (n_in, n_out), (n_out,)


def linear_piece(layers: list[tuple[np.ndarray, np.ndarray]], active: list[np.ndarray]
                 ) -> LinearPiece:
    """Affine maps of every pre-activation and of the output when hidden layer k's ReLUs
    are the identity where ``active[k]`` and zero elsewhere. float64."""
    n_in = layers[0][0].shape[1]
    mat, off = np.eye(n_in), np.zeros(n_in)
    pre = []
    for k, (w, b) in enumerate(layers[:-1]):
        z_mat, z_off = mat @ w.T, off @ w.T + b
        pre.append((z_mat, z_off))
        keep = active[k].astype(np.float64)
        mat, off = z_mat * keep, z_off * keep
    w, b = layers[-1]
    return LinearPiece(pre=pre, out=(mat @ w.T, off @ w.T + b))


@dataclass(frozen=True)
class SplitRow:
    layer: int
    neuron: int
    sign: int  # +1: z >= 0 required, -1: z <= 0 required


@dataclass(frozen=True)
class Lp:
    """minimise cost . v subject to a_ub @ v <= b_ub and col_lower <= v <= col_upper,
    v = (x, t). Rows: first ``n_objective_rows`` rows of the objective, then one row per
    entry of ``splits``."""

    cost: np.ndarray
    a_ub: np.ndarray
    b_ub: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    n_objective_rows: int
    splits: list[SplitRow]


def _split_rows(piece: LinearPiece, splits: list[SplitRow]) -> tuple[np.ndarray, np.ndarray]:
    """-sign * z_j(x) <= 0 as rows over x: (len(splits), n_in), (len(splits),)."""
    n_in = piece.out[0].shape[0]
    a = np.zeros((len(splits), n_in))
    b = np.zeros(len(splits))
    for i, s in enumerate(splits):
        z_mat, z_off = piece.pre[s.layer]
        a[i] = -s.sign * z_mat[:, s.neuron]
        b[i] = s.sign * z_off[s.neuron]
    return a, b


def min_max_lp(piece: LinearPiece, c: np.ndarray, d: np.ndarray, splits: list[SplitRow],
               lower: np.ndarray, upper: np.ndarray) -> Lp:
    """min over the subproblem of max_r (c_r . y - d_r), rows c (R, n_out), d (R,):
    variables (x, t); rows c_r . y(x) - t <= d_r, then the split constraints."""
    y_mat, y_off = piece.out
    obj_a = c @ y_mat.T  # (R, n_in)
    obj_b = d - c @ y_off
    sa, sb = _split_rows(piece, splits)
    a = np.block([[obj_a, -np.ones((len(d), 1))], [sa, np.zeros((len(splits), 1))]])
    n_in = lower.shape[0]
    cost = np.zeros(n_in + 1)
    cost[-1] = 1.0
    return Lp(cost=cost, a_ub=a, b_ub=np.concatenate([obj_b, sb]),
              col_lower=np.append(lower, -np.inf), col_upper=np.append(upper, np.inf),
              n_objective_rows=len(d), splits=splits)


def feasibility_lp(piece: LinearPiece, splits: list[SplitRow], lower: np.ndarray,
                   upper: np.ndarray) -> Lp:
    """max s subject to sign_j * z_j(x) >= s for every split and s <= 1, as a
    minimisation of -s: the subproblem is empty iff the optimum s is negative."""
    sa, sb = _split_rows(piece, splits)
    a = np.hstack([sa, np.ones((len(splits), 1))])
    n_in = lower.shape[0]
    cost = np.zeros(n_in + 1)
    cost[-1] = -1.0
    return Lp(cost=cost, a_ub=a, b_ub=sb, col_lower=np.append(lower, -np.inf),
              col_upper=np.append(upper, 1.0), n_objective_rows=0, splits=splits)


@dataclass(frozen=True)
class LpSolution:
    status: str  # "optimal" | "infeasible" | "failed: ..."
    value: float = float("nan")
    x: np.ndarray | None = None  # all variables
    row_duals: np.ndarray | None = None


def solve_lp(lp: Lp, time_limit: float) -> LpSolution:
    """Solve with HiGHS (dual simplex); the row duals are returned as HiGHS gives them."""
    import highspy

    model = quiet_highs()
    model.setOptionValue("time_limit", max(float(time_limit), 0.01))
    h = highspy.HighsLp()
    n_rows, n_cols = lp.a_ub.shape
    h.num_col_, h.num_row_ = n_cols, n_rows
    h.col_cost_ = lp.cost
    h.col_lower_, h.col_upper_ = lp.col_lower, lp.col_upper
    h.row_lower_ = np.full(n_rows, -np.inf)
    h.row_upper_ = lp.b_ub
    h.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    h.a_matrix_.num_col_, h.a_matrix_.num_row_ = n_cols, n_rows
    nz = np.nonzero(lp.a_ub)
    h.a_matrix_.start_ = np.concatenate([[0], np.cumsum(np.count_nonzero(lp.a_ub, axis=1))])
    h.a_matrix_.index_ = nz[1]
    h.a_matrix_.value_ = lp.a_ub[nz]
    if model.passModel(h) == highspy.HighsStatus.kError:
        return LpSolution("failed: HiGHS rejected the LP")
    model.run()
    status = model.getModelStatus()
    if status == highspy.HighsModelStatus.kOptimal:
        sol = model.getSolution()
        return LpSolution("optimal", float(model.getInfo().objective_function_value),
                          np.asarray(sol.col_value), np.asarray(sol.row_dual))
    if status == highspy.HighsModelStatus.kInfeasible:
        return LpSolution("infeasible")
    return LpSolution(f"failed: HiGHS {model.modelStatusToString(status)}")
