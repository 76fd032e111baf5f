"""Which last-layer parameters a patch may change: localisation -> escalating free masks.

With a localiser (CARE's causal attribution by default, see verirepair/localize), the
neurons of the last hidden layer are ranked on counterexamples of the target properties;
the patch first changes only the outgoing weights of the top ``fraction`` of them (CARE
repairs its top 10 %), then twice as many, ..., then every last-layer weight and bias.
Optionally (``min_active`` > 0; off by default, CARE has no such filter) only neurons
active on at least that share of the counterexamples are candidates: the outgoing weights
of a neuron that is 0 on a counterexample cannot change its output there. Rankings are
always of the last hidden layer (the one whose outgoing weights the patch changes): for
SHARPEN that is its Deep-SHAP neuron ranking without the coarse layer step, which
``verirepair localize --layer all`` shows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from verirepair.network import Network
from verirepair.spec_types import Spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FreeSet:
    """One candidate set of patchable parameters: (n_out, H+1) mask over [W | b]."""

    mask: np.ndarray
    neurons: tuple[int, ...]  # last-hidden neurons whose outgoing weights may change
    label: str


def all_parameters(n_out: int, width: int) -> FreeSet:
    return FreeSet(np.ones((n_out, width + 1), dtype=bool), tuple(range(width)),
                   "all last-layer parameters")


def neuron_mask(n_out: int, width: int, neurons: list[int]) -> np.ndarray:
    """Outgoing weights of ``neurons`` (every output), biases fixed."""
    mask = np.zeros((n_out, width + 1), dtype=bool)
    mask[:, neurons] = True
    return mask


def ranked_neurons(network: Network, targets: list[Spec], method: str, seed: int,
                   timeout: float, min_active: float) -> list[int]:
    """Last-hidden neurons by the best rank any target gives them (interleaved).

    Requires: targets that are violated on ``network``. Returns [] when no target yields
    counterexamples within ``timeout``.
    """
    from verirepair.localize import LocalizeOptions, localize
    from verirepair.localize.points import find_points

    last = len(network.net.layers) - 2
    per_target: list[np.ndarray] = []
    for spec in targets:
        points = find_points(network, spec, 4000, seed, timeout)
        if points.cex.shape[0] == 0:
            continue
        ranking = localize(network.net, points.cex, points.benign, spec, method=method,
                           layer="last", options=LocalizeOptions(seed=seed))
        per_target.append(ranking.neurons_of(last, min_active=min_active))
    order: list[int] = []
    for rank in range(max((r.size for r in per_target), default=0)):
        for ranked in per_target:
            if rank < ranked.size and int(ranked[rank]) not in order:
                order.append(int(ranked[rank]))
    return order


def escalation(order: list[int], n_out: int, width: int, fraction: float
               ) -> list[FreeSet]:
    """Top ``fraction`` of the width, doubled each step while below ``order``'s length,
    then all parameters."""
    sets: list[FreeSet] = []
    k = max(1, math.ceil(fraction * width))
    while k < len(order):
        chosen = order[:k]
        sets.append(FreeSet(neuron_mask(n_out, width, chosen), tuple(chosen),
                            f"top {k} neurons"))
        k *= 2
    return sets + [all_parameters(n_out, width)]
