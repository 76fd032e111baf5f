"""Falsification: uniform sampling and a projected-gradient attack on the unsafe margin.

Both search for x in a box with ``unsafe_margin(f(x)) <= 0``. They are incomplete and
only ever *propose* candidates: the caller confirms every candidate in onnxruntime on the
original file before calling anything violated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from verirepair.network import torch_forward
from verirepair.verify.problem import CaseTensors, unsafe_margin

Tensor = torch.Tensor
Layers = list[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Candidates:
    """Points ordered by margin, most unsafe first, with their float64 margins."""

    x: Tensor  # (M, n_in)
    margin: Tensor  # (M,)


def _sorted_unsafe(x: Tensor, margin: Tensor, limit: int) -> Candidates:
    keep = margin <= 0
    x, margin = x[keep], margin[keep]
    order = torch.argsort(margin)[:limit]
    return Candidates(x=x[order], margin=margin[order])


def evaluate_points(layers: Layers, ct: CaseTensors, x: Tensor, limit: int = 16
                    ) -> Candidates:
    """Margins of given points; returns the unsafe ones (at most ``limit``)."""
    with torch.no_grad():
        margin = unsafe_margin(ct, torch_forward(layers, x))
    return _sorted_unsafe(x, margin, limit)


def random_attack(layers: Layers, ct: CaseTensors, n_samples: int,
                  generator: torch.Generator, limit: int = 16) -> Candidates:
    """Uniform samples in the case's box."""
    width = ct.upper - ct.lower
    u = torch.rand((n_samples, ct.lower.shape[0]), generator=generator, dtype=torch.float64)
    return evaluate_points(layers, ct, ct.lower + u * width, limit)


def pgd_attack(layers: Layers, ct: CaseTensors, lower: Tensor, upper: Tensor,
               starts: Tensor, steps: int = 40, limit: int = 16,
               stop: Callable[[], bool] | None = None) -> Candidates:
    """Signed-gradient descent on the margin, one start per row of ``starts``; ends early
    (with what it has) when ``stop()`` says so.

    Requires: ``lower``/``upper`` (N, n_in) the box of each start, starts inside them.
    """
    x = starts.clone()
    width = (upper - lower).clamp_min(0)
    best_x, best_m = x.clone(), torch.full((x.shape[0],), torch.inf, dtype=x.dtype)
    for step in range(steps):
        if stop is not None and step and stop():
            break
        with torch.enable_grad():
            x.requires_grad_(True)
            y = torch_forward(layers, x)
            margin = unsafe_margin(ct, y)
            (grad,) = torch.autograd.grad(_attack_loss(ct, y).sum(), x)
        with torch.no_grad():
            better = margin < best_m
            best_m = torch.where(better, margin.detach(), best_m)
            best_x[better] = x.detach()[better]
            size = 0.25 * (1.0 - step / steps) + 0.01
            x = x.detach() - size * width * torch.sign(grad)
            x = torch.minimum(torch.maximum(x, lower), upper)
    final = evaluate_points(layers, ct, x, limit=x.shape[0])
    all_x = torch.cat([best_x, final.x])
    all_m = torch.cat([best_m, final.margin])
    return _sorted_unsafe(all_x, all_m, limit)


def linear_surrogate_points(coef: Tensor, row_lb: Tensor, lower: Tensor, upper: Tensor,
                            group: Tensor, n_groups: int, steps: int = 24) -> Tensor:
    """Per box and disjunct, approximately minimise max over its rows of the rows' linear
    lower bounds ``coef @ x + const`` over the box (projected sign-subgradient descent
    with a halving step). Returns candidate points (N, K, n_in) for the real network."""
    mid, rad = (upper + lower) / 2, (upper - lower) / 2
    if coef.shape[1] == 0:  # no rows (every disjunct trivially unsafe): the centres
        return mid.unsqueeze(1).repeat(1, n_groups, 1)
    const = row_lb - (torch.einsum("nri,ni->nr", coef, mid)
                      - torch.einsum("nri,ni->nr", coef.abs(), rad))
    x = mid.unsqueeze(1).repeat(1, n_groups, 1)  # (N, K, n)
    in_group = group.unsqueeze(0) == torch.arange(n_groups).unsqueeze(1)  # (K, R)
    step = 0.5
    for _ in range(steps):
        vals = torch.einsum("nri,nki->nkr", coef, x) + const.unsqueeze(1)  # (N, K, R)
        vals = vals.masked_fill(~in_group.unsqueeze(0), -torch.inf)
        top = vals.argmax(dim=2)  # (N, K)
        grad = torch.gather(coef, 1, top.unsqueeze(-1).expand(-1, -1, coef.shape[2]))
        x = x - step * torch.sign(grad) * rad.unsqueeze(1)
        x = torch.minimum(torch.maximum(x, lower.unsqueeze(1)), upper.unsqueeze(1))
        step *= 0.8
    return x


def _attack_loss(ct: CaseTensors, y: Tensor) -> Tensor:
    """Smooth surrogate of the margin: per disjunct the summed excess of its rows (all
    rows pushed at once, not just the worst), minimised over disjuncts. (N,)"""
    excess = (y @ ct.c.T - ct.d).clamp_min(0.0)
    per = torch.zeros((y.shape[0], ct.n_disjuncts), dtype=y.dtype)
    per = per.index_add(1, ct.group, excess)
    return per.min(dim=1).values


def random_starts(lower: Tensor, upper: Tensor, per_box: int,
                  generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``per_box`` uniform starts in every box; returns (starts, lower, upper) repeated."""
    lo = lower.repeat_interleave(per_box, dim=0)
    hi = upper.repeat_interleave(per_box, dim=0)
    u = torch.rand(lo.shape, generator=generator, dtype=torch.float64)
    return lo + u * (hi - lo), lo, hi
