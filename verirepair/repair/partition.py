"""Partition property regions into leaf boxes with last-hidden-layer bounds.

Every case box of a spec is bisected (widest dimension relative to the case box, all
boxes of a round at once) until each box is proven safe on the ORIGINAL network by CROWN
(some row of every unsafe disjunct has a positive lower bound), or a count/width limit is
reached. For each leaf we keep the CROWN lower bound of every unsafe row and the post-ReLU
bounds [hl, hu] of the last hidden layer: those depend only on the layers before the last
one, so they stay valid when only the last layer changes (see lastlayer.py for how the
two combine into a bound for the patched network).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from verirepair.bounds import gradient_smear
from verirepair.lastlayer import (CaseRows, box_bounds, box_bounds_of, case_rows, crown_rows,
                                  proven_by)
from verirepair.net_types import AffineReluNet
from verirepair.network import torch_layers
from verirepair.spec_types import Spec

Tensor = torch.Tensor


@dataclass(frozen=True)
class Partition:
    """Leaf boxes of one spec: input box, last-hidden post-ReLU bounds, case index, and
    the CROWN lower bound of every unsafe row of the leaf's case (see case_rows)."""

    lower: np.ndarray  # (N, n_in)
    upper: np.ndarray  # (N, n_in)
    hl: np.ndarray  # (N, H)
    hu: np.ndarray  # (N, H)
    case: np.ndarray  # (N,) int
    proven: np.ndarray  # (N,) bool: safe on the original network (CROWN)
    row_lb: np.ndarray  # (N, R_max) lower bound of c_r.y - d_r; -inf pads unused rows
    split_dim: np.ndarray  # (N,) int: the dimension to bisect if the leaf is refined

    @property
    def size(self) -> int:
        return int(self.lower.shape[0])


@dataclass(frozen=True)
class LeafBounds:
    """Bounds of a batch of boxes of one case (numpy) plus the split dimension of each."""

    hl: np.ndarray  # (N, H) last-hidden post-ReLU lower bounds
    hu: np.ndarray  # (N, H)
    row_lb: np.ndarray  # (N, R) CROWN lower bounds of c_r.y - d_r
    split_dim: Tensor  # (N,) int: where to bisect the box if it must be split


def _split_dims(layers: list, hidden, lower: Tensor, upper: Tensor, row_lb: Tensor,
                coef: Tensor, rows: CaseRows) -> Tensor:
    """Per box: the dimension whose width matters most to the best row of the weakest
    disjunct, by (interval-gradient smear + CROWN coefficient x width), each normalised."""
    disjunct = torch.as_tensor(rows.disjunct)
    n_disj = int(disjunct.max()) + 1
    best_lb = torch.full((row_lb.shape[0], n_disj), -torch.inf, dtype=row_lb.dtype)
    best_lb = best_lb.scatter_reduce(1, disjunct.expand(row_lb.shape[0], -1), row_lb, "amax")
    weakest = best_lb.argmin(1)
    in_weakest = disjunct.unsqueeze(0) == weakest.unsqueeze(1)
    row = torch.where(in_weakest, row_lb, torch.full_like(row_lb, -torch.inf)).argmax(1)
    width = upper - lower
    coef_score = coef[torch.arange(row.shape[0]), row].abs() * width
    coef_score = coef_score / coef_score.sum(1, keepdim=True).clamp_min(1e-300)
    out_weight = torch.as_tensor(rows.c)[row]
    smear = gradient_smear(layers, hidden, out_weight, lower, upper)
    smear = smear / smear.sum(1, keepdim=True).clamp_min(1e-300)
    score = torch.where(width > 0, smear + coef_score + 1e-30 * width,
                        torch.full_like(width, -1.0))
    return score.argmax(1)


def leaf_bounds(layers: list[tuple[Tensor, Tensor]], lower: Tensor, upper: Tensor,
                rows: CaseRows) -> LeafBounds:
    """Last-hidden post-ReLU bounds, CROWN row lower bounds and split dimensions. Sound."""
    if lower.shape[0] == 0:
        empty = box_bounds(layers, lower, upper, rows)
        return LeafBounds(empty.hl, empty.hu, empty.row_lb, torch.zeros(0, dtype=torch.long))
    hidden, spec = crown_rows(layers, lower, upper, rows)
    with torch.no_grad():
        dims = _split_dims(layers, hidden, lower, upper, spec.lower, spec.coef, rows)
    b = box_bounds_of(hidden, spec)
    return LeafBounds(b.hl, b.hu, b.row_lb, dims)


def bisect(lower: Tensor, upper: Tensor, dims: Tensor) -> tuple[Tensor, Tensor]:
    """Split every box at the middle of dimension ``dims[i]``.

    Returns (2N, n) lower/upper: the first N are the low halves, the next N the high.
    """
    dim = dims.unsqueeze(1)
    mid = ((lower + upper) / 2).gather(1, dim)
    up_low = upper.scatter(1, dim, mid)
    lo_high = lower.scatter(1, dim, mid)
    return torch.cat([lower, lo_high]), torch.cat([up_low, upper])


def relative_width(lower: Tensor, upper: Tensor, scale: Tensor) -> Tensor:
    return ((upper - lower) / scale).max(dim=1).values


def _case_scale(lower: np.ndarray, upper: np.ndarray) -> Tensor:
    width = torch.as_tensor(upper - lower, dtype=torch.float64)
    return torch.where(width > 0, width, torch.ones_like(width)).unsqueeze(0)


