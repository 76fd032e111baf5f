"""Counterexample confirmation in onnxruntime on the ORIGINAL model file.

A candidate found in float64 becomes a ``Counterexample`` only if its float32 version lies
inside the case's box and the onnxruntime output satisfies every row of some disjunct.
Anything else is not a violation (the caller keeps searching or reports unknown).
"""

from __future__ import annotations

import numpy as np

from verirepair.network import Network, run_onnxruntime
from verirepair.spec_types import Box, SpecCase
from verirepair.verify.types import Counterexample


def float32_inside(x: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                   strict_lower: np.ndarray | None = None,
                   strict_upper: np.ndarray | None = None) -> np.ndarray | None:
    """float32 values near ``x`` inside [lower, upper] (float64 comparison; strictly
    inside where a bound is strict), or None."""
    box = Box(lower, upper, strict_lower, strict_upper)
    with np.errstate(over="ignore"):  # beyond float32: +-inf, outside the box, stepped in
        x32 = np.clip(np.asarray(x, dtype=np.float64), lower, upper).astype(np.float32)
        for _ in range(4):
            low, high = box.outside(x32)
            if not (low.any() or high.any()):
                return x32
            x32 = np.where(low, np.nextafter(x32, np.float32(np.inf)), x32)
            x32 = np.where(high, np.nextafter(x32, np.float32(-np.inf)), x32)
    return None


def satisfied_disjunct(case: SpecCase, y: np.ndarray) -> int | None:
    """Index of the first unsafe disjunct that ``y`` satisfies, or None."""
    y64 = np.asarray(y, dtype=np.float64).reshape(-1)
    for k, hs in enumerate(case.unsafe):
        if hs.satisfied_by(y64):
            return k
    return None


def confirm(network: Network, case: SpecCase, case_index: int, x: np.ndarray,
            session=None) -> Counterexample | None:
    """Re-check a candidate input in onnxruntime; a Counterexample only if it is real."""
    box = case.box
    x32 = float32_inside(x, box.lower, box.upper, box.strict_lower, box.strict_upper)
    if x32 is None:
        return None
    y = run_onnxruntime(network, x32[None, :], session=session)[0]
    k = satisfied_disjunct(case, y)
    if k is None:
        return None
    return Counterexample(x=x32, y=y, case_index=case_index, disjunct_index=k)
