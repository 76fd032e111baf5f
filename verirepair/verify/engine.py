"""``verify(network, spec, options) -> Result``: the one entry point for every engine.

Checks that the spec fits the model, runs the chosen engine over every case of the spec
(one deadline for all), and combines the case results: VIOLATED as soon as one case is
violated (with an onnxruntime-confirmed counterexample), HOLDS only if every case holds.
Engines register in ``ENGINES`` by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from verirepair.errors import MismatchError
from verirepair.network import Network, onnx_session, torch_layers
from verirepair.spec_types import Spec
from verirepair.verify.bab import BabOptions, Deadline, Progress, verify_case
from verirepair.verify.types import Result, Stats, Verdict
from verirepair.verify.z3_engine import z3_engine


@dataclass(frozen=True)
class VerifyOptions:
    timeout: float = 300.0
    engine: str = "bab"
    bab: BabOptions = field(default_factory=BabOptions)


CaseEngine = Callable[..., Result]


def _bab_engine(network: Network, spec: Spec, options: VerifyOptions,
                progress: Progress | None) -> Result:
    deadline = Deadline.after(options.timeout)
    layers = torch_layers(network.net)
    session = onnx_session(network.model)
    total = Stats()
    worst = Verdict.HOLDS
    reasons: list[str] = []
    for index, case in enumerate(spec.cases):
        result = verify_case(network, layers, case, index, deadline, options.bab, progress,
                             session)
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


def _accumulate(total: Stats, part: Stats) -> None:
    total.boxes += part.boxes
    total.bound_calls += part.bound_calls
    total.attack_points += part.attack_points
    total.max_queue = max(total.max_queue, part.max_queue)
    total.unconfirmed += part.unconfirmed


ENGINES: dict[str, Callable[[Network, Spec, VerifyOptions, Progress | None], Result]] = {
    "bab": _bab_engine,
    "z3": z3_engine,
}


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
    """Decide whether ``network`` satisfies ``spec`` (whose unsafe set must be empty)."""
    check_compatible(network, spec)
    engine = ENGINES.get(options.engine)
    if engine is None:
        raise MismatchError(f"unknown engine '{options.engine}' (available: "
                            f"{', '.join(sorted(ENGINES))})")
    return engine(network, spec, options, progress)
