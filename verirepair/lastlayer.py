"""Sound bounds for a network whose LAST layer changes, on boxes of one spec case.

Shared by the repair (partition, QP, searches) and by the verifier's proof certificates,
so neither side imports the other.

On an input box, CROWN on the network gives post-ReLU bounds [hl, hu] of the last hidden
layer and a lower bound ``base`` of c.y - d for every unsafe row (c, d) of the case. The
hidden bounds depend only on the layers before the last, so they stay valid when only the
last layer changes from (W, b) to (W + dW, b + db). Two sound lower bounds of
c.y' - d on the box then follow (mid, rad = centre and radius of [hl, hu]):

  "change" bound:   base + (c dW).mid - |c dW|.rad + c.db
                    (min of a sum >= sum of mins; only the CHANGE is relaxed: best for
                    small changes)
  "interval" bound: a.mid - |a|.rad + c.(b + db) - d,   a = c (W + dW)
                    (best when the change rewrites the row)

``sound_box_margin`` widens both by a bound on their float64 rounding error. Sound: yes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from verirepair.bounds import (REL_MARGIN, HiddenBounds, SpecBounds, crown_hidden_bounds,
                               spec_lower_bounds)
from verirepair.spec_types import Halfspaces

Tensor = torch.Tensor


@dataclass(frozen=True)
class CaseRows:
    """Every unsafe row of one case stacked: c (R, n_out), d (R,), disjunct index (R,),
    and the number of disjuncts (a disjunct may have no row: every output is unsafe)."""

    c: np.ndarray
    d: np.ndarray
    disjunct: np.ndarray
    n_disjuncts: int

    @property
    def count(self) -> int:
        return int(self.d.shape[0])

    @property
    def has_empty_disjunct(self) -> bool:
        """Some disjunct has no output row: it holds for every output."""
        return bool(np.any(np.bincount(self.disjunct, minlength=self.n_disjuncts) == 0))


def case_rows(unsafe: tuple[Halfspaces, ...]) -> CaseRows:
    n_out = unsafe[0].matrix.shape[1] if unsafe else 0
    return CaseRows(c=np.concatenate([h.matrix for h in unsafe] + [np.zeros((0, n_out))]),
                    d=np.concatenate([h.rhs for h in unsafe] + [np.zeros(0)]),
                    disjunct=np.concatenate([np.full(h.rhs.shape[0], k, dtype=np.int64)
                                             for k, h in enumerate(unsafe)]
                                            + [np.zeros(0, dtype=np.int64)]),
                    n_disjuncts=len(unsafe))


def proven_by(row_lb: np.ndarray, rows: CaseRows) -> np.ndarray:
    """(N,) bool: every disjunct has a row with a positive lower bound (a disjunct
    without rows never has one; no disjunct at all: nothing is unsafe)."""
    safe = np.ones(row_lb.shape[0], dtype=bool)
    for k in range(rows.n_disjuncts):
        safe &= (row_lb[:, :rows.count][:, rows.disjunct == k] > 0).any(axis=1)
    return safe


# ---- CROWN on a batch of boxes ---------------------------------------------------------

@dataclass(frozen=True)
class BoxBounds:
    """Bounds of a batch of boxes of one case (numpy, float64)."""

    hl: np.ndarray  # (N, H) last-hidden post-ReLU lower bounds
    hu: np.ndarray  # (N, H) (>= hl)
    row_lb: np.ndarray  # (N, R) CROWN lower bounds of c_r.y - d_r


def crown_rows(layers: list[tuple[Tensor, Tensor]], lower: Tensor, upper: Tensor,
               rows: CaseRows) -> tuple[HiddenBounds, SpecBounds]:
    """CROWN hidden bounds and the lower bound (with coefficients) of every unsafe row on
    each box (N >= 1 boxes). Sound."""
    with torch.no_grad():
        hidden = crown_hidden_bounds(layers, lower, upper)
        spec = spec_lower_bounds(layers, hidden, lower, upper, torch.as_tensor(rows.c),
                                 torch.as_tensor(rows.d))
    return hidden, spec


def box_bounds_of(hidden: HiddenBounds, spec: SpecBounds) -> BoxBounds:
    hl = hidden.lower[-1].clamp_min(0).numpy()
    hu = hidden.upper[-1].clamp_min(0).numpy()
    return BoxBounds(hl, np.maximum(hu, hl), spec.lower.numpy())


def box_bounds(layers: list[tuple[Tensor, Tensor]], lower: Tensor, upper: Tensor,
               rows: CaseRows) -> BoxBounds:
    """Last-hidden post-ReLU bounds and CROWN row lower bounds of each box. Sound."""
    if lower.shape[0] == 0:
        width = layers[-1][0].shape[1]
        return BoxBounds(np.zeros((0, width)), np.zeros((0, width)),
                         np.zeros((0, rows.count)))
    return box_bounds_of(*crown_rows(layers, lower, upper, rows))


# ---- the two bounds of a changed last layer --------------------------------------------

@dataclass(frozen=True)
class BoxRows:
    """One constraint per (leaf box, disjunct): the chosen unsafe row c.y <= d."""

    mid: np.ndarray  # (M, H) centre of the last-hidden bounds
    rad: np.ndarray  # (M, H) radius of the last-hidden bounds (>= 0)
    c: np.ndarray  # (M, n_out)
    base: np.ndarray  # (M,) sound lower bound of c.y - d on the box, reference network
    d: np.ndarray  # (M,) right-hand side of the unsafe row
    leaf: np.ndarray  # (M,) index of the leaf box (for splitting)

    @property
    def size(self) -> int:
        return int(self.base.shape[0])


def change_bound(dw: np.ndarray, db: np.ndarray, rows: BoxRows) -> np.ndarray:
    """The "change" lower bound of c.y' - d per box row (M,), float64."""
    a = rows.c @ dw
    return (rows.base + np.einsum("mh,mh->m", rows.mid, a)
            - np.einsum("mh,mh->m", rows.rad, np.abs(a)) + rows.c @ db)


