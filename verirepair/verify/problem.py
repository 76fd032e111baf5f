"""One verification case as tensors: the box and the stacked unsafe rows.

The unsafe set of a case is OR over disjuncts k of AND over rows r in k of
``C[r] @ y <= d[r]``. The *margin* of an output is
``min_k max_{r in k} (C[r] @ y - d[r])``: the output is unsafe iff margin <= 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from verirepair.spec_types import SpecCase

Tensor = torch.Tensor


@dataclass(frozen=True)
class CaseTensors:
    lower: Tensor  # (n_in,)
    upper: Tensor  # (n_in,)
    c: Tensor  # (R, n_out)
    d: Tensor  # (R,)
    group: Tensor  # (R,) disjunct index of every row (long)
    n_disjuncts: int
    trivially_unsafe: bool  # some disjunct has no rows: every input is a counterexample


def case_tensors(case: SpecCase, n_outputs: int) -> CaseTensors:
    rows_c, rows_d, groups = [], [], []
    for k, hs in enumerate(case.unsafe):
        rows_c.append(np.asarray(hs.matrix, dtype=np.float64).reshape(-1, n_outputs))
        rows_d.append(np.asarray(hs.rhs, dtype=np.float64).reshape(-1))
        groups.append(np.full(rows_d[-1].shape[0], k, dtype=np.int64))
    c = np.concatenate(rows_c) if rows_c else np.zeros((0, n_outputs))
    d = np.concatenate(rows_d) if rows_d else np.zeros(0)
    g = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
    empty = any(np.asarray(hs.rhs).size == 0 for hs in case.unsafe)
    return CaseTensors(lower=torch.as_tensor(case.box.lower, dtype=torch.float64),
                       upper=torch.as_tensor(case.box.upper, dtype=torch.float64),
                       c=torch.as_tensor(c), d=torch.as_tensor(d), group=torch.as_tensor(g),
                       n_disjuncts=len(case.unsafe), trivially_unsafe=empty)


def group_max(values: Tensor, group: Tensor, n_groups: int) -> Tensor:
    """Per-disjunct maximum over its rows: (N, R) -> (N, K); -inf for empty groups."""
    out = torch.full((values.shape[0], n_groups), -torch.inf, dtype=values.dtype)
    idx = group.unsqueeze(0).expand_as(values)
    return out.scatter_reduce(1, idx, values, reduce="amax", include_self=True)


def disjunct_margins(ct: CaseTensors, y: Tensor) -> Tensor:
    """(N, K) margins per disjunct: <= 0 means the output satisfies that disjunct."""
    rows = y @ ct.c.T - ct.d
    return group_max(rows, ct.group, ct.n_disjuncts)


def unsafe_margin(ct: CaseTensors, y: Tensor) -> Tensor:
    """(N,) margin; <= 0 means unsafe."""
    return disjunct_margins(ct, y).min(dim=1).values