def _partition_case(layers: list, lower: np.ndarray, upper: np.ndarray, rows: CaseRows,
                    max_boxes: int, min_width: float) -> list[tuple]:
    """Leaves of one case: list of (lower, upper, hl, hu, row_lb, proven) chunks."""
    scale = _case_scale(lower, upper)
    lo = torch.as_tensor(lower, dtype=torch.float64).unsqueeze(0)
    hi = torch.as_tensor(upper, dtype=torch.float64).unsqueeze(0)
    leaves = []
    count = 1
    while lo.shape[0] > 0:
        bounds = leaf_bounds(layers, lo, hi, rows)
        hl, hu, lb = bounds.hl, bounds.hu, bounds.row_lb
        safe = proven_by(lb, rows)
        can = torch.as_tensor(~safe) & (relative_width(lo, hi, scale) > min_width)
        room = max_boxes - count
        if room < 1 or not bool(can.any()):
            leaves.append((lo, hi, hl, hu, lb, safe, bounds.split_dim.numpy()))
            break
        idx = can.nonzero().squeeze(1)
        if idx.numel() > room:  # split the most nearly proven first
            worst = torch.as_tensor(_disjunct_margin(lb, rows))[idx]
            idx = idx[torch.topk(worst, room).indices]
        split = torch.zeros(lo.shape[0], dtype=torch.bool)
        split[idx] = True
        keep = (~split).numpy()
        leaves.append((lo[~split], hi[~split], hl[keep], hu[keep], lb[keep], safe[keep],
                       bounds.split_dim[~split].numpy()))
        lo, hi = bisect(lo[split], hi[split], bounds.split_dim[split])
        count += int(split.sum())
    return leaves


def _disjunct_margin(row_lb: np.ndarray, rows: CaseRows) -> np.ndarray:
    """(N,) min over disjuncts of the best row lower bound (> 0: proven)."""
    out = np.full(row_lb.shape[0], np.inf)
    for k in np.unique(rows.disjunct):
        out = np.minimum(out, row_lb[:, :rows.count][:, rows.disjunct == k].max(axis=1))
    return out


def _padded(lb: np.ndarray, width: int) -> np.ndarray:
    out = np.full((lb.shape[0], width), -np.inf)
    out[:, :lb.shape[1]] = lb
    return out


def _max_rows(spec: Spec) -> int:
    return max(case_rows(c.unsafe).count for c in spec.cases)


def partition(net: AffineReluNet, spec: Spec, max_boxes: int = 2000,
              min_width: float = 1.0 / 64) -> Partition:
    """Split every case box of ``spec`` into leaves (see module docstring).

    Requires: net with at least one hidden layer. ``max_boxes`` limits leaves per case;
    ``min_width`` is the smallest relative width that is still split. Returns: Partition
    whose leaves cover every case box exactly. Sound: CROWN bounds.
    """
    if len(net.layers) < 2:
        raise ValueError("repair of the last layer needs at least one hidden layer")
    layers = torch_layers(net)
    width = _max_rows(spec)
    chunks, cases = [], []
    for index, case in enumerate(spec.cases):
        for chunk in _partition_case(layers, case.box.lower, case.box.upper,
                                     case_rows(case.unsafe), max_boxes, min_width):
            chunks.append(chunk)
            cases.append(np.full(chunk[0].shape[0], index, dtype=np.int64))
    return Partition(
        lower=np.concatenate([c[0].numpy() for c in chunks]),
        upper=np.concatenate([c[1].numpy() for c in chunks]),
        hl=np.concatenate([c[2] for c in chunks]),
        hu=np.concatenate([c[3] for c in chunks]),
        case=np.concatenate(cases),
        proven=np.concatenate([c[5] for c in chunks]),
        row_lb=np.concatenate([_padded(c[4], width) for c in chunks]),
        split_dim=np.concatenate([c[6] for c in chunks]))


def refine(net: AffineReluNet, spec: Spec, part: Partition, mask: np.ndarray) -> Partition:
    """Bisect the leaves selected by ``mask`` once (their bounds tighten).

    Returns a new Partition covering the same region. Sound: CROWN bounds per child.
    """
    if not mask.any():
        return part
    layers = torch_layers(net)
    width = part.row_lb.shape[1]
    lo, hi = bisect(torch.as_tensor(part.lower[mask]), torch.as_tensor(part.upper[mask]),
                    torch.as_tensor(part.split_dim[mask]))
    case = np.concatenate([part.case[mask], part.case[mask]])
    n, h = case.shape[0], part.hl.shape[1]
    hl, hu = np.zeros((n, h)), np.zeros((n, h))
    lb, proven = np.full((n, width), -np.inf), np.zeros(n, dtype=bool)
    dims = np.zeros(n, dtype=np.int64)
    for c in np.unique(case):
        sel = case == c
        rows = case_rows(spec.cases[c].unsafe)
        bounds = leaf_bounds(layers, lo[torch.as_tensor(sel)], hi[torch.as_tensor(sel)], rows)
        hl[sel], hu[sel] = bounds.hl, bounds.hu
        lb[sel] = _padded(bounds.row_lb, width)
        proven[sel] = proven_by(bounds.row_lb, rows)
        dims[sel] = bounds.split_dim.numpy()
    keep = ~mask
    return Partition(
        lower=np.concatenate([part.lower[keep], lo.numpy()]),
        upper=np.concatenate([part.upper[keep], hi.numpy()]),
        hl=np.concatenate([part.hl[keep], hl]), hu=np.concatenate([part.hu[keep], hu]),
        case=np.concatenate([part.case[keep], case]),
        proven=np.concatenate([part.proven[keep], proven]),
        row_lb=np.concatenate([part.row_lb[keep], lb]),
        split_dim=np.concatenate([part.split_dim[keep], dims]))
