"""Partition property regions into leaf boxes with last-hidden-layer bounds.

Every case box of a spec is bisected (widest dimension relative to the case box, all
boxes of a round at once) until each box is proven safe on the ORIGINAL network by the
"interval over the last hidden layer" bound, or a count/width limit is reached. For each
leaf we keep the post-ReLU bounds [hl, hu] of the last hidden layer: they depend only on
the layers before the last one, so they stay valid when only the last layer changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from verirepair.bounds import crown_hidden_bounds
from verirepair.net_types import AffineReluNet
from verirepair.network import torch_layers
from verirepair.spec_types import Halfspaces, Spec

Tensor = torch.Tensor


@dataclass(frozen=True)
class Partition:
    """Leaf boxes of one spec: input box, last-hidden post-ReLU bounds, case index."""

    lower: np.ndarray  # (N, n_in)
    upper: np.ndarray  # (N, n_in)
    hl: np.ndarray  # (N, H)
    hu: np.ndarray  # (N, H)
    case: np.ndarray  # (N,) int
    proven: np.ndarray  # (N,) bool: safe on the original network by the interval bound

    @property
    def size(self) -> int:
        return int(self.lower.shape[0])


def row_lower_bounds(weight: np.ndarray, bias: np.ndarray, hl: np.ndarray, hu: np.ndarray,
                     unsafe: Halfspaces) -> np.ndarray:
    """min over h in [hl, hu] of ``c_r (weight h + bias) - d_r`` for every box and row.

    Requires: hl <= hu (N, H); weight (n_out, H). Returns (N, R) float64, exact up to
    float64 rounding (callers that need soundness widen it, see qp.sound_box_margin).
    """
    a = unsafe.matrix @ weight  # (R, H)
    mid, rad = (hu + hl) / 2, (hu - hl) / 2
    return mid @ a.T - rad @ np.abs(a).T + (unsafe.matrix @ bias - unsafe.rhs)


def boxes_safe(weight: np.ndarray, bias: np.ndarray, hl: np.ndarray, hu: np.ndarray,
               unsafe: tuple[Halfspaces, ...]) -> np.ndarray:
    """(N,) bool: for every disjunct some row has a positive lower bound on the box."""
    safe = np.ones(hl.shape[0], dtype=bool)
    for disjunct in unsafe:
        safe &= (row_lower_bounds(weight, bias, hl, hu, disjunct) > 0).any(axis=1)
    return safe


def last_hidden_bounds(layers: list[tuple[Tensor, Tensor]], lower: Tensor, upper: Tensor
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Post-ReLU bounds of the last hidden layer on each box (CROWN; sound)."""
    if lower.shape[0] == 0:
        width = layers[-1][0].shape[1]
        return np.zeros((0, width)), np.zeros((0, width))
    with torch.no_grad():
        hidden = crown_hidden_bounds(layers, lower, upper)
    hl = hidden.lower[-1].clamp_min(0).numpy()
    hu = hidden.upper[-1].clamp_min(0).numpy()
    return hl, np.maximum(hu, hl)


