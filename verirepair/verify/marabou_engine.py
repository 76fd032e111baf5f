"""Complete verification with Marabou (maraboupy 2.0.0), an engine independent of ours.

Requires: maraboupy (``pip install maraboupy==2.0.0``; imported only when the engine runs)
and a lowered ReLU network.
Returns: HOLDS when Marabou answers UNSAT for every (case, unsafe disjunct) query,
VIOLATED only with a counterexample re-checked in onnxruntime on the original file,
UNKNOWN when Marabou's point is not confirmed (or Marabou reports an error), TIMEOUT.
Sound: not in the rounding-safe sense of bab (registered with ``sound=False``): HOLDS is
Marabou's float64 simplex proof with its absolute tolerances, and Marabou 2.0 has known
wrong-UNSAT cases (constant inputs, thin regions; :func:`encode` conditions the query
against them). VIOLATED is always confirmed by onnxruntime, so it is sound.
Complete: yes (Reluplex-style case splitting with DeepPoly bounds), up to the timeout.
Reference: Wu et al., "Marabou 2.0: A Versatile Formal Analyzer of Neural Networks",
CAV 2024.

Encoding: our own lowered :class:`AffineReluNet` through Marabou's equation API, not
``Marabou.read_onnx``: the weights are exactly the float64 values the bab and z3 engines
use (so the engines answer the same question), every operator our loader lowers (Conv,
BatchNormalization, Sub/Div normalisation, ``.onnx.gz``) works without depending on
maraboupy's ONNX parser, the input/output variable numbering is ours, and counterexamples
are still confirmed on the original file in onnxruntime, which checks the lowering too.
The query is built as plain data (:class:`MarabouQuery`) and only turned into a
``MarabouCore.InputQuery`` by :func:`solve`.

Disjunctions: the unsafe set of a case is a union of disjuncts (conjunctions of rows
``matrix @ y <= rhs``); each disjunct is one query (its rows, folded through the output
layer, are ``<=`` equations on the last hidden layer), and the case holds iff every query
is UNSAT; a disjunct without rows is unsafe on the whole box. Timeouts: one deadline
for the whole spec; every query runs in a forked process that gets the time left and is
killed when it is over (Marabou's own timeout takes whole seconds and starts after its
preprocessing, so it alone would overrun).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from verirepair.net_types import AffineReluNet
from verirepair.network import Network, onnx_session
from verirepair.spec_types import Spec, SpecCase
from verirepair.verify.confirm import confirm
from verirepair.verify.types import Counterexample, Result, Stats, Verdict

if TYPE_CHECKING:  # engine.py imports this module; avoid the cycle at run time
    from verirepair.verify.engine import VerifyOptions

log = logging.getLogger(__name__)

MODULE = "maraboupy.MarabouCore"
INSTALL_HINT = "pip install maraboupy==2.0.0"

# When Marabou's point is not confirmed in float32 onnxruntime (typically a point where
# the margin is zero up to Marabou's tolerance), ask again with every row tightened by
# these slacks, relative to the scale of the spec; stop at the first slack that is unsat.
SLACK_LADDER = (1e-7, 1e-5, 1e-3)

UNCONFIRMED_REASON = ("Marabou found a counterexample that float32 onnxruntime does not "
                      "confirm")

Progress = Callable[[Stats, int], None]

# The Marabou process is killed this long after the deadline if it has not answered.
KILL_GRACE_S = 0.2

STATUS = {"sat": "sat", "unsat": "unsat", "TIMEOUT": "timeout"}  # anything else: unknown


@dataclass(frozen=True)
class MarabouSettings:
    """Marabou's own knobs: ``workers`` > 1 switches on split-and-conquer mode."""

    workers: int = 1
    verbosity: int = 0


@dataclass(frozen=True)
class LinearRow:
    """``sum(coef * var) (== or <=) scalar``; ``kind`` is "eq" or "le"."""

    terms: tuple[tuple[int, float], ...]
    scalar: float
    kind: str


