"""Exact verification in real arithmetic with z3 (an oracle for tiny networks).

Requires: a lowered ReLU network with at most ``MAX_HIDDEN`` hidden neurons.
Returns: HOLDS when z3 proves every case's unsafe set empty over the reals, VIOLATED only
with a counterexample re-checked in onnxruntime, UNKNOWN when z3's real-arithmetic
counterexample is not confirmed by float32 onnxruntime (or z3 gives up), TIMEOUT.
Sound: yes. HOLDS is exact for the real-arithmetic semantics of the lowered network:
every weight, bias, box bound and spec coefficient is converted with
``fractions.Fraction`` (the exact binary value), so the encoding has no rounding at all,
and ReLU is encoded exactly; strict bounds and rows (``>``/``<`` in the file) are strict
constraints. (Like every engine here it does not model float32 rounding
inside onnxruntime, which can matter only for margins at the rounding level.) z3's models
are re-checked in exact Python arithmetic and then in onnxruntime before VIOLATED.
Complete: yes (linear real arithmetic with case splits), up to the timeout.

The encoding (:func:`encode`) is plain data of z3 terms, independent of any solver;
:func:`solve` builds a solver for it. The engine never uses verirepair's bound code, so it
is an independent oracle for the branch-and-bound engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import z3

from verirepair.errors import MismatchError
from verirepair.net_types import AffineReluNet
from verirepair.network import Network, onnx_session
from verirepair.spec_types import Spec, SpecCase, strict_flags
from verirepair.verify.confirm import confirm
from verirepair.verify.types import Counterexample, Result, Stats, Verdict, Witness

if TYPE_CHECKING:  # engine.py imports this module; avoid the cycle at run time
    from verirepair.verify.engine import VerifyOptions

MAX_HIDDEN = 200

# When z3's first model is not confirmed in float32 (typically a vertex where the margin
# is exactly zero), first move it to the deepest point of its linear region (one LP), then
# ask again for models that satisfy a disjunct with these slacks, relative to the scale
# of the spec; stop at the first slack that is unsat.
SLACK_LADDER = (1e-6, 1e-4, 1e-2)

UNCONFIRMED_REASON = ("z3 found a real-arithmetic counterexample that float32 onnxruntime "
                      "does not confirm")

Progress = Callable[[Stats, int], None]


@dataclass(frozen=True)
class Encoding:
    """A case of a property over a network as z3 terms (no solver attached).

    ``constraints`` fix the network semantics and the input box; ``disjuncts`` hold, per
    unsafe disjunct, its rows as (linear term in the outputs, exact right-hand side). The
    unsafe query is ``And(constraints) and Or_k And_r (term_r <= rhs_r - slack)`` (``<``
    for the rows the file states strictly; strict input bounds are strict constraints).
    """

    inputs: tuple[z3.ArithRef, ...]
    outputs: tuple[z3.ArithRef, ...]
    constraints: tuple[z3.BoolRef, ...]
    disjuncts: tuple[tuple[tuple[z3.ArithRef, Fraction, bool], ...], ...]  # term, rhs, <
    scale: Fraction  # 1 + largest |rhs|: the unit of the slack ladder
    hidden: tuple[tuple[tuple[z3.ArithRef, z3.ArithRef], ...], ...]  # (z, h) per neuron
    net: AffineReluNet  # kept to re-check z3's models in exact Python arithmetic
    case: SpecCase

    def formula(self, slack: Fraction = Fraction(0)) -> z3.BoolRef:
        """The whole unsafe query as one formula."""
        return z3.And(*self.constraints, self.unsafe(slack))

    def unsafe(self, slack: Fraction = Fraction(0)) -> z3.BoolRef:
        """Some disjunct holds with ``term <= rhs - slack`` on every row (``<`` where
        strict)."""
        options = []
        for rows in self.disjuncts:
            if not rows:
                return z3.BoolVal(True)
            options.append(z3.And(*[term < _real(rhs - slack) if strict
                                    else term <= _real(rhs - slack)
                                    for term, rhs, strict in rows]))
        if not options:
            return z3.BoolVal(False)
        return options[0] if len(options) == 1 else z3.Or(*options)


def _real(value: Fraction | float | int) -> z3.RatNumRef:
    """The exact z3 rational of a Python number (floats via their exact binary value)."""
    q = value if isinstance(value, Fraction) else Fraction(float(value))
    return z3.RealVal(f"{q.numerator}/{q.denominator}")


def _exact(value: float) -> Fraction:
    v = float(value)
    if not np.isfinite(v):
        raise MismatchError(f"z3 engine needs finite numbers, got {v}")
    return Fraction(v)


def hidden_neurons(net: AffineReluNet) -> int:
    return int(sum(layer.n_out for layer in net.layers[:-1]))


def _linear(weight_row: np.ndarray, bias: float, terms: list[z3.ArithRef]) -> z3.ArithRef:
    parts = [(_real(_exact(w)) * t) for w, t in zip(weight_row, terms) if float(w) != 0.0]
    b = _exact(bias)
    if b != 0 or not parts:
        parts.append(_real(b))
    return parts[0] if len(parts) == 1 else z3.Sum(*parts)


def _interval_affine(w: np.ndarray, b: np.ndarray, lo: list[Fraction], hi: list[Fraction]
                     ) -> tuple[list[Fraction], list[Fraction]]:
    """Exact (rational) interval bounds of ``w @ h + b`` for ``lo <= h <= hi``."""
    out_lo, out_hi = [], []
    for j in range(w.shape[0]):
        a = c = _exact(b[j])
        for k in range(w.shape[1]):
            wk = _exact(w[j, k])
            if wk > 0:
                a += wk * lo[k]
                c += wk * hi[k]
            elif wk < 0:
                a += wk * hi[k]
                c += wk * lo[k]
        out_lo.append(a)
        out_hi.append(c)
    return out_lo, out_hi


def _round_down(q: Fraction) -> Fraction:
    """The largest float64 value <= q, as a Fraction (keeps constants short for z3)."""
    try:
        f = float(q)
    except OverflowError:
        return q
    if Fraction(f) > q:
        f = float(np.nextafter(f, -np.inf))
    return Fraction(f)


def _symbolic_bounds(net: AffineReluNet, lower: list[Fraction], upper: list[Fraction]
                     ) -> list[tuple[list[Fraction], list[Fraction]]]:
    """Exact pre-activation bounds of every hidden layer by forward symbolic intervals.

    Every neuron carries a lower and an upper linear function of the input (coefficients
    and constant, all ``Fraction``), relaxed through each ReLU (chord above, 0 or identity
    below), and is bounded by the exact range of those functions on the box intersected
    with interval arithmetic. No rounding anywhere, so the bounds are exact consequences
    of the network semantics (only used to strengthen the encoding).
    """
    n = len(lower)
    zero = Fraction(0)

    def range_of(f: list[Fraction]) -> tuple[Fraction, Fraction]:
        lo = hi = f[n]
        for i in range(n):
            if f[i] > 0:
                lo += f[i] * lower[i]
                hi += f[i] * upper[i]
            elif f[i] < 0:
                lo += f[i] * upper[i]
                hi += f[i] * lower[i]
        return lo, hi

    ident = [[Fraction(int(i == k)) for i in range(n)] + [zero] for k in range(n)]
    lo_f, up_f = ident, ident  # linear bounds of the current layer's inputs
    ibp_lo, ibp_hi = list(lower), list(upper)
    out = []
    for layer in net.layers[:-1]:
        w, b = np.asarray(layer.weight), np.asarray(layer.bias)
        z_lo, z_hi = _interval_affine(w, b, ibp_lo, ibp_hi)
        new_lo, new_up = [], []
        for j in range(layer.n_out):
            fl = [zero] * n + [_exact(b[j])]
            fu = list(fl)
            for k in range(w.shape[1]):
                wk = _exact(w[j, k])
                if wk == 0:
                    continue
                src_l, src_u = (lo_f[k], up_f[k]) if wk > 0 else (up_f[k], lo_f[k])
                for i in range(n + 1):
                    fl[i] += wk * src_l[i]
                    fu[i] += wk * src_u[i]
            z_lo[j] = max(z_lo[j], range_of(fl)[0])
            z_hi[j] = min(z_hi[j], range_of(fu)[1])
            new_lo.append(fl)
            new_up.append(fu)
        out.append((z_lo, z_hi))
        lo_f, up_f = [], []
        for j in range(layer.n_out):
            l, u = z_lo[j], z_hi[j]
            if l >= 0:
                lo_f.append(new_lo[j])
                up_f.append(new_up[j])
            elif u <= 0:
                lo_f.append([zero] * (n + 1))
                up_f.append([zero] * (n + 1))
            else:
                # relu(z) <= u (z - l) / (u - l) <= same applied to the upper function;
                # relu(z) >= 0 and >= z: pick by the larger side, as DeepPoly does.
                slope = u / (u - l)
                fu = [slope * c for c in new_up[j]]
                fu[n] -= slope * l
                up_f.append(fu)
                lo_f.append(new_lo[j] if u > -l else [zero] * (n + 1))
        ibp_lo = [max(v, zero) for v in z_lo]
        ibp_hi = [max(v, zero) for v in z_hi]
    return out


def encode(net: AffineReluNet, case: SpecCase, prefix: str = "", relu: str = "ite"
           ) -> Encoding:
    """Exact encoding of ``exists x in box: f(x) in some unsafe disjunct`` (real arithmetic).

    Variables: ``x_i`` inputs, ``z{l}_{j}`` hidden pre-activations, ``h{l}_{j}``
    post-activations, ``y_j`` outputs. ReLU is ``h = If(z >= 0, z, 0)`` (``relu="ite"``) or
    ``(a and z >= 0 and h = z) or (not a and z <= 0 and h = 0)`` with a phase literal
    ``a`` (``relu="disjunction"``). Pre-activation bounds ``lo <= z <= hi`` (exact
    rational symbolic intervals, see :func:`_symbolic_bounds`, then rounded outward to
    float64 to keep z3's constants short) replace the ReLU by ``h = z`` / ``h = 0`` for
    stable neurons and add the implied triangle ``h >= 0, h >= z,
    h (hi - lo) <= hi (z - lo)`` for the others. Every added constraint is implied by the
    exact semantics, so the encoding stays exact; they only help the solver.
    """
    if relu not in ("ite", "disjunction"):
        raise ValueError(f"relu encoding must be 'ite' or 'disjunction', not {relu!r}")
    n_in = net.n_inputs
    lower, upper = np.asarray(case.box.lower), np.asarray(case.box.upper)
    if lower.shape != (n_in,) or upper.shape != (n_in,):
        raise MismatchError(f"box has {lower.shape} bounds but the network has {n_in} inputs")
    xs = [z3.Real(f"{prefix}x_{i}") for i in range(n_in)]
    constraints: list[z3.BoolRef] = []
    strict_lo = strict_flags(case.box.strict_lower, lower)
    strict_hi = strict_flags(case.box.strict_upper, upper)
    for i, x in enumerate(xs):
        lo, hi = _exact(lower[i]), _exact(upper[i])
        if lo == hi and not (strict_lo[i] or strict_hi[i]):
            constraints.append(x == _real(lo))
        else:
            constraints += [x > _real(lo) if strict_lo[i] else x >= _real(lo),
                            x < _real(hi) if strict_hi[i] else x <= _real(hi)]
    h: list[z3.ArithRef] = list(xs)
    hidden: list[tuple[tuple[z3.ArithRef, z3.ArithRef], ...]] = []
    hidden_bounds = _symbolic_bounds(net, [_exact(v) for v in lower],
                                     [_exact(v) for v in upper])
    last = len(net.layers) - 1
    ys: list[z3.ArithRef] = []
    for li, layer in enumerate(net.layers):
        w, b = np.asarray(layer.weight), np.asarray(layer.bias)
        if li == last:
            ys = [z3.Real(f"{prefix}y_{j}") for j in range(layer.n_out)]
            constraints += [y == _linear(w[j], b[j], h) for j, y in enumerate(ys)]
            break
        zs = [z3.Real(f"{prefix}z{li}_{j}") for j in range(layer.n_out)]
        hs = [z3.Real(f"{prefix}h{li}_{j}") for j in range(layer.n_out)]
        z_lo = [_round_down(v) for v in hidden_bounds[li][0]]
        z_hi = [-_round_down(-v) for v in hidden_bounds[li][1]]
        for j in range(layer.n_out):
            constraints.append(zs[j] == _linear(w[j], b[j], h))
            lo, hi = z_lo[j], z_hi[j]
            if lo >= 0:
                constraints.append(hs[j] == zs[j])
            elif hi <= 0:
                constraints.append(hs[j] == _real(0))
            else:
                if relu == "ite":
                    constraints.append(hs[j] == z3.If(zs[j] >= 0, zs[j], _real(0)))
                else:  # "disjunction": a phase literal selects one of the two linear pieces
                    on = z3.Bool(f"{prefix}a{li}_{j}")
                    constraints += [z3.Implies(on, z3.And(zs[j] >= 0, hs[j] == zs[j])),
                                    z3.Implies(z3.Not(on), z3.And(zs[j] <= 0,
                                                                  hs[j] == _real(0)))]
                # implied by the line above and lo <= z <= hi (exact, only to help z3)
                constraints += [zs[j] >= _real(lo), zs[j] <= _real(hi), hs[j] >= 0,
                                hs[j] >= zs[j],
                                hs[j] * _real(hi - lo) <= _real(hi) * (zs[j] - _real(lo))]
        h = hs
        hidden.append(tuple(zip(zs, hs)))
    disjuncts = []
    scale = Fraction(1)
    for hsp in case.unsafe:
        mat = np.asarray(hsp.matrix, dtype=np.float64).reshape(-1, len(ys))
        rhs = np.asarray(hsp.rhs, dtype=np.float64).reshape(-1)
        strict = strict_flags(hsp.strict, rhs)
        rows = []
        for r in range(rhs.shape[0]):
            d = _exact(rhs[r])
            scale = max(scale, 1 + abs(d))
            rows.append((_linear(mat[r], 0.0, ys), d, bool(strict[r])))
        disjuncts.append(tuple(rows))
    return Encoding(tuple(xs), tuple(ys), tuple(constraints), tuple(disjuncts), scale,
                    tuple(hidden), net, case)


def exact_layers(net: AffineReluNet, x: Sequence[Fraction]) -> list[list[Fraction]]:
    """Every hidden pre-activation and the output at ``x``, in exact rational arithmetic."""
    h = list(x)
    out = []
    for layer in net.layers:
        w, b = np.asarray(layer.weight), np.asarray(layer.bias)
        z = [_exact(b[j]) + sum((_exact(w[j, k]) * h[k] for k in range(len(h))
                                 if w[j, k] != 0), Fraction(0))
             for j in range(layer.n_out)]
        out.append(z)
        h = [max(v, Fraction(0)) for v in z]
    return out


def exact_forward(net: AffineReluNet, x: Sequence[Fraction]) -> list[Fraction]:
    """The network output at ``x`` in exact rational arithmetic."""
    return exact_layers(net, x)[-1]


def _disjunct_holds(hsp, y: list[Fraction], slack: Fraction) -> bool:
    mat = np.asarray(hsp.matrix, dtype=np.float64).reshape(-1, len(y))
    rhs = np.asarray(hsp.rhs, dtype=np.float64).reshape(-1)
    strict = strict_flags(hsp.strict, rhs)

    def row_holds(r: int) -> bool:
        lhs = sum((_exact(mat[r, j]) * y[j] for j in range(len(y)) if mat[r, j] != 0),
                  Fraction(0))
        bound = _exact(rhs[r]) - slack
        return lhs < bound if strict[r] else lhs <= bound
    return all(row_holds(r) for r in range(rhs.shape[0]))


def exact_unsafe(net: AffineReluNet, case: SpecCase, x: Sequence[Fraction],
                 slack: Fraction = Fraction(0)) -> bool:
    """Whether ``x`` is in the case's box and f(x) satisfies some disjunct (exactly,
    strict bounds and rows included)."""
    lower, upper = np.asarray(case.box.lower), np.asarray(case.box.upper)
    strict_lo = strict_flags(case.box.strict_lower, lower)
    strict_hi = strict_flags(case.box.strict_upper, upper)

    def inside(i: int, v: Fraction) -> bool:
        lo, hi = _exact(lower[i]), _exact(upper[i])
        return (v > lo if strict_lo[i] else v >= lo) and (v < hi if strict_hi[i] else v <= hi)
    if len(x) != lower.shape[0] or not all(inside(i, v) for i, v in enumerate(x)):
        return False
    y = exact_forward(net, x)
    return any(_disjunct_holds(hsp, y, slack) for hsp in case.unsafe)


def _as_fraction(value: z3.ExprRef) -> Fraction:
    if z3.is_rational_value(value):
        return Fraction(value.numerator_as_long(), value.denominator_as_long())
    if z3.is_algebraic_value(value):  # cannot happen in linear arithmetic; be safe
        return Fraction(value.approx(40).as_fraction())
    raise ValueError(f"z3 model value {value} is not a number")


Z3_MAX_MILLIS = 2**32 - 1  # z3's largest timeout (about 50 days): "no limit"


def _millis(timeout_s: float) -> int:
    """A z3 timeout in milliseconds (``inf`` and anything above: the largest one)."""
    return int(max(1, min(timeout_s * 1000, Z3_MAX_MILLIS)))


def solve(encoding: Encoding, timeout_s: float, slack: Fraction = Fraction(0)
          ) -> tuple[str, tuple[Fraction, ...] | None]:
    """Check the encoding. Returns (status, x): status is "sat" (x the exact model
    inputs, re-checked with :func:`exact_unsafe`), "unsat", "timeout", "unknown" or
    "invalid-model" (z3 said sat but its model fails the exact re-check); x None."""
    if timeout_s <= 0:
        return "timeout", None
    solver = z3.Then("simplify", "propagate-values", "solve-eqs", "elim-uncnstr",
                     "smt").solver()
    solver.set("timeout", _millis(timeout_s))
    solver.add(*encoding.constraints)
    solver.add(encoding.unsafe(slack))
    answer = solver.check()
    if answer == z3.unsat:
        return "unsat", None
    if answer == z3.sat:
        xs = _model_inputs(solver.model(), encoding)
        if not exact_unsafe(encoding.net, encoding.case, xs, slack):
            return "invalid-model", None  # z3's model fails the exact re-check
        return "sat", xs
    why = solver.reason_unknown()
    return ("timeout" if ("timeout" in why or "canceled" in why) else "unknown"), None


def _model_inputs(model: z3.ModelRef, encoding: Encoding) -> tuple[Fraction, ...]:
    return tuple(_as_fraction(model.eval(x, model_completion=True)) for x in encoding.inputs)


def deepest_in_region(encoding: Encoding, x: Sequence[Fraction], timeout_s: float
                      ) -> tuple[Fraction, ...] | None:
    """The point of ``x``'s linear region (the ReLU phases at ``x``) that satisfies a
    disjunct (one that ``x`` satisfies) with the largest slack, capped at ``scale``.

    One exact LP (z3 Optimize): a model at a vertex where the margin is exactly zero is
    moved to where float32 rounding cannot undo it. Returns None when the LP fails or the
    best slack is zero; the point is re-checked with :func:`exact_unsafe`.
    """
    if timeout_s <= 0:
        return None
    net, case = encoding.net, encoding.case
    values = exact_layers(net, x)
    k = next((k for k, hsp in enumerate(case.unsafe)
              if _disjunct_holds(hsp, values[-1], Fraction(0))), None)
    if k is None or not encoding.disjuncts[k]:
        return None
    opt = z3.Optimize()
    opt.set("timeout", _millis(timeout_s))
    opt.add(*encoding.constraints)
    for layer_vars, layer_vals in zip(encoding.hidden, values[:-1]):
        for (z, _), v in zip(layer_vars, layer_vals):
            opt.add(z >= 0 if v >= 0 else z <= 0)
    t = z3.Real("__slack")
    opt.add(t <= _real(encoding.scale))
    opt.add(*[term <= _real(rhs) - t for term, rhs, _ in encoding.disjuncts[k]])
    opt.maximize(t)
    if opt.check() != z3.sat:
        return None
    model = opt.model()
    best = _as_fraction(model.eval(t, model_completion=True))
    point = _model_inputs(model, encoding)
    if best <= 0 or not exact_unsafe(net, case, point, best):
        return None
    return point


@dataclass
class _CaseOutcome:
    verdict: Verdict
    counterexample: Counterexample | None = None
    reason: str = ""
    witness: tuple | None = None  # z3's exact unsafe point when none was confirmed


def _decide_case(network: Network, case: SpecCase, index: int, end: float, session,
                 stats: Stats) -> _CaseOutcome:
    encoding = encode(network.net, case)
    status, x = solve(encoding, end - time.monotonic())
    if status == "unsat":
        return _CaseOutcome(Verdict.HOLDS)
    if status != "sat":
        verdict = Verdict.TIMEOUT if status == "timeout" else Verdict.UNKNOWN
        return _CaseOutcome(verdict, reason=f"z3 returned {status}")
    def confirmed(point: Sequence[Fraction]) -> Counterexample | None:
        stats.attack_points += 1
        x64 = np.array([float(v) for v in point], dtype=np.float64)
        cex = confirm(network, case, index, x64, session)
        stats.unconfirmed += cex is None
        return cex

    witness = tuple(x)  # exact: solve re-checked it with exact_unsafe
    cex = confirmed(x)
    if cex is None:
        deep = deepest_in_region(encoding, x, end - time.monotonic())
        cex = confirmed(deep) if deep is not None else None
    for rel in SLACK_LADDER:
        if cex is not None:
            break
        status, x = solve(encoding, end - time.monotonic(),
                          slack=encoding.scale * Fraction(rel))
        if status != "sat":
            break
        cex = confirmed(x)
    if cex is not None:
        return _CaseOutcome(Verdict.VIOLATED, cex)
    return _CaseOutcome(Verdict.UNKNOWN, reason=UNCONFIRMED_REASON, witness=witness)


def z3_engine(network: Network, spec: Spec, options: "VerifyOptions",
              progress: Progress | None) -> Result:
    """Decide every case of ``spec`` exactly with z3 (same contract as the bab engine)."""
    n_hidden = hidden_neurons(network.net)
    if n_hidden > MAX_HIDDEN:
        raise MismatchError(f"z3 engine is exact but only for tiny networks: {n_hidden} "
                            f"hidden neurons > {MAX_HIDDEN}; use --engine bab")
    start = time.monotonic()
    end = start + options.timeout
    session = onnx_session(network.model)
    stats = Stats()
    worst = Verdict.HOLDS
    reasons: list[str] = []
    witness: Witness | None = None
    for index, case in enumerate(spec.cases):
        outcome = _decide_case(network, case, index, end, session, stats)
        if outcome.witness is not None and witness is None:
            witness = Witness(outcome.witness, index)
        stats.boxes += 1
        stats.seconds = time.monotonic() - start
        if progress is not None:
            progress(stats, len(spec.cases) - index - 1)
        if outcome.verdict is Verdict.VIOLATED:
            return Result(Verdict.VIOLATED, outcome.counterexample, engine="z3", stats=stats)
        if outcome.verdict is not Verdict.HOLDS:
            reasons.append(f"case {index}: {outcome.reason}")
            if outcome.verdict is Verdict.TIMEOUT:
                worst = Verdict.TIMEOUT
                break
            worst = Verdict.UNKNOWN
    stats.seconds = time.monotonic() - start
    return Result(worst, None, reason="; ".join(reasons), engine="z3", stats=stats,
                  witness=witness)
