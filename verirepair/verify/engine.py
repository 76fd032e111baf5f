"""``verify(network, spec, options) -> Result``: the one entry point for every engine.

Checks that the spec fits the model, runs the chosen engine over every case of the spec
(one deadline for all; ``bab`` first tries its cheap attack on every case of a
multi-case spec, so a case that is hard to prove cannot hide an easy counterexample in a
later one), and combines the case results: VIOLATED as soon as one case is
violated (with an onnxruntime-confirmed counterexample), HOLDS only if every case holds.
Engines register in ``ENGINES`` by name as :class:`EngineInfo` (soundness, completeness,
whether the package it needs imports here, and how to install it).
:func:`cross_check` runs a second engine on the same question and :func:`agreement`
compares two verdicts: a HOLDS against a VIOLATED is a bug in one of the engines.
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

from verirepair.errors import MismatchError, VerirepairError
from verirepair.network import Network, check_lowering_on_boxes, onnx_session, torch_layers
from verirepair.spec_types import Spec
from verirepair.verify import marabou_engine
from verirepair.verify.bab import (BabOptions, Deadline, Progress, attack_case,
                                   verify_case)
from verirepair.verify.marabou_engine import MarabouSettings
from verirepair.verify.types import Result, Stats, Verdict
from verirepair.verify.z3_engine import MAX_HIDDEN, hidden_neurons, z3_engine


@dataclass(frozen=True)
class VerifyOptions:
    timeout: float = 300.0
    engine: str = "bab"
    bab: BabOptions = field(default_factory=BabOptions)
    marabou: MarabouSettings = field(default_factory=MarabouSettings)


class EngineUnavailableError(VerirepairError):
    """The chosen engine's package is not installed (the message says how to install it)."""


CaseEngine = Callable[..., Result]


def _bab_engine(network: Network, spec: Spec, options: VerifyOptions,
                progress: Progress | None) -> Result:
    deadline = Deadline.after(options.timeout)
    layers = torch_layers(network.net)
    session = onnx_session(network.model)
    total = Stats()
    attacked = len(spec.cases) > 1
    if attacked:
        found = _attack_every_case(network, layers, spec, deadline, options.bab, session,
                                   total)
        if found is not None:
            return found
    worst = Verdict.HOLDS
    reasons: list[str] = []
    for index, case in enumerate(spec.cases):
        result = verify_case(network, layers, case, index, deadline, options.bab, progress,
                             session, initial_attack=not attacked)
        _accumulate(total, result.stats)
        if result.verdict is Verdict.VIOLATED:
            total.seconds = deadline.elapsed()
            return Result(Verdict.VIOLATED, result.counterexample, engine="bab", stats=total)
        if result.verdict is not Verdict.HOLDS:
            worst = Verdict.TIMEOUT if result.verdict is Verdict.TIMEOUT else worst
            if worst is Verdict.HOLDS:
                worst = Verdict.UNKNOWN
            reasons.append(f"case {index}: {result.reason}")
            if result.verdict is Verdict.TIMEOUT:
                break
    total.seconds = deadline.elapsed()
    return Result(worst, None, reason="; ".join(reasons), engine="bab", stats=total)


def _attack_every_case(network: Network, layers, spec: Spec, deadline: Deadline,
                       options: BabOptions, session, total: Stats) -> Result | None:
    """The cheap opening attack on every case before branch and bound proves any: with
    one deadline for all cases, a case that is hard to prove must not hide an easy
    counterexample in a later one. VIOLATED (stats so far), or None."""
    for index, case in enumerate(spec.cases):
        if deadline.expired():
            return None
        result = attack_case(network, layers, case, index, deadline, options, session)
        _accumulate(total, result.stats)
        if result.verdict is Verdict.VIOLATED:
            total.seconds = deadline.elapsed()
            return Result(Verdict.VIOLATED, result.counterexample, engine="bab", stats=total)
    return None


def _accumulate(total: Stats, part: Stats) -> None:
    total.boxes += part.boxes
    total.bound_calls += part.bound_calls
    total.attack_points += part.attack_points
    total.max_queue = max(total.max_queue, part.max_queue)
    total.unconfirmed += part.unconfirmed
    total.split = total.split or part.split


EngineRun = Callable[[Network, Spec, VerifyOptions, "Progress | None"], Result]


def _z3_fits(network: Network) -> None:
    """Raise MismatchError when the network is too large for the z3 engine."""
    n_hidden = hidden_neurons(network.net)
    if n_hidden > MAX_HIDDEN:
        raise MismatchError(f"z3 engine is exact but only for tiny networks: {n_hidden} "
                            f"hidden neurons > {MAX_HIDDEN}; use --engine bab")


def _fits_any(network: Network) -> None:
    """Every lowered network is accepted."""


def _imports(module: str) -> Callable[[], bool]:
    """An availability test: whether ``module`` can be imported here."""
    def available() -> bool:
        try:
            importlib.import_module(module)
        except (ImportError, OSError):
            return False
        return True
    return available


