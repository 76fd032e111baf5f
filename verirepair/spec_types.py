"""Plain data for properties: an input box and a disjunction of output polytopes.

A VNN-LIB file describes the UNSAFE set. After parsing it is a list of
:class:`SpecCase` — one per input box — each with a disjunction of
:class:`Halfspaces` (conjunctions ``C @ y <= d``). The property is violated iff some
input x in some case's box has an output y = f(x) that satisfies all rows of some
disjunct of that case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Box:
    """Axis-aligned input box ``lower <= x <= upper`` over the flattened input (float64)."""

    lower: np.ndarray
    upper: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.lower.shape[0])

    def contains(self, x: np.ndarray) -> bool:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return bool(np.all(x >= self.lower) and np.all(x <= self.upper))


@dataclass(frozen=True)
class Halfspaces:
    """Conjunction of linear output constraints ``matrix @ y <= rhs``."""

    matrix: np.ndarray  # (rows, n_outputs) float64
    rhs: np.ndarray  # (rows,) float64

    def satisfied_by(self, y: np.ndarray, tol: float = 0.0) -> bool:
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        return bool(np.all(self.matrix @ y <= self.rhs + tol))


@dataclass(frozen=True)
class SpecCase:
    """One input box together with the disjunction of unsafe output polytopes on it."""

    box: Box
    unsafe: tuple[Halfspaces, ...]


@dataclass(frozen=True)
class Spec:
    """A parsed property: the union over cases describes the unsafe set."""

    n_inputs: int
    n_outputs: int
    cases: tuple[SpecCase, ...]
    source: str = field(default="<string>")