@dataclass(frozen=True)
class MarabouQuery:
    """One Marabou query as plain data: input bounds, equations and ReLU pairs.

    Variables ``0..n-1`` are the free inputs (``x[free] = scale * value``, the other
    inputs are fixed at ``fixed``); then per hidden layer the pre- and post-activations
    of its non-constant neurons. ``feasible`` is False when a constant row of the
    disjunct already fails (no Marabou call needed); a query without variables is decided
    by ``feasible`` alone (the whole network is constant on the box).
    """

    n_vars: int
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    rows: tuple[LinearRow, ...]
    relus: tuple[tuple[int, int], ...]
    free: tuple[int, ...]
    scale: tuple[float, ...]
    fixed: tuple[float, ...]  # every input; the free ones hold the box centre
    feasible: bool = True

    def input_point(self, values: dict[int, float]) -> np.ndarray:
        """The network input (float64) of a Marabou solution ``values`` (var -> value)."""
        x = np.array(self.fixed, dtype=np.float64)
        for var, index in enumerate(self.free):
            x[index] = self.scale[var] * values[var]
        return x


@dataclass(frozen=True)
class Answer:
    """Marabou's answer to one query: status sat/unsat/timeout/unknown, the input point
    (float64) when sat, and Marabou's own words (exit code, captured output)."""

    status: str
    x: np.ndarray | None = None
    detail: str = ""


def available() -> bool:
    """Whether maraboupy's C++ core can be imported here."""
    try:
        _core()
    except (ImportError, OSError):
        return False
    return True


def _core():
    import importlib

    return importlib.import_module(MODULE)


def power_of_two(width: np.ndarray) -> np.ndarray:
    """The unit of a variable whose interval width is ``width``: the power of two nearest
    to it when it is below 1, else 1 (and 1 where the width is 0).

    Scaling a variable by a power of two is exact in binary floating point, and ReLU
    commutes with positive scaling, so a scaled query is the same question. Only thin
    variables are blown up: scaling wide ones down (interval widths of deep layers are
    loose) made Marabou's absolute tolerances coarse and gave wrong SAT points on ACAS Xu.
    """
    w = np.asarray(width, dtype=np.float64)
    exponent = np.round(np.log2(np.where(w > 0, w, 1.0)))
    return np.exp2(np.clip(exponent, -500, 0))


@dataclass
class _Layer:
    """The current layer's values while :func:`encode` runs: the free values (index into
    the layer, Marabou variable, scale, interval range) and the constants of the others."""

    free: np.ndarray  # indices of the non-constant values
    variables: list[int]
    scale: np.ndarray
    lower: np.ndarray  # interval bounds of the free values (true units)
    upper: np.ndarray
    constant: np.ndarray  # every value of the layer; meaningful where not free