def bisect(lower: Tensor, upper: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Split every box at the middle of its widest dimension (relative to ``scale``).

    Returns (2N, n) lower/upper: the first N are the low halves, the next N the high.
    """
    dim = ((upper - lower) / scale).argmax(dim=1, keepdim=True)
    mid = ((lower + upper) / 2).gather(1, dim)
    up_low = upper.scatter(1, dim, mid)
    lo_high = lower.scatter(1, dim, mid)
    return torch.cat([lower, lo_high]), torch.cat([up_low, upper])


def relative_width(lower: Tensor, upper: Tensor, scale: Tensor) -> Tensor:
    return ((upper - lower) / scale).max(dim=1).values


def _case_scale(lower: np.ndarray, upper: np.ndarray) -> Tensor:
    width = torch.as_tensor(upper - lower, dtype=torch.float64)
    return torch.where(width > 0, width, torch.ones_like(width)).unsqueeze(0)


def _partition_case(net: AffineReluNet, layers: list, lower: np.ndarray, upper: np.ndarray,
                    unsafe: tuple[Halfspaces, ...], max_boxes: int, min_width: float
                    ) -> list[tuple[Tensor, Tensor, np.ndarray, np.ndarray, np.ndarray]]:
    """Leaves of one case: list of (lower, upper, hl, hu, proven) chunks."""
    w, b = net.layers[-1].weight, net.layers[-1].bias
    scale = _case_scale(lower, upper)
    lo = torch.as_tensor(lower, dtype=torch.float64).unsqueeze(0)
    hi = torch.as_tensor(upper, dtype=torch.float64).unsqueeze(0)
    leaves = []
    count = 1
    while lo.shape[0] > 0:
        hl, hu = last_hidden_bounds(layers, lo, hi)
        safe = boxes_safe(w, b, hl, hu, unsafe)
        can = torch.as_tensor(~safe) & (relative_width(lo, hi, scale) > min_width)
        room = max_boxes - count
        if room < 1 or not bool(can.any()):
            leaves.append((lo, hi, hl, hu, safe))
            break
        idx = can.nonzero().squeeze(1)
        if idx.numel() > room:  # split the widest first
            widths = relative_width(lo[idx], hi[idx], scale)
            idx = idx[torch.topk(widths, room).indices]
        split = torch.zeros(lo.shape[0], dtype=torch.bool)
        split[idx] = True
        keep = (~split).numpy()
        leaves.append((lo[~split], hi[~split], hl[keep], hu[keep], safe[keep]))
        lo, hi = bisect(lo[split], hi[split], scale)
        count += int(split.sum())
    return leaves


def partition(net: AffineReluNet, spec: Spec, max_boxes: int = 2000,
              min_width: float = 1.0 / 64) -> Partition:
    """Split every case box of ``spec`` into leaves (see module docstring).

    Requires: net with at least one hidden layer. ``max_boxes`` limits leaves per case;
    ``min_width`` is the smallest relative width that is still split. Returns: Partition
    whose leaves cover every case box exactly. Sound: [hl, hu] are CROWN bounds.
    """
    if len(net.layers) < 2:
        raise ValueError("repair of the last layer needs at least one hidden layer")
    layers = torch_layers(net)
    chunks, cases = [], []
    for index, case in enumerate(spec.cases):
        for chunk in _partition_case(net, layers, case.box.lower, case.box.upper,
                                     case.unsafe, max_boxes, min_width):
            chunks.append(chunk)
            cases.append(np.full(chunk[0].shape[0], index, dtype=np.int64))
    return Partition(
        lower=np.concatenate([c[0].numpy() for c in chunks]),
        upper=np.concatenate([c[1].numpy() for c in chunks]),
        hl=np.concatenate([c[2] for c in chunks]),
        hu=np.concatenate([c[3] for c in chunks]),
        case=np.concatenate(cases),
        proven=np.concatenate([c[4] for c in chunks]))


def refine(net: AffineReluNet, spec: Spec, part: Partition, mask: np.ndarray) -> Partition:
    """Bisect the leaves selected by ``mask`` once (their [hl, hu] tighten).

    Returns a new Partition covering the same region. Sound: CROWN bounds per child.
    """
    if not mask.any():
        return part
    layers = torch_layers(net)
    scales = torch.cat([_case_scale(spec.cases[c].box.lower, spec.cases[c].box.upper)
                        for c in part.case[mask]])
    lo, hi = bisect(torch.as_tensor(part.lower[mask]), torch.as_tensor(part.upper[mask]),
                    scales)
    hl, hu = last_hidden_bounds(layers, lo, hi)
    case = np.concatenate([part.case[mask], part.case[mask]])
    w, b = net.layers[-1].weight, net.layers[-1].bias
    proven = np.zeros(case.shape[0], dtype=bool)
    for c in np.unique(case):
        sel = case == c
        proven[sel] = boxes_safe(w, b, hl[sel], hu[sel], spec.cases[c].unsafe)
    keep = ~mask
    return Partition(
        lower=np.concatenate([part.lower[keep], lo.numpy()]),
        upper=np.concatenate([part.upper[keep], hi.numpy()]),
        hl=np.concatenate([part.hl[keep], hl]), hu=np.concatenate([part.hu[keep], hu]),
        case=np.concatenate([part.case[keep], case]),
        proven=np.concatenate([part.proven[keep], proven]))
