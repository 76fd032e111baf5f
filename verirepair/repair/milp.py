"""Hidden-layer MILP patch: change the incoming weights of a few last-hidden neurons so
that requirements on the outputs hold at a finite set of points.

Notation: the network is A_L(relu(A_{L-1}(... ))), the patched layer is A_{L-1} =
``net.layers[-2]`` (weight W (H, n_prev), bias b), and ``neurons`` (K,) are the hidden
neurons j whose row (W_j, b_j) may change by (dw_j, db_j). At point p, h_p is the input
of A_{L-1} (the post-ReLU output of the earlier layers, or x_p itself with one hidden
layer), z0_pj = W_j.h_p + b_j the original pre-activation and
z_pj = z0_pj + dw_j.h_p + db_j the patched one.

Variables (columns, in this order):
  d    the K*(n_prev+1) changes [dw_j | db_j] (row-major), each in [-delta_max, delta_max];
  u    one per entry of d, u >= |d| (rows u - d >= 0, u + d >= 0), in [0, delta_max];
  a    the post-activation a_pj of every (point, neuron) pair that is not dead (below);
  bin  one binary per unstable pair;
  s    one slack >= 0 per soft requirement row.
Pre-activation range of a pair: |dw.h + db| <= delta_max (|h_p|_1 + 1) =: M_p, so
z_pj in [lo, hi] = [z0_pj - M_p, z0_pj + M_p] for EVERY allowed change (exact, sound):
  lo >= 0 ("active"):   a = z exactly (row a - dw.h - db = z0);
  hi <= 0 ("dead"):     a = 0 exactly, no column at all;
  otherwise ("unstable", big-M with a binary): a >= z, a >= 0, a <= z - lo (1 - bin),
                        a <= hi bin; with bin in {0, 1} this is exactly a = relu(z).
Output at point p: y_p = W_L a_p + b_L, where the unselected neurons keep their original
post-activation (a constant). Requirement row r at point p(r):
  c_r.y_p >= d_r (hard)   or   c_r.y_p + s_r >= d_r (soft, s_r >= 0).
Objective: sum u + soft_cost * sum s (the L1 norm of the change plus the slack cost).

Only points that carry at least one row are encoded. The MILP is exact on those points
(no relaxation); the solvers work to tolerances, so ``solve_patch`` re-evaluates the
patched network in float64 at every point and rejects a solution that breaks a hard row
by more than 1e-6 (relative). Points are not a proof: nothing is promised between them;
the caller verifies the region.

The encoding (``encode_patch``, plain arrays) is separate from the solvers, which sit
behind the ``MILP_SOLVERS`` table (HiGHS through highspy; Gurobi through gurobipy when it
is installed and the model fits its size-limited pip licence).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

from verirepair.errors import SolverError
from verirepair.lp import quiet_highs
from verirepair.net_types import Affine, AffineReluNet

log = logging.getLogger(__name__)

GUROBI_SIZE_LIMIT = 2000  # variables and linear constraints of the pip (restricted) licence
CHECK_RTOL = 1e-6  # re-check tolerance of hard rows, relative to the size of c.y


@dataclass(frozen=True)
class PointRequirements:
    """At network input x[p], the output y must satisfy c . y >= d (all rows hold)."""

    x: np.ndarray  # (P, n_inputs) network inputs
    point: np.ndarray  # (R,) int: which point each row constrains
    c: np.ndarray  # (R, n_out)
    d: np.ndarray  # (R,)   the row is  c . y(x[point]) >= d
    soft: np.ndarray  # (R,) bool: True = may be broken at a cost (slack), False = hard
    keep: np.ndarray | None = None  # (P,) bool: the selected neurons keep their phase here

    @property
    def size(self) -> int:
        return int(self.d.shape[0])


@dataclass(frozen=True)
class MilpPatchOptions:
    delta_max: float = 1.0  # |change| bound on each changed entry (gives big-M)
    soft_cost: float = 100.0  # objective cost per unit of slack on soft rows
    time_limit: float = 60.0
    solver: str = "auto"  # "auto" | "highs" | "gurobi"
    mip_rel_gap: float = 1e-3


@dataclass(frozen=True)
class MilpEncoding:
    """min cost.z  s.t.  row_lower <= A z <= row_upper, col_lower <= z <= col_upper,
    z_i integer where ``integrality`` (only binaries occur: bounds [0, 1]).

    Pure data. Column layout: see the module docstring; the changes d come first and the
    slacks last.
    """

    cost: np.ndarray  # (N,)
    A: sp.csc_matrix  # (M, N)
    row_lower: np.ndarray  # (M,) may be -inf
    row_upper: np.ndarray  # (M,) may be +inf
    col_lower: np.ndarray  # (N,)
    col_upper: np.ndarray  # (N,)
    integrality: np.ndarray  # (N,) bool
    neurons: np.ndarray  # (K,) the hidden neurons that may change
    n_prev: int  # inputs of the patched layer
    n_slack: int  # soft rows (the last n_slack columns)

    @property
    def n_vars(self) -> int:
        return int(self.A.shape[1])

    @property
    def n_rows(self) -> int:
        return int(self.A.shape[0])

    @property
    def n_binaries(self) -> int:
        return int(self.integrality.sum())

    @property
    def n_delta(self) -> int:
        return int(self.neurons.size * (self.n_prev + 1))

    def delta(self, z: np.ndarray) -> np.ndarray:
        """(K, n_prev + 1) changes [dw | db] of the selected neurons in solution z."""
        return np.asarray(z[:self.n_delta], dtype=np.float64).reshape(self.neurons.size,
                                                                      self.n_prev + 1)


@dataclass(frozen=True)
class MilpPatch:
    weight: np.ndarray  # new (H, n_prev) weight of net.layers[-2]; only rows of neurons change
    bias: np.ndarray  # new (H,) bias
    objective: float
    status: str  # "optimal" | "feasible" (time limit with an incumbent)
    solver: str
    seconds: float
    binaries: int


@dataclass(frozen=True)
class SolverResult:
    """What a solver returns: z is None unless status is "optimal" or "feasible"."""

    status: str  # "optimal" | "feasible" | "infeasible" | "no incumbent" | "failed: ..."
    z: np.ndarray | None
    gap: float = float("nan")


# --------------------------------------------------------------------------- encoding

@dataclass(frozen=True)
class _Pairs:
    """The (used point, selected neuron) pairs and their pre-activation ranges."""

    q: np.ndarray  # (Q*K,) index into the used points
    k: np.ndarray  # (Q*K,) index into the selected neurons
    z0: np.ndarray  # (Q*K,)
    lo: np.ndarray  # (Q*K,)
    hi: np.ndarray  # (Q*K,)

    @property
    def active(self) -> np.ndarray:
        return self.lo >= 0.0

    @property
    def dead(self) -> np.ndarray:
        return (self.hi <= 0.0) & ~self.active

    @property
    def unstable(self) -> np.ndarray:
        return ~self.active & ~self.dead


def hidden_input(net: AffineReluNet, x: np.ndarray) -> np.ndarray:
    """(N, n_prev) input of ``net.layers[-2]`` at x (float64, exact forward pass)."""
    h = np.asarray(x, dtype=np.float64)
    for layer in net.layers[:-2]:
        h = np.maximum(h @ layer.weight.T + layer.bias, 0.0)
    return h


def _check_inputs(net: AffineReluNet, neurons: np.ndarray, req: PointRequirements) -> None:
    if len(net.layers) < 2:
        raise ValueError("milp patch: the network has no hidden layer")
    width = net.layers[-2].n_out
    if neurons.size == 0 or np.unique(neurons).size != neurons.size \
            or neurons.min() < 0 or neurons.max() >= width:
        raise ValueError(f"milp patch: neurons must be distinct indices in [0, {width})")
    r = req.size
    if req.point.shape != (r,) or req.c.shape != (r, net.n_outputs) \
            or req.soft.shape != (r,) or req.x.ndim != 2 or req.x.shape[1] != net.n_inputs:
        raise ValueError("milp patch: inconsistent requirement shapes")
    if r and (req.point.min() < 0 or req.point.max() >= req.x.shape[0]):
        raise ValueError("milp patch: a requirement row names a missing point")


def _pairs(z0: np.ndarray, h: np.ndarray, delta_max: float, keep: np.ndarray) -> _Pairs:
    """All (point, neuron) pairs, row-major, with the sound range z0 -+ delta_max(|h|_1+1);
    at points with ``keep`` the range is cut at 0 on the side of the original phase (the
    caller adds the row z <= 0 for the ones kept off)."""
    n_q, n_k = z0.shape
    radius = delta_max * (np.abs(h).sum(axis=1) + 1.0)  # (Q,)
    q, k = np.repeat(np.arange(n_q), n_k), np.tile(np.arange(n_k), n_q)
    flat = z0.ravel()
    lo, hi = flat - radius[q], flat + radius[q]
    kept = keep[q]
    lo = np.where(kept & (flat >= 0), 0.0, lo)
    hi = np.where(kept & (flat < 0), 0.0, hi)
    return _Pairs(q=q, k=k, z0=flat, lo=lo, hi=hi)


class _Builder:
    """Accumulates sparse rows (COO triplets) and their bounds."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.lower: list[np.ndarray] = []
        self.upper: list[np.ndarray] = []
        self.n_rows = 0

    def block(self, n: int, lower: np.ndarray, upper: np.ndarray,
              terms: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Add n rows; each term is (local row, column, value) arrays."""
        for r, c, v in terms:
            self.rows.append(self.n_rows + np.asarray(r, dtype=np.int64))
            self.cols.append(np.asarray(c, dtype=np.int64))
            self.vals.append(np.asarray(v, dtype=np.float64))
        self.lower.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)))
        self.upper.append(np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)))
        self.n_rows += n

    def matrix(self, n_cols: int) -> tuple[sp.csc_matrix, np.ndarray, np.ndarray]:
        empty = [np.zeros(0)]
        a = sp.coo_matrix((np.concatenate(self.vals + empty),
                           (np.concatenate(self.rows + empty).astype(np.int64),
                            np.concatenate(self.cols + empty).astype(np.int64))),
                          shape=(self.n_rows, n_cols)).tocsc()
        a.sum_duplicates()
        return a, np.concatenate(self.lower + empty), np.concatenate(self.upper + empty)


def _change_terms(pair_k: np.ndarray, h_rows: np.ndarray, n_prev: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triplets of -(dw_k . h + db_k) for local rows 0..len(pair_k)-1."""
    n = pair_k.size
    cols = pair_k[:, None] * (n_prev + 1) + np.arange(n_prev + 1)[None, :]
    vals = -np.hstack([h_rows, np.ones((n, 1))])
    return np.repeat(np.arange(n), n_prev + 1), cols.ravel(), vals.ravel()


def encode_patch(net: AffineReluNet, neurons: np.ndarray, req: PointRequirements,
                 options: MilpPatchOptions) -> MilpEncoding:
    """The MILP of the module docstring as plain data (no solving). Exact on the points."""
    neurons = np.asarray(neurons, dtype=np.int64).reshape(-1)
    _check_inputs(net, neurons, req)
    hidden, last = net.layers[-2], net.layers[-1]
    used, row_q = np.unique(np.asarray(req.point, dtype=np.int64), return_inverse=True)
    h = hidden_input(net, req.x[used])  # (Q, n_prev)
    z0_all = h @ hidden.weight.T + hidden.bias  # (Q, H)
    keep = (np.zeros(req.x.shape[0], dtype=bool) if req.keep is None
            else np.asarray(req.keep, dtype=bool))[used]
    pairs = _pairs(z0_all[:, neurons], h, options.delta_max, keep)
    n_k, n_prev = neurons.size, hidden.n_in
    n_d = n_k * (n_prev + 1)

    live = ~pairs.dead
    a_col = np.full(pairs.q.size, -1)
    a_col[live] = 2 * n_d + np.arange(int(live.sum()))
    unstable = pairs.unstable
    bin_col = np.full(pairs.q.size, -1)
    n_a = int(live.sum())
    bin_col[unstable] = 2 * n_d + n_a + np.arange(int(unstable.sum()))
    soft_rows = np.nonzero(np.asarray(req.soft, dtype=bool))[0]
    slack0 = 2 * n_d + n_a + int(unstable.sum())
    n_cols = slack0 + soft_rows.size

    b = _Builder()
    e = np.arange(n_d)
    for sign in (-1.0, 1.0):  # u - d >= 0 and u + d >= 0
        b.block(n_d, 0.0, np.inf, [(e, n_d + e, np.ones(n_d)), (e, e, np.full(n_d, sign))])

    act = np.nonzero(pairs.active)[0]
    r, c, v = _change_terms(pairs.k[act], h[pairs.q[act]], n_prev)
    b.block(act.size, pairs.z0[act], pairs.z0[act],
            [(np.arange(act.size), a_col[act], np.ones(act.size)), (r, c, v)])

    off = np.nonzero(keep[pairs.q] & (pairs.z0 < 0))[0]  # kept off: z <= 0
    r, c, v = _change_terms(pairs.k[off], h[pairs.q[off]], n_prev)
    b.block(off.size, pairs.z0[off], np.inf, [(r, c, v)])

    uns = np.nonzero(unstable)[0]
    n_u, rng_u = uns.size, np.arange(uns.size)
    r, c, v = _change_terms(pairs.k[uns], h[pairs.q[uns]], n_prev)
    a_u, bin_u, lo_u, hi_u, z0_u = a_col[uns], bin_col[uns], pairs.lo[uns], pairs.hi[uns], \
        pairs.z0[uns]
    b.block(n_u, z0_u, np.inf, [(rng_u, a_u, np.ones(n_u)), (r, c, v)])  # a >= z
    b.block(n_u, -np.inf, z0_u - lo_u,  # a <= z - lo (1 - bin)
            [(rng_u, a_u, np.ones(n_u)), (r, c, v), (rng_u, bin_u, -lo_u)])
    b.block(n_u, -np.inf, 0.0, [(rng_u, a_u, np.ones(n_u)), (rng_u, bin_u, -hi_u)])

    c_req = np.asarray(req.c, dtype=np.float64)
    a0 = np.maximum(z0_all, 0.0)
    a0[:, neurons] = 0.0  # the selected neurons are variables
    const = np.einsum("ro,ro->r", c_req, a0[row_q] @ last.weight.T + last.bias)
    gain = c_req @ last.weight[:, neurons]  # (R, K): coefficient of a_{p(r), k}
    pair_of = row_q[:, None] * n_k + np.arange(n_k)[None, :]  # (R, K) pair index
    cols = a_col[pair_of]
    alive = cols >= 0  # dead pairs contribute 0
    rr, kk = np.nonzero(alive)
    terms = [(rr, cols[rr, kk], gain[rr, kk]),
             (soft_rows, slack0 + np.arange(soft_rows.size), np.ones(soft_rows.size))]
    b.block(req.size, np.asarray(req.d, dtype=np.float64) - const, np.inf, terms)

    a_mat, row_lower, row_upper = b.matrix(n_cols)
    col_lower = np.concatenate([np.full(n_d, -options.delta_max), np.zeros(n_d),
                                np.where(pairs.active, pairs.lo, 0.0)[live],
                                np.zeros(unstable.sum() + soft_rows.size)])
    col_upper = np.concatenate([np.full(2 * n_d, options.delta_max), pairs.hi[live],
                                np.ones(unstable.sum()), np.full(soft_rows.size, np.inf)])
    cost = np.concatenate([np.zeros(n_d), np.ones(n_d), np.zeros(n_a + unstable.sum()),
                           np.full(soft_rows.size, options.soft_cost)])
    integrality = np.zeros(n_cols, dtype=bool)
    integrality[bin_col[uns]] = True
    return MilpEncoding(cost=cost, A=a_mat, row_lower=row_lower, row_upper=row_upper,
                        col_lower=col_lower, col_upper=col_upper, integrality=integrality,
                        neurons=neurons, n_prev=n_prev, n_slack=int(soft_rows.size))


# --------------------------------------------------------------------------- solvers

def _highs(enc: MilpEncoding, options: MilpPatchOptions) -> SolverResult:
    import highspy

    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = enc.n_vars, enc.n_rows
    lp.col_cost_ = enc.cost
    lp.col_lower_, lp.col_upper_ = enc.col_lower, enc.col_upper
    lp.row_lower_, lp.row_upper_ = enc.row_lower, enc.row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = enc.n_vars, enc.n_rows
    lp.a_matrix_.start_ = enc.A.indptr
    lp.a_matrix_.index_ = enc.A.indices
    lp.a_matrix_.value_ = enc.A.data
    kinds = (highspy.HighsVarType.kContinuous, highspy.HighsVarType.kInteger)
    lp.integrality_ = [kinds[int(i)] for i in enc.integrality]
    model = quiet_highs()
    model.setOptionValue("time_limit", float(options.time_limit))
    model.setOptionValue("mip_rel_gap", float(options.mip_rel_gap))
    if model.passModel(lp) == highspy.HighsStatus.kError:
        return SolverResult("failed: HiGHS rejected the model", None)
    model.run()
    status = model.getModelStatus()
    info = model.getInfo()
    has_point = info.primal_solution_status == 2  # kSolutionStatusFeasible
    gap = float(info.mip_gap) if enc.n_binaries else 0.0
    if status == highspy.HighsModelStatus.kOptimal:
        return SolverResult("optimal", np.asarray(model.getSolution().col_value), gap)
    if status == highspy.HighsModelStatus.kInfeasible:
        return SolverResult("infeasible", None)
    if status == highspy.HighsModelStatus.kTimeLimit:
        if has_point:
            return SolverResult("feasible", np.asarray(model.getSolution().col_value), gap)
        return SolverResult("no incumbent", None)
    return SolverResult(f"failed: HiGHS {model.modelStatusToString(status)}", None)


def gurobi_size(enc: MilpEncoding) -> tuple[int, int]:
    """(variables, linear constraints) of the encoding as Gurobi counts them (a row
    bounded on both sides, not an equality, becomes two constraints)."""
    lower, upper = np.isfinite(enc.row_lower), np.isfinite(enc.row_upper)
    eq = lower & upper & (enc.row_lower == enc.row_upper)
    return enc.n_vars, int(eq.sum() + (lower & ~eq).sum() + (upper & ~eq).sum())


def gurobi_fits(enc: MilpEncoding) -> bool:
    n_vars, n_cons = gurobi_size(enc)
    return n_vars <= GUROBI_SIZE_LIMIT and n_cons <= GUROBI_SIZE_LIMIT


def gurobi_available() -> bool:
    return importlib.util.find_spec("gurobipy") is not None


def _gurobi_rows(enc: MilpEncoding) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """(A', sense, rhs) with one Gurobi constraint per side of each row."""
    a = enc.A.tocsr()
    lower, upper = np.isfinite(enc.row_lower), np.isfinite(enc.row_upper)
    eq = lower & upper & (enc.row_lower == enc.row_upper)
    parts = [(eq, "=", enc.row_lower), (lower & ~eq, ">", enc.row_lower),
             (upper & ~eq, "<", enc.row_upper)]
    mats = [a[m] for m, _, _ in parts]
    senses = [np.full(int(m.sum()), s) for m, s, _ in parts]
    rhs = [r[m] for m, _, r in parts]
    return sp.vstack(mats).tocsr(), np.concatenate(senses), np.concatenate(rhs)


def _gurobi(enc: MilpEncoding, options: MilpPatchOptions) -> SolverResult:
    import gurobipy as gp
    from gurobipy import GRB

    try:
        with gp.Env(empty=True) as env:
            env.setParam("OutputFlag", 0)
            env.start()
            with gp.Model(env=env) as model:
                model.Params.TimeLimit = float(options.time_limit)
                model.Params.MIPGap = float(options.mip_rel_gap)
                inf = GRB.INFINITY
                z = model.addMVar(enc.n_vars, lb=np.clip(enc.col_lower, -inf, inf),
                                  ub=np.clip(enc.col_upper, -inf, inf), obj=enc.cost,
                                  vtype=np.where(enc.integrality, GRB.BINARY,
                                                 GRB.CONTINUOUS))
                a, sense, rhs = _gurobi_rows(enc)
                model.addMConstr(a, z, sense, rhs)
                model.optimize()
                gap = float(model.MIPGap) if enc.n_binaries and model.SolCount else 0.0
                if model.Status == GRB.OPTIMAL:
                    return SolverResult("optimal", np.asarray(z.X), gap)
                if model.Status in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):
                    return SolverResult("infeasible", None)
                if model.Status == GRB.TIME_LIMIT:
                    if model.SolCount:
                        return SolverResult("feasible", np.asarray(z.X), gap)
                    return SolverResult("no incumbent", None)
                return SolverResult(f"failed: Gurobi status {model.Status}", None)
    except gp.GurobiError as exc:
        return SolverResult(f"failed: Gurobi: {exc}", None)