def _affine(layer: _Layer, weight: np.ndarray, bias: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``weight @ h + bias`` over the free values: (weight on the SCALED free values,
    bias with the constants folded in, interval lower, interval upper) in true units."""
    fixed = np.ones(weight.shape[1], dtype=bool)
    fixed[layer.free] = False
    folded = bias + weight[:, fixed] @ layer.constant[fixed]
    w = weight[:, layer.free]
    pos, neg = np.maximum(w, 0.0), np.minimum(w, 0.0)
    lo = folded + pos @ layer.lower + neg @ layer.upper
    hi = folded + pos @ layer.upper + neg @ layer.lower
    return w * layer.scale, folded, lo, hi


def _hidden_layer(layer: _Layer, weight: np.ndarray, bias: np.ndarray, next_var: int,
                  rows: list[LinearRow], relus: list[tuple[int, int]]) -> tuple[_Layer, int]:
    """Add one hidden layer's equations and ReLUs; returns its values and the next free
    variable number. Neurons without free inputs, or dead on the box (interval upper
    bound <= 0), become constants."""
    w, folded, lo, hi = _affine(layer, weight, bias)
    constant = np.maximum(folded, 0.0)
    live = np.flatnonzero(np.any(w != 0.0, axis=1) & (hi > 0.0))
    constant[hi <= 0.0] = 0.0
    scale = power_of_two(hi[live] - lo[live])
    pre = list(range(next_var, next_var + live.size))
    post = list(range(next_var + live.size, next_var + 2 * live.size))
    for k, j in enumerate(live):
        terms = [(pre[k], 1.0)] + [(var, -float(c) / scale[k]) for var, c
                                   in zip(layer.variables, w[j]) if c != 0.0]
        rows.append(LinearRow(tuple(terms), float(folded[j]) / scale[k], "eq"))
    relus += list(zip(pre, post))
    out = _Layer(live, post, scale, np.maximum(lo[live], 0.0), np.maximum(hi[live], 0.0),
                 constant)
    return out, next_var + 2 * live.size


def _spec_rows(layer: _Layer, weight: np.ndarray, bias: np.ndarray, matrix: np.ndarray,
               rhs: np.ndarray) -> tuple[list[LinearRow], bool]:
    """The rows ``matrix @ (weight @ h + bias) <= rhs`` on the last hidden layer's free
    values, each thin one scaled by a power of two to an interval width near 1. Returns
    (rows, feasible): rows without free values are checked here and dropped."""
    w, folded, _, _ = _affine(layer, weight, bias)
    coef = matrix @ w  # the output layer folded into the spec rows
    right = rhs - matrix @ folded
    width = np.abs(coef) @ ((layer.upper - layer.lower) / layer.scale)
    rows, feasible = [], True
    row_scale = power_of_two(width)
    for r in range(coef.shape[0]):
        terms = tuple((var, float(c) / row_scale[r]) for var, c
                      in zip(layer.variables, coef[r]) if c != 0.0)
        if not terms:
            feasible = feasible and 0.0 <= right[r]
            continue
        rows.append(LinearRow(terms, float(right[r]) / row_scale[r], "le"))
    return rows, feasible


def spec_scale(case: SpecCase) -> float:
    """1 + the largest |rhs| of the case: the unit of the slack ladder."""
    sizes = [float(np.max(np.abs(hs.rhs))) for hs in case.unsafe if np.size(hs.rhs)]
    return 1.0 + max(sizes, default=0.0)


def encode(net: AffineReluNet, case: SpecCase, disjunct: int, slack: float = 0.0
           ) -> MarabouQuery:
    """The query ``exists x in box: f(x) satisfies disjunct (rows <= rhs - slack)``.

    Requires a box of ``net.n_inputs`` bounds. Conditioning (Marabou 2.0's preprocessor
    treats variables whose bounds are closer than 1e-5 as fixed, which made it answer a
    wrong UNSAT on thin regions, and constant inputs are a known false-UNSAT case
    upstream): fixed inputs, constant neurons and neurons dead on the box (interval
    arithmetic) are folded into the biases; every variable (and spec row) whose interval
    width is below 1 is scaled by the power of two nearest that width; the output layer
    is folded into the spec rows.
    All of this is exact except for the float64 rounding of the folded products.
    Returns plain data; satisfiable exactly when the disjunct is reachable from the box.
    """
    n_in = net.n_inputs
    lower = np.asarray(case.box.lower, dtype=np.float64).reshape(-1)
    upper = np.asarray(case.box.upper, dtype=np.float64).reshape(-1)
    if lower.shape != (n_in,) or upper.shape != (n_in,):
        raise ValueError(f"box has {lower.shape} bounds but the network has {n_in} inputs")
    free = np.flatnonzero(upper > lower)
    scale = power_of_two(upper[free] - lower[free])
    centre = np.where(upper > lower, (lower + upper) / 2, lower)
    layer = _Layer(free, list(range(free.size)), scale, lower[free], upper[free], centre)
    rows: list[LinearRow] = []
    relus: list[tuple[int, int]] = []
    next_var = free.size
    for affine in net.layers[:-1]:
        layer, next_var = _hidden_layer(layer, np.asarray(affine.weight),
                                        np.asarray(affine.bias), next_var, rows, relus)
    hs = case.unsafe[disjunct]
    last = net.layers[-1]
    matrix = np.asarray(hs.matrix, dtype=np.float64).reshape(-1, last.n_out)
    rhs = np.asarray(hs.rhs, dtype=np.float64).reshape(-1) - slack
    spec_rows, feasible = _spec_rows(layer, np.asarray(last.weight),
                                     np.asarray(last.bias), matrix, rhs)
    return MarabouQuery(next_var, tuple((lower[free] / scale).tolist()),
                        tuple((upper[free] / scale).tolist()), tuple(rows + spec_rows),
                        tuple(relus), tuple(free.tolist()), tuple(scale.tolist()),
                        tuple(centre.tolist()), feasible)


def _input_query(core, query: MarabouQuery):
    """A ``MarabouCore.InputQuery`` holding ``query``."""
    ipq = core.InputQuery()
    ipq.setNumberOfVariables(query.n_vars)
    for var, (lo, hi) in enumerate(zip(query.lower, query.upper)):
        ipq.setLowerBound(var, lo)
        ipq.setUpperBound(var, hi)
        ipq.markInputVariable(var, var)
    kinds = {"eq": core.Equation.EQ, "le": core.Equation.LE}
    for row in query.rows:
        equation = core.Equation(kinds[row.kind])
        for var, coef in row.terms:
            equation.addAddend(coef, var)
        equation.setScalar(row.scalar)
        ipq.addEquation(equation)
    for b, f in query.relus:
        core.addReluConstraint(ipq, b, f)
    return ipq


def _options(core, settings: MarabouSettings, seconds: int):
    options = core.Options()
    options._verbosity = settings.verbosity
    options._timeoutInSeconds = seconds
    options._numWorkers = max(1, settings.workers)
    options._snc = settings.workers > 1
    return options


@contextlib.contextmanager
def captured_output() -> Iterator[Callable[[], str]]:
    """Send file descriptors 1 and 2 (C++ ``printf``/``std::cout``) to a temporary file
    while the block runs; yields a function that returns what was written."""
    libc = ctypes.CDLL(None)
    text = ""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = (os.dup(1), os.dup(2))
        libc.fflush(None)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: text
        finally:
            libc.fflush(None)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
    if text.strip():
        log.debug("marabou output: %s", text.strip())


def _run_marabou(query: MarabouQuery, seconds: float, settings: MarabouSettings) -> Answer:
    """Solve ``query`` in this process with Marabou's own (whole-second) timeout."""
    core = _core()
    ipq = _input_query(core, query)
    # Marabou takes whole seconds, 0 = no limit (an infinite time limit)
    options = _options(core, settings, max(1, math.ceil(seconds)) if math.isfinite(seconds)
                       else 0)
    with captured_output() as output:
        code, values, stats = core.solve(ipq, options, "")
    status = STATUS.get(code, "unknown")
    if status != "timeout" and stats.hasTimedOut():
        status = "timeout"
    detail = f"Marabou exit code {code}"
    words = output().strip().splitlines()
    if status == "unknown" and words:
        detail += f": {words[-1]}"
    if status != "sat":
        return Answer(status, detail=detail)
    return Answer(status, x=query.input_point(values), detail=detail)


def _child(conn, query: MarabouQuery, seconds: float, settings: MarabouSettings) -> None:
    """Body of the Marabou process: solve and send the Answer back."""
    try:
        answer = _run_marabou(query, seconds, settings)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as unknown
        answer = Answer("unknown", detail=f"maraboupy failed: {type(exc).__name__}: {exc}")
    conn.send(answer)
    conn.close()


def solve(query: MarabouQuery, seconds: float, settings: MarabouSettings = MarabouSettings()
          ) -> Answer:
    """Run Marabou on ``query`` for at most ``seconds``.

    Requires maraboupy. Marabou runs in a forked child process: its output never reaches
    our stdout, a crash in its C++ code becomes an UNKNOWN answer, and the child is
    killed at the deadline (Marabou's own timeout starts only after its preprocessing,
    and takes whole seconds). Returns an :class:`Answer`; ``x`` is Marabou's input point
    (not yet re-checked anywhere) when the status is "sat".
    """
    if not query.feasible:
        return Answer("unsat", detail="a row of the disjunct is constant and fails")
    if not any(row.kind == "le" for row in query.rows):  # unsafe on the whole box
        return Answer("sat", x=np.array(query.fixed), detail="no row depends on the input")
    if seconds <= 0:
        return Answer("timeout")
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, query, seconds, settings),
                              daemon=True)
    process.start()
    send.close()
    try:
        if not receive.poll(seconds + KILL_GRACE_S if math.isfinite(seconds) else None):
            return Answer("timeout", detail="Marabou stopped at the deadline")
        return receive.recv()
    except EOFError:
        process.join(timeout=1.0)
        return Answer("unknown", detail=f"the Marabou process died (exit code "
                                        f"{process.exitcode})")
    finally:
        receive.close()
        if process.is_alive():
            process.kill()
        process.join()