def interval_bound(weight: np.ndarray, bias: np.ndarray, dw: np.ndarray, db: np.ndarray,
                   rows: BoxRows) -> np.ndarray:
    """The "interval" lower bound of c.y' - d per box row (M,), float64."""
    a = rows.c @ (weight + dw)
    return (np.einsum("mh,mh->m", rows.mid, a) - np.einsum("mh,mh->m", rows.rad, np.abs(a))
            + rows.c @ (bias + db) - rows.d)


def box_slack(weight: np.ndarray, bias: np.ndarray, dw: np.ndarray, db: np.ndarray,
              rows: BoxRows) -> np.ndarray:
    """Best certified lower bound of c.y' - d per box row: max of both kinds. (M,)"""
    return np.maximum(change_bound(dw, db, rows), interval_bound(weight, bias, dw, db, rows))


def sound_box_margin(weight: np.ndarray, bias: np.ndarray, dw: np.ndarray, db: np.ndarray,
                     rows: BoxRows) -> np.ndarray:
    """box_slack with each bound widened down by a bound on its float64 rounding error
    (both are computed from float64 data exactly as written above; bounds.REL_MARGIN
    covers sums of up to 10^5 terms). Sound: yes."""
    size = np.abs(rows.mid) + rows.rad
    ac = np.abs(rows.c)
    err_change = REL_MARGIN * (np.einsum("mh,mh->m", size, ac @ np.abs(dw)) + ac @ np.abs(db)
                          + np.abs(rows.base))
    err_interval = REL_MARGIN * (np.einsum("mh,mh->m", size, ac @ (np.abs(weight) + np.abs(dw)))
                            + ac @ (np.abs(bias) + np.abs(db)) + np.abs(rows.d))
    return np.maximum(change_bound(dw, db, rows) - err_change,
                      interval_bound(weight, bias, dw, db, rows) - err_interval) - 1e-300


def best_kind(weight: np.ndarray, bias: np.ndarray, dw: np.ndarray, db: np.ndarray,
              rows: BoxRows) -> np.ndarray:
    """(M,) True where the interval bound beats the change bound at (dw, db)."""
    return interval_bound(weight, bias, dw, db, rows) > change_bound(dw, db, rows)