MILP_SOLVERS: dict[str, Callable[[MilpEncoding, MilpPatchOptions], SolverResult]] = {
    "highs": _highs,
    "gurobi": _gurobi,
}


def _pick_auto(enc: MilpEncoding) -> str:
    return "gurobi" if gurobi_available() and gurobi_fits(enc) else "highs"


def _pick_highs(enc: MilpEncoding) -> str:
    return "highs"


def _pick_gurobi(enc: MilpEncoding) -> str:
    if not gurobi_available():
        raise SolverError("milp patch: solver 'gurobi' requested but gurobipy is not "
                          "installed (pip install gurobipy, or choose 'highs' or 'auto')")
    if not gurobi_fits(enc):
        n_vars, n_cons = gurobi_size(enc)
        raise SolverError(f"milp patch: the model ({n_vars} variables, {n_cons} "
                          f"constraints) exceeds the Gurobi pip licence limit of "
                          f"{GUROBI_SIZE_LIMIT}; use solver 'highs' or 'auto'")
    return "gurobi"


SOLVER_CHOICE: dict[str, Callable[[MilpEncoding], str]] = {
    "auto": _pick_auto,
    "highs": _pick_highs,
    "gurobi": _pick_gurobi,
}


def pick_solver(enc: MilpEncoding, requested: str) -> str:
    """The solver name for ``requested`` ("auto" | "highs" | "gurobi"); raises
    SolverError when an explicit choice cannot run this model."""
    choose = SOLVER_CHOICE.get(requested)
    if choose is None:
        raise SolverError(f"milp patch: unknown solver '{requested}' "
                          f"(choose from {', '.join(SOLVER_CHOICE)})")
    return choose(enc)


