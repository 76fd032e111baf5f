"""Verdicts and results of verification (VNN-COMP words live only in report.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Verdict(enum.Enum):
    HOLDS = "holds"
    VIOLATED = "violated"
    UNKNOWN = "unknown"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class Counterexample:
    """An input (flattened, float32-exact values) in the case's box and its ORT output."""

    x: np.ndarray
    y: np.ndarray
    case_index: int
    disjunct_index: int


@dataclass
class Stats:
    """Work counters of one run (mutable while the engine runs)."""

    boxes: int = 0
    bound_calls: int = 0
    attack_points: int = 0
    max_queue: int = 0
    unconfirmed: int = 0
    seconds: float = 0.0
    split: str = ""  # what branch and bound split: "input" or "relu"; "" when it did not run

    @property
    def unit(self) -> str:
        """What ``boxes`` counts: input boxes, or bounded subproblems under ReLU splitting."""
        return SPLIT_UNITS[self.split]


SPLIT_UNITS = {"": "boxes", "input": "boxes", "relu": "subproblems"}
SPLIT_NAMES = {"input": "input splitting", "relu": "ReLU splitting"}


@dataclass(frozen=True)
class Witness:
    """An input of case ``case_index`` that is unsafe in exact real arithmetic on the
    lowered network (checked in rational arithmetic), although no float32 input near it
    was confirmed in onnxruntime: not a counterexample, but proof that the property fails
    over the reals, so a 'holds' from another engine is a contradiction."""

    x: tuple  # Fractions
    case_index: int


@dataclass(frozen=True)
class Result:
    verdict: Verdict
    counterexample: Counterexample | None = None
    reason: str = ""
    engine: str = "bab"
    stats: Stats = field(default_factory=Stats)
    witness: Witness | None = None  # z3, when no counterexample was confirmed: see Witness