@dataclass(frozen=True)
class EngineInfo:
    """A registered engine: how to run it and what its answers are worth.

    ``run(network, spec, options, progress) -> Result``; ``sound``: HOLDS is a proof and
    VIOLATED is confirmed in onnxruntime; ``complete``: it decides every instance given
    enough time; ``available()`` tells whether its package imports here, else
    ``install_hint`` says how to get it; ``fits(network)`` raises MismatchError for a
    network the engine refuses.
    """

    name: str
    run: EngineRun
    sound: bool
    complete: bool
    available: Callable[[], bool]
    install_hint: str
    summary: str
    fits: Callable[[Network], None] = _fits_any

    def describe(self, probe: bool = True) -> str:
        """One line: name, summary, sound/complete, and availability (imports the
        engine's package when ``probe``; otherwise only says how to install it)."""
        if not probe:
            state = f"needs: {self.install_hint}" if self.install_hint else "built in"
        elif self.available():
            state = "installed"
        else:
            state = f"not installed: {self.install_hint}"
        return (f"{self.name}: {self.summary} (sound: {'yes' if self.sound else 'no'}, "
                f"complete: {'yes' if self.complete else 'no'}; {state})")


ENGINES: Mapping[str, EngineInfo] = MappingProxyType({
    "bab": EngineInfo(
        "bab", _bab_engine, sound=True, complete=True, available=lambda: True,
        install_hint="", summary="falsification + bounds + branch and bound (input splitting for "
                "few inputs, ReLU splitting with beta-CROWN bounds for many)"),
    "marabou": EngineInfo(
        "marabou", marabou_engine.marabou_engine, sound=False, complete=True,
        available=marabou_engine.available, install_hint=marabou_engine.INSTALL_HINT,
        summary="Marabou 2.0 (float64 simplex + ReLU splitting), one query per disjunct"),
    "z3": EngineInfo(
        "z3", z3_engine, sound=True, complete=True, available=_imports("z3"),
        install_hint="pip install z3-solver", summary="exact real arithmetic, tiny networks",
        fits=_z3_fits),
})


def engine_info(name: str) -> EngineInfo:
    """The registered engine ``name``. Raises MismatchError for an unknown name and
    EngineUnavailableError (with the install hint) when its package does not import."""
    info = ENGINES.get(name)
    if info is None:
        raise MismatchError(f"unknown engine '{name}' (available: "
                            f"{', '.join(sorted(ENGINES))})")
    if not info.available():
        raise EngineUnavailableError(f"engine '{name}' is not available: its package is "
                                     f"not installed (install it with: {info.install_hint})")
    return info


def available_engines() -> list[str]:
    """Names of the engines whose packages import here, sorted."""
    return sorted(name for name, info in ENGINES.items() if info.available())


def check_compatible(network: Network, spec: Spec) -> None:
    """Raise MismatchError when the spec's variables do not fit the model."""
    if spec.n_inputs != network.n_inputs:
        raise MismatchError(f"{spec.source} declares {spec.n_inputs} inputs (X_*) but "
                            f"{network.source} has {network.n_inputs} inputs")
    if spec.n_outputs != network.n_outputs:
        raise MismatchError(f"{spec.source} declares {spec.n_outputs} outputs (Y_*) but "
                            f"{network.source} has {network.n_outputs} outputs")


def verify(network: Network, spec: Spec, options: VerifyOptions = VerifyOptions(),
           progress: Progress | None = None) -> Result:
    """Decide whether ``network`` satisfies ``spec`` (whose unsafe set must be empty).
    Raises ModelError when the lowered network and onnxruntime differ on the spec's input
    boxes (the verdict would be about another function)."""
    check_compatible(network, spec)
    check_lowering_on_boxes(network, [(c.box.lower, c.box.upper) for c in spec.cases])
    info = engine_info(options.engine)
    info.fits(network)
    return info.run(network, spec, options, progress)


def cross_check(network: Network, spec: Spec, engine_name: str, timeout: float,
                progress: Progress | None = None, bab: BabOptions = BabOptions()) -> Result:
    """Decide ``spec`` again with the engine ``engine_name`` (its own ``timeout`` seconds;
    ``bab`` holds the branch-and-bound settings when that engine is bab).

    Requires a network and spec that fit (MismatchError otherwise) and an available
    engine (EngineUnavailableError otherwise). Returns that engine's Result; compare it
    with the first one with :func:`agreement`.
    """
    return verify(network, spec, VerifyOptions(timeout=timeout, engine=engine_name, bab=bab),
                  progress)


class Agreement(enum.Enum):
    AGREE = "agree"  # both decided, the same way
    DISAGREE = "disagree"  # one says holds, the other violated: a bug in an engine
    INCONCLUSIVE = "inconclusive"  # at least one said unknown/timeout


DECIDED = (Verdict.HOLDS, Verdict.VIOLATED)


def agreement(first: Result, second: Result) -> Agreement:
    """Compare two engines' verdicts on the same network and spec. A 'holds' against an
    exact real-arithmetic witness (z3's UNKNOWN with ``witness``) is a contradiction."""
    for a, b in ((first, second), (second, first)):
        if a.verdict is Verdict.HOLDS and b.witness is not None:
            return Agreement.DISAGREE
    if first.verdict not in DECIDED or second.verdict not in DECIDED:
        return Agreement.INCONCLUSIVE
    return Agreement.AGREE if first.verdict is second.verdict else Agreement.DISAGREE
