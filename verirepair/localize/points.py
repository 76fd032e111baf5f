"""Counterexample and benign inputs for localisation: sampling first, the verifier second.

Uniform samples of every input box are split by the violation measure (>= 0: inside the
unsafe set, evaluated on the exact float64 lowering). When no sample violates, the
verifier decides: HOLDS means nothing to localize; a confirmed counterexample is kept and
more are sampled in a small box around it (1 % of the box width per side), since an
average over one input is a poor estimate of CARE's expectation; the same is done around
each sampled counterexample when sampling finds fewer than ``FEW``. When the whole input box
is unsafe (no benign sample), benign inputs are sampled from the box grown about its
centre by ``GROWTH`` factors in turn (outputs outside the unsafe set there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from verirepair.localize.measure import assign_cases, violation_measure
from verirepair.network import Network, onnx_session
from verirepair.spec_types import Spec
from verirepair.verify.confirm import confirm
from verirepair.verify.engine import VerifyOptions, verify
from verirepair.verify.problem import case_tensors
from verirepair.verify.types import Counterexample, Verdict

NEIGHBOURHOOD = 0.01  # half-width of the box sampled around a verifier counterexample
GROWTH = (3.0, 10.0)  # box scale factors tried for benign inputs when the box has none
FEW = 32  # fewer sampled counterexamples than this: sample around each of them as well
CONFIRM_TRIES = 8  # sampled counterexamples tried in onnxruntime before saying "violated"


@dataclass(frozen=True)
class Points:
    """Inputs for :func:`localize`; ``verdict`` is None when sampling found violations."""

    cex: np.ndarray  # (N, n_in)
    benign: np.ndarray  # (M, n_in)
    source: str  # "sampling", "verifier" or "none"
    verdict: Verdict | None = None
    reason: str = ""
    benign_growth: float = 1.0  # > 1: benign inputs come from the box grown this much


def measure_points(network: Network, spec: Spec, case: int, x: np.ndarray) -> np.ndarray:
    """Violation measure (N,) of points ``x`` against case ``case`` of ``spec``."""
    ct = case_tensors(spec.cases[case], spec.n_outputs)
    with torch.no_grad():
        y = torch.as_tensor(network.net.forward(x))
        return violation_measure(y, ct).numpy()


def uniform(rng: np.random.Generator, lower: np.ndarray, upper: np.ndarray,
            n: int) -> np.ndarray:
    return lower + (upper - lower) * rng.random((n, lower.shape[0]))


def sample_split(network: Network, spec: Spec, n_per_case: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(counterexamples, benign) among ``n_per_case`` uniform samples of every case box."""
    cex, benign = [], []
    for index, case in enumerate(spec.cases):
        x = uniform(rng, case.box.lower, case.box.upper, n_per_case)
        bad = measure_points(network, spec, index, x) >= 0.0
        cex.append(x[bad])
        benign.append(x[~bad])
    return np.concatenate(cex), np.concatenate(benign)


def grown_benign(network: Network, spec: Spec, n_per_case: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, float]:
    """Benign inputs from the case boxes grown about their centres; (inputs, factor).

    Returns no inputs and factor 1 when even the largest growth has no benign sample.
    """
    for factor in GROWTH:
        found = []
        for index, case in enumerate(spec.cases):
            centre = (case.box.upper + case.box.lower) / 2
            half = (case.box.upper - case.box.lower) / 2
            x = uniform(rng, centre - factor * half, centre + factor * half, n_per_case)
            found.append(x[measure_points(network, spec, index, x) < 0.0])
        benign = np.concatenate(found)
        if benign.shape[0]:
            return benign, factor
    return benign, 1.0


def around(network: Network, spec: Spec, case: int, x0: np.ndarray, n: int,
           rng: np.random.Generator) -> np.ndarray:
    """``x0`` and the violating points among ``n`` samples of a small box around it."""
    box = spec.cases[case].box
    half = NEIGHBOURHOOD * (box.upper - box.lower)
    lower = np.maximum(box.lower, x0 - half)
    upper = np.minimum(box.upper, x0 + half)
    x = uniform(rng, lower, upper, n)
    return np.concatenate([x0[None], x[measure_points(network, spec, case, x) >= 0.0]])


def densify(network: Network, spec: Spec, cex: np.ndarray, n_samples: int,
            rng: np.random.Generator) -> np.ndarray:
    """A few counterexamples and the violating points of small boxes around each."""
    cases = assign_cases(cex, spec)
    per = max(1, n_samples // cex.shape[0])
    return np.concatenate([around(network, spec, int(c), x0, per, rng)
                           for x0, c in zip(cex, cases)])


def confirmed_sample(network: Network, spec: Spec, cex: np.ndarray,
                     tries: int = CONFIRM_TRIES) -> Counterexample | None:
    """A counterexample confirmed in onnxruntime on the original file among the ``tries``
    sampled inputs that violate most (sampling measures the float64 lowering only), or
    None."""
    if not cex.shape[0]:
        return None
    cases = assign_cases(cex, spec)
    measure = np.empty(cex.shape[0])
    for c in np.unique(cases):
        measure[cases == c] = measure_points(network, spec, int(c), cex[cases == c])
    session = onnx_session(network.model)
    for i in np.argsort(-measure, kind="stable")[:tries]:
        found = confirm(network, spec.cases[int(cases[i])], int(cases[i]), cex[i], session)
        if found is not None:
            return found
    return None


def find_points(network: Network, spec: Spec, n_samples: int, seed: int,
                timeout: float) -> Points:
    """Counterexamples and benign inputs of ``spec`` on ``network``.

    Returns ``source="none"`` with the verifier's verdict (HOLDS, UNKNOWN, TIMEOUT) when
    there is no counterexample to localize.
    """
    rng = np.random.default_rng(seed)
    cex, benign = sample_split(network, spec, n_samples, rng)
    if 0 < cex.shape[0] < FEW:
        cex = densify(network, spec, cex, n_samples, rng)
    if cex.shape[0] and not benign.shape[0]:
        benign, factor = grown_benign(network, spec, n_samples, rng)
        return Points(cex=cex, benign=benign, source="sampling", benign_growth=factor)
    if cex.shape[0]:
        return Points(cex=cex, benign=benign, source="sampling")
    result = verify(network, spec, VerifyOptions(timeout=timeout))
    found = result.counterexample
    if result.verdict is not Verdict.VIOLATED or found is None:
        return Points(cex=cex, benign=benign, source="none", verdict=result.verdict,
                      reason=result.reason)
    x0 = np.asarray(found.x, dtype=np.float64)
    cex = around(network, spec, found.case_index, x0, n_samples, rng)
    return Points(cex=cex, benign=benign, source="verifier", verdict=result.verdict)