@dataclass
class _Search:
    """What one engine run needs besides the query: the deadline and the re-check."""

    network: Network
    session: object
    end: float
    settings: MarabouSettings
    stats: Stats

    def left(self) -> float:
        return self.end - time.monotonic()

    def confirmed(self, case: SpecCase, index: int, x: np.ndarray) -> Counterexample | None:
        self.stats.attack_points += 1
        cex = confirm(self.network, case, index, x, self.session)
        self.stats.unconfirmed += cex is None
        return cex


@dataclass(frozen=True)
class _Outcome:
    verdict: Verdict
    counterexample: Counterexample | None = None
    reason: str = ""


def _decide_disjunct(search: _Search, case: SpecCase, index: int, disjunct: int
                     ) -> _Outcome:
    """HOLDS when the disjunct is unreachable from the case's box, VIOLATED with a
    confirmed counterexample, else UNKNOWN/TIMEOUT with a reason."""
    net = search.network.net
    answer = solve(encode(net, case, disjunct), search.left(), search.settings)
    search.stats.boxes += 1
    if answer.status == "unsat":
        return _Outcome(Verdict.HOLDS)
    if answer.status == "timeout":
        return _Outcome(Verdict.TIMEOUT, reason="Marabou timed out")
    if answer.status != "sat":
        return _Outcome(Verdict.UNKNOWN, reason=answer.detail)
    cex = search.confirmed(case, index, answer.x)
    scale = spec_scale(case)
    for rel in SLACK_LADDER:
        if cex is not None:
            break
        answer = solve(encode(net, case, disjunct, slack=scale * rel), search.left(),
                       search.settings)
        search.stats.boxes += 1
        if answer.status != "sat":
            break
        cex = search.confirmed(case, index, answer.x)
    if cex is not None:
        return _Outcome(Verdict.VIOLATED, cex)
    if answer.status == "timeout":
        return _Outcome(Verdict.TIMEOUT, reason=f"{UNCONFIRMED_REASON}; then timed out")
    return _Outcome(Verdict.UNKNOWN, reason=UNCONFIRMED_REASON)


