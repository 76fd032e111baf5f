"""``localize(net, cex, benign, spec, method, layer, options) -> Ranking``.

Methods register by name in ``LOCALIZERS``; each maps a prepared :class:`Problem` to a
score per neuron of the requested hidden layers, and :func:`localize` turns the scores
into one :class:`Ranking`.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import torch

from verirepair.localize.baselines import activation_divergence, gradient_scores, random_scores
from verirepair.localize.causal import causal_effects
from verirepair.localize.measure import spec_measure, trace
from verirepair.localize.shap import shap_ranking
from verirepair.localize.types import LayerScores, LocalizeOptions, Problem, Ranking
from verirepair.net_types import AffineReluNet
from verirepair.network import torch_layers
from verirepair.spec_types import Spec

log = logging.getLogger(__name__)

Localizer = Callable[[Problem, LocalizeOptions], LayerScores]

LOCALIZERS: dict[str, Localizer] = {
    "causal": causal_effects,
    "gradient": gradient_scores,
    "shap": shap_ranking,
    "activation": activation_divergence,
    "random": random_scores,
}

LayerChoice = int | str  # a hidden-layer index, "last" or "all"


def hidden_layers(net: AffineReluNet, layer: LayerChoice) -> tuple[int, ...]:
    """Hidden-layer indices to rank: ``"last"``, ``"all"`` or one index (0-based)."""
    n_hidden = len(net.layers) - 1
    if n_hidden < 1:
        raise ValueError("the network has no hidden layer: nothing to localize")
    named = {"last": (n_hidden - 1,), "all": tuple(range(n_hidden))}
    if isinstance(layer, str):
        if layer not in named:
            raise ValueError(f"layer must be an index, 'last' or 'all', got '{layer}'")
        return named[layer]
    if not 0 <= int(layer) < n_hidden:
        raise ValueError(f"layer {layer}: the network has {n_hidden} hidden layers "
                         f"(0..{n_hidden - 1})")
    return (int(layer),)


def _points(x: np.ndarray, n_in: int, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1, n_in) if np.size(x) else \
        np.zeros((0, n_in))
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds non-finite values")
    return x


def subsample(x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` rows of ``x`` (seeded choice, original order kept)."""
    if x.shape[0] <= limit:
        return x
    return x[np.sort(rng.choice(x.shape[0], limit, replace=False))]


def prepare(net: AffineReluNet, cex: np.ndarray, benign: np.ndarray, spec: Spec,
            layer: LayerChoice, options: LocalizeOptions) -> Problem:
    """Validate and subsample the inputs, build the torch view and the measure."""
    cex = _points(cex, net.n_inputs, "cex")
    benign = _points(benign, net.n_inputs, "benign")
    if cex.shape[0] == 0:
        raise ValueError("no counterexample given: nothing to localize")
    if (spec.n_inputs, spec.n_outputs) != (net.n_inputs, net.n_outputs):
        raise ValueError("the spec's inputs/outputs do not match the network")
    rng = np.random.default_rng(options.seed)
    cex = subsample(cex, options.max_points, rng)
    benign = subsample(benign, options.max_points, rng)
    return Problem(layers=torch_layers(net), cex=torch.as_tensor(cex),
                   benign=torch.as_tensor(benign), measure=spec_measure(spec, cex),
                   hidden=hidden_layers(net, layer))


def active_share(problem: Problem) -> dict[int, np.ndarray]:
    """Share of the counterexamples on which each neuron is active (ReLU output > 0).

    A neuron inactive on every counterexample cannot be used by a patch of its outgoing
    weights (its value there is 0), however large its causal effect.
    """
    with torch.no_grad():
        post = trace(problem.layers, problem.cex)[1]
    return {k: (post[k] > 0).double().mean(dim=0).numpy() for k in problem.hidden}


def _flatten(result: LayerScores, method: str, params: dict) -> Ranking:
    """Order neurons: by score (global), or layer-major when ``layer_order`` is set."""
    order = result.layer_order or tuple(result.scores)
    layer = np.concatenate([np.full(result.scores[k].shape[0], k) for k in order])
    neuron = np.concatenate([np.arange(result.scores[k].shape[0]) for k in order])
    score = np.concatenate([result.scores[k] for k in order]).astype(np.float64)
    if not np.all(np.isfinite(score)):
        raise FloatingPointError(f"{method}: non-finite scores")
    if result.layer_order is None:
        idx = np.argsort(-score, kind="stable")
    else:  # stable sort by (layer position, -score)
        position = np.zeros(max(order) + 1, dtype=np.int64)
        position[list(order)] = np.arange(len(order))
        idx = np.lexsort((-score, position[layer]))
    extras = {name: np.concatenate([per[k] for k in order])[idx]
              for name, per in result.extras.items()}
    return Ranking(method=method, layer=layer[idx], neuron=neuron[idx], score=score[idx],
                   params=params, layer_scores=result.layer_scores, extras=extras)


def localize(net: AffineReluNet, cex: np.ndarray, benign: np.ndarray, spec: Spec,
             method: str = "causal", layer: LayerChoice = "last",
             options: LocalizeOptions = LocalizeOptions()) -> Ranking:
    """Rank the hidden neurons of ``layer`` by their blame for the violation of ``spec``.

    Requires: ``cex`` (N >= 1, n_in) counterexample inputs (inside a case box of ``spec``;
    a point outside all boxes is measured against the nearest box), ``benign`` (M, n_in)
    inputs the network gets right (M may be 0 for ``causal``, ``gradient``, ``random``).
    Returns a :class:`Ranking` of every neuron of the chosen layers, most suspicious first.
    Deterministic for a given ``options.seed``.
    """
    localizer = LOCALIZERS.get(method)
    if localizer is None:
        raise ValueError(f"unknown method '{method}' (available: "
                         f"{', '.join(sorted(LOCALIZERS))})")
    problem = prepare(net, cex, benign, spec, layer, options)
    start = time.perf_counter()
    result = localizer(problem, options)
    seconds = time.perf_counter() - start
    result = LayerScores(scores=result.scores,
                         extras={**result.extras, "cex_active": active_share(problem)},
                         layer_order=result.layer_order, layer_scores=result.layer_scores)
    params = {"method": method, "layers": list(problem.hidden), **options.params(),
              "n_cex": int(problem.cex.shape[0]), "n_benign": int(problem.benign.shape[0]),
              "seconds": round(seconds, 4)}
    log.info("localize %s: %d neurons in %.2f s", method, sum(
        v.shape[0] for v in result.scores.values()), seconds)
    return _flatten(result, method, params)


def ranking_text(ranking: Ranking, top: int | None = None) -> str:
    """A plain table: rank, layer, neuron, score (the first ``top`` rows)."""
    rows = ranking.top(len(ranking) if top is None else top)
    lines = [f"{'rank':>5} {'layer':>5} {'neuron':>6} {'score':>14}"]
    lines += [f"{i:>5} {l:>5} {j:>6} {s:>14.6g}" for i, (l, j, s) in enumerate(rows, 1)]
    return "\n".join(lines)
