"""Plain data for properties: an input box and a disjunction of output polytopes.

A VNN-LIB file describes the UNSAFE set. After parsing it is a list of
:class:`SpecCase` — one per input box — each with a disjunction of
:class:`Halfspaces` (conjunctions ``C @ y <= d``). The property is violated iff some
input x in some case's box has an output y = f(x) that satisfies all rows of some
disjunct of that case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class Box:
    """Axis-aligned input box ``lower <= x <= upper`` over the flattened input (float64).

    ``strict_lower``/``strict_upper`` (bool per input, None = none) mark bounds that the
    file states strictly (``X_i > a``): verification uses the closed box (a larger
    unsafe set, so "holds" stays sound), while :meth:`contains`, which decides whether a
    counterexample counts, honours them."""

    lower: np.ndarray
    upper: np.ndarray
    strict_lower: np.ndarray | None = None
    strict_upper: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.lower.shape[0])

    def outside(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per input: (not above the lower bound, not below the upper bound), honouring
        strict bounds (a value on a strict bound is outside; NaN is outside)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        above = (x > self.lower) | ((x == self.lower) & ~strict_flags(self.strict_lower, x))
        below = (x < self.upper) | ((x == self.upper) & ~strict_flags(self.strict_upper, x))
        return ~above, ~below

    def contains(self, x: np.ndarray) -> bool:
        low, high = self.outside(x)
        return not bool(low.any() or high.any())


def strict_flags(strict: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    """The strictness flags, all False where none are given."""
    return np.zeros(like.shape, dtype=bool) if strict is None else strict


@dataclass(frozen=True)
class Halfspaces:
    """Conjunction of linear output constraints ``matrix @ y <= rhs``; rows marked in
    ``strict`` (None = none) are ``<`` in the file: verification uses ``<=`` (sound for
    "holds"), :meth:`satisfied_by`, which decides whether a counterexample counts, uses
    ``<`` for them."""

    matrix: np.ndarray  # (rows, n_outputs) float64
    rhs: np.ndarray  # (rows,) float64
    strict: np.ndarray | None = None  # (rows,) bool

    def satisfied_by(self, y: np.ndarray) -> bool:
        """Whether the output ``y`` (finite values only) satisfies every row, decided in
        exact rational arithmetic on the float64 rows: no rounding of a row's sum can
        make an output that misses the row by a hair count as unsafe."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if not np.isfinite(y).all():
            return False
        for row, d, is_strict in zip(self.matrix, self.rhs, strict_flags(self.strict,
                                                                         self.rhs)):
            cols = np.nonzero(row)[0]
            lhs = sum((Fraction(float(row[j])) * Fraction(float(y[j])) for j in cols),
                      Fraction(0))
            rhs = Fraction(float(d))
            if not (lhs < rhs or (lhs == rhs and not is_strict)):
                return False
        return True


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
