"""CARE's causal attribution of hidden neurons (Sun et al., ICSE 2022, §3.3).

The network is read as a structural causal model. The causal attribution of a hidden
neuron h to the undesirable behaviour y is ``E[y | do(h = beta)]`` (CARE Eq. 6), estimated
by running the inputs with the neuron held at ``beta`` and averaging y (Eq. 7). Here y is
the violation measure of the property on the counterexamples (how deep the output lies in
the unsafe set), and beta runs over ``n_values`` evenly spaced values of the neuron's
range observed on all given inputs. A neuron's score is the spread of its attribution
curve, ``max_beta E[y|do(h=beta)] - min_beta E[y|do(h=beta)]``: the largest ACE between two
interventions (Eq. 5 compares two treatments; a continuous neuron has many).

Benign inputs: CARE's localisation uses only the inputs that show the defect; benign
behaviour enters its PSO fitness (accuracy term, weight alpha). We report the benign
effect of every intervention (mean over beta and ``benign_points`` benign inputs, a seeded
choice, of the largest output change) and, with ``benign_weight`` > 0, subtract it from the
score in the manner of CARE's fitness.

Cost: one batched forward pass from layer k+1 per (neuron, beta, input); the intervention
enters layer k+1 as a rank-one change of its pre-activation.
"""

from __future__ import annotations

import numpy as np
import torch

from verirepair.localize.measure import forward_from_pre, trace
from verirepair.localize.types import LayerScores, Layers, LocalizeOptions, Problem, Tensor

Trace = tuple[list[Tensor], list[Tensor]]  # (pre-activations, post-ReLU values)


def intervention_values(h: Tensor, n_values: int) -> Tensor:
    """(n, V): ``n_values`` evenly spaced values over each neuron's observed [min, max]."""
    lo, hi = h.min(dim=0).values, h.max(dim=0).values
    t = torch.linspace(0.0, 1.0, n_values, dtype=h.dtype)
    return lo[:, None] + (hi - lo)[:, None] * t[None, :]


def intervened_outputs(layers: Layers, k: int, pre_next: Tensor, h: Tensor,
                       cols: Tensor, values: Tensor) -> Tensor:
    """Outputs under do(h_j = beta) for neurons ``cols`` of hidden layer k: (J, V, N, n_out).

    ``pre_next`` (N, n_{k+1}) and ``h`` (N, n_k) are the unperturbed pre-activation of layer
    k+1 and activation of layer k; ``values`` (J, V) the betas of each neuron.
    """
    w_next = layers[k + 1][0][:, cols]  # (n_{k+1}, J)
    delta = values[:, :, None] - h[:, cols].T[:, None, :]  # (J, V, N)
    z = pre_next + delta[..., None] * w_next.T[:, None, None, :]
    return forward_from_pre(layers, k + 1, z)


def _chunk(n_neurons: int, per_neuron: int, limit: int) -> int:
    return max(1, min(n_neurons, limit // max(per_neuron, 1)))


def layer_effects(problem: Problem, k: int, options: LocalizeOptions, cex: Trace,
                  benign: Trace, pick: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(violation spread, benign output change) per neuron of hidden layer k.

    ``cex`` and ``benign`` are the :func:`trace` of the counterexamples and of all benign
    inputs (the observed range of a neuron spans both); ``pick`` the benign inputs on which
    the benign effect is measured.
    """
    layers = problem.layers
    (pre_c, post_c), (pre_b, post_b) = cex, benign
    values = intervention_values(torch.cat([post_c[k], post_b[k]]), options.n_values)
    pre_b, post_b = [p[pick] for p in pre_b], [p[pick] for p in post_b]
    y_benign = pre_b[-1]
    width = max(w.shape[0] for w, _ in layers[k + 1:])
    n_points = pre_c[0].shape[0] + pre_b[0].shape[0]
    step = _chunk(values.shape[0], options.n_values * n_points * width,
                  options.chunk_elements)
    spread, benign = [], []
    for start in range(0, values.shape[0], step):
        cols = torch.arange(start, min(start + step, values.shape[0]))
        y = intervened_outputs(layers, k, pre_c[k + 1], post_c[k], cols, values[cols])
        curve = problem.measure(y).mean(dim=-1)  # (J, V): E[y | do(h_j = beta_v)]
        spread.append(curve.max(dim=1).values - curve.min(dim=1).values)
        yb = intervened_outputs(layers, k, pre_b[k + 1], post_b[k], cols, values[cols])
        change = (yb - y_benign).abs().amax(dim=-1)  # (J, V, M)
        benign.append(change.mean(dim=(1, 2)) if change.shape[-1] else
                      torch.zeros(cols.shape[0], dtype=change.dtype))
    return torch.cat(spread).numpy(), torch.cat(benign).numpy()


def benign_choice(n_benign: int, options: LocalizeOptions) -> Tensor:
    """Indices of at most ``benign_points`` benign inputs (seeded, sorted)."""
    if n_benign <= options.benign_points:
        return torch.arange(n_benign)
    rng = np.random.default_rng(options.seed)
    return torch.as_tensor(np.sort(rng.choice(n_benign, options.benign_points, replace=False)))


def _scaled(values: np.ndarray, top: float) -> np.ndarray:
    return values / top if top > 0 else np.zeros_like(values)


def combined_score(spread: dict[int, np.ndarray], benign: dict[int, np.ndarray],
                   alpha: float) -> dict[int, np.ndarray]:
    """``(1 - alpha) * spread - alpha * benign``, each scaled by its maximum over all layers."""
    if alpha == 0.0:
        return spread
    top_s = max(float(v.max(initial=0.0)) for v in spread.values())
    top_b = max(float(v.max(initial=0.0)) for v in benign.values())
    return {k: (1 - alpha) * _scaled(spread[k], top_s) - alpha * _scaled(benign[k], top_b)
            for k in spread}


def causal_effects(problem: Problem, options: LocalizeOptions) -> LayerScores:
    """CARE causal attribution for every neuron of ``problem.hidden``.

    Requires: at least one counterexample; n_values >= 2; 0 <= benign_weight < 1.
    Returns: scores (spread of the attribution curve, or the benign-weighted score) and
    extras ``violation_effect`` / ``benign_effect`` per neuron.
    """
    if options.n_values < 2:
        raise ValueError(f"n_values must be at least 2, got {options.n_values}")
    if not 0.0 <= options.benign_weight < 1.0:
        raise ValueError(f"benign_weight must be in [0, 1), got {options.benign_weight}")
    spread, benign = {}, {}
    with torch.no_grad():
        traces = trace(problem.layers, problem.cex), trace(problem.layers, problem.benign)
        pick = benign_choice(problem.benign.shape[0], options)
        for k in problem.hidden:
            spread[k], benign[k] = layer_effects(problem, k, options, *traces, pick)
    scores = combined_score(spread, benign, options.benign_weight)
    return LayerScores(scores=scores,
                       extras={"violation_effect": spread, "benign_effect": benign})
