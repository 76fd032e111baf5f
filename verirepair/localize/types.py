"""Plain data of fault localisation: options, the prepared problem, and the ranking."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from verirepair.errors import VerirepairError

Tensor = torch.Tensor
Layers = list[tuple[Tensor, Tensor]]


class NoBenignInputs(VerirepairError):
    """A method compares counterexamples with benign inputs, but there are none."""


@dataclass(frozen=True)
class LocalizeOptions:
    """Parameters of every localiser (each method reads the ones it needs).

    - ``n_values``: CARE interventions per neuron, do(h = beta) for ``n_values`` values of
      beta evenly spaced over the neuron's observed range (the paper gives no count).
    - ``seed``: subsampling of the inputs, Deep SHAP background choice, ``random``.
    - ``max_points``: counterexamples and benign inputs are each subsampled (seeded) to at
      most this many before any method runs.
    - ``benign_weight``: alpha in [0, 1): causal score = (1 - alpha) * violation effect -
      alpha * benign effect (both scaled to [0, 1]); 0 is CARE's localisation as published
      (CARE weighs benign behaviour only in its PSO fitness).
    - ``benign_points``: benign inputs (the first of the subsample) on which causal
      measures the benign effect of its interventions (cost grows with this count).
    - ``background``: Deep SHAP references drawn from the benign inputs.
    - ``chunk_elements``: float64 elements per batched tensor (memory bound).
    """

    n_values: int = 16
    seed: int = 0
    max_points: int = 512
    benign_weight: float = 0.0
    benign_points: int = 128
    background: int = 100
    chunk_elements: int = 1 << 22

    def params(self) -> dict:
        return {"n_values": self.n_values, "seed": self.seed, "max_points": self.max_points,
                "benign_weight": self.benign_weight, "benign_points": self.benign_points,
                "background": self.background}


@dataclass(frozen=True)
class Problem:
    """What every localiser gets: the torch view, inputs, the measure, layers to rank.

    ``hidden`` lists hidden-layer indices k: neuron (k, j) is the ReLU output j of affine
    layer ``net.layers[k]``; its outgoing weights are ``net.layers[k + 1].weight[:, j]``.
    ``measure(y)`` maps outputs (..., N, n_out) of the N counterexamples to (..., N).
    """

    layers: Layers
    cex: Tensor  # (N, n_in) float64
    benign: Tensor  # (M, n_in) float64, M may be 0
    measure: object  # SpecMeasure (callable), kept untyped to avoid an import cycle
    hidden: tuple[int, ...]


@dataclass(frozen=True)
class LayerScores:
    """One method's raw result: a score per neuron for each ranked hidden layer."""

    scores: dict[int, np.ndarray]  # hidden layer index -> (n_k,) finite scores
    extras: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    layer_order: tuple[int, ...] | None = None  # coarse-to-fine order (shap), else global
    layer_scores: dict[int, float] | None = None


@dataclass(frozen=True)
class Ranking:
    """Neurons, most suspicious first: ``layer[i]``, ``neuron[i]``, ``score[i]``.

    Scores are sorted descending, except for coarse-to-fine methods (``shap`` over several
    layers), where the order is layer-major (``layer_scores`` descending) and scores are
    descending within each layer. ``extras`` holds further per-neuron arrays in the same
    order: ``cex_active`` (share of counterexamples on which the neuron is active) for
    every method, causal ``violation_effect`` and ``benign_effect``.
    """

    method: str
    layer: np.ndarray  # (K,) int
    neuron: np.ndarray  # (K,) int
    score: np.ndarray  # (K,) float64
    params: dict
    layer_scores: dict[int, float] | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.layer.shape[0])

    def top(self, n: int) -> list[tuple[int, int, float]]:
        """The first ``n`` entries as (layer, neuron, score)."""
        return [(int(l), int(j), float(s)) for l, j, s in
                zip(self.layer[:n], self.neuron[:n], self.score[:n])]

    def neurons_of(self, layer: int, min_active: float = 0.0) -> np.ndarray:
        """Neuron indices of one hidden layer in ranking order.

        ``min_active`` > 0 keeps only neurons active on at least that share of the
        counterexamples (``extras["cex_active"]``): what a patch of outgoing weights needs.
        """
        keep = self.layer == layer
        if min_active > 0.0:
            keep &= self.extras["cex_active"] >= min_active
        return self.neuron[keep]

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "params": self.params,
            "layer_scores": None if self.layer_scores is None else
            {str(k): float(v) for k, v in self.layer_scores.items()},
            "ranking": [
                {"rank": i + 1, "layer": int(l), "neuron": int(j), "score": float(s),
                 **{name: float(arr[i]) for name, arr in self.extras.items()}}
                for i, (l, j, s) in enumerate(zip(self.layer, self.neuron, self.score))],
        }