# --------------------------------------------------------------------------- patch

def _apply(net: AffineReluNet, enc: MilpEncoding, z: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of net.layers[-2] with the solution's changes added."""
    hidden = net.layers[-2]
    delta = enc.delta(z)
    weight, bias = hidden.weight.copy(), hidden.bias.copy()
    weight[enc.neurons] += delta[:, :-1]
    bias[enc.neurons] += delta[:, -1]
    return weight, bias


def patched_net(net: AffineReluNet, patch: MilpPatch) -> AffineReluNet:
    """The network with ``net.layers[-2]`` replaced by (patch.weight, patch.bias)."""
    new = Affine(weight=np.asarray(patch.weight, dtype=np.float64),
                 bias=np.asarray(patch.bias, dtype=np.float64))
    return AffineReluNet(net.layers[:-2] + (new, net.layers[-1]))


def hard_row_shortfall(net: AffineReluNet, req: PointRequirements) -> np.ndarray:
    """(R,) how far each row is below its d, relative to max(1, |c|.|y|, |d|), float64
    forward evaluation; <= 0 where the row holds."""
    y = net.forward(req.x)[req.point]
    value = np.einsum("ro,ro->r", req.c, y)
    scale = np.maximum.reduce([np.ones_like(value), np.einsum("ro,ro->r", np.abs(req.c),
                                                              np.abs(y)), np.abs(req.d)])
    return (req.d - value) / scale


def _solve_with(enc: MilpEncoding, options: MilpPatchOptions) -> tuple[str, SolverResult]:
    """Run the chosen solver; "auto" falls back to HiGHS when Gurobi fails to run."""
    name = pick_solver(enc, options.solver)
    result = MILP_SOLVERS[name](enc, options)
    if options.solver == "auto" and name != "highs" and result.status.startswith("failed"):
        log.warning("milp patch: %s; falling back to HiGHS", result.status)
        name, result = "highs", MILP_SOLVERS["highs"](enc, options)
    return name, result


def solve_patch(net: AffineReluNet, neurons: np.ndarray, req: PointRequirements,
                options: MilpPatchOptions = MilpPatchOptions()) -> MilpPatch | None:
    """Minimal-L1 change of the selected neurons' incoming weights meeting ``req`` at its
    points (exact MILP, see the module docstring). Returns None when the MILP is
    infeasible, no solution is found in time, the solver fails, or the solution breaks
    a hard row on float64 re-evaluation (all logged). Promises the points only.
    Raises SolverError when an explicitly requested solver cannot run the model."""
    t0 = time.monotonic()
    enc = encode_patch(net, neurons, req, options)
    log.info("milp patch: %d variables (%d binaries), %d rows, %d points, %d neurons",
             enc.n_vars, enc.n_binaries, enc.n_rows, np.unique(req.point).size,
             enc.neurons.size)
    name, result = _solve_with(enc, options)
    seconds = time.monotonic() - t0
    if result.z is None or not np.all(np.isfinite(result.z)):
        log.info("milp patch: %s: %s after %.2f s", name, result.status, seconds)
        return None
    weight, bias = _apply(net, enc, result.z)
    patch = MilpPatch(weight=weight, bias=bias, objective=float(enc.cost @ result.z),
                      status=result.status, solver=name, seconds=seconds,
                      binaries=enc.n_binaries)
    hard = ~np.asarray(req.soft, dtype=bool)
    short = hard_row_shortfall(patched_net(net, patch), req)[hard]
    if short.size and short.max() > CHECK_RTOL:
        log.warning("milp patch: %s solution breaks a hard row by %.3g (relative) on "
                    "re-evaluation; rejected", name, float(short.max()))
        return None
    slack = float(result.z[enc.n_vars - enc.n_slack:].sum()) if enc.n_slack else 0.0
    log.info("milp patch: %s %s, objective %.6g (slack %.3g), gap %.3g, %.2f s", name,
             result.status, patch.objective, slack, result.gap, seconds)
    return patch