def marabou_engine(network: Network, spec: Spec, options: "VerifyOptions",
                   progress: Progress | None) -> Result:
    """Decide every (case, disjunct) of ``spec`` with Marabou (same contract as bab)."""
    start = time.monotonic()
    search = _Search(network, onnx_session(network.model), start + options.timeout,
                     options.marabou, Stats())
    queries = [(i, k) for i, case in enumerate(spec.cases) for k in range(len(case.unsafe))]
    worst = Verdict.HOLDS
    reasons: list[str] = []
    for done, (index, disjunct) in enumerate(queries, start=1):
        outcome = _decide_disjunct(search, spec.cases[index], index, disjunct)
        search.stats.seconds = time.monotonic() - start
        if progress is not None:
            progress(search.stats, len(queries) - done)
        if outcome.verdict is Verdict.VIOLATED:
            return Result(Verdict.VIOLATED, outcome.counterexample, engine="marabou",
                          stats=search.stats)
        if outcome.verdict is not Verdict.HOLDS:
            reasons.append(f"case {index} disjunct {disjunct}: {outcome.reason}")
            if outcome.verdict is Verdict.TIMEOUT:
                worst = Verdict.TIMEOUT
                break
            worst = Verdict.UNKNOWN
    search.stats.seconds = time.monotonic() - start
    return Result(worst, None, reason="; ".join(reasons), engine="marabou",
                  stats=search.stats)
