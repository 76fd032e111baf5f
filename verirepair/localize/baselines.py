"""Baseline localisers: gradient (CARE RQ3), activation divergence, seeded random order."""

from __future__ import annotations

import numpy as np
import torch

from verirepair.localize.measure import trace
from verirepair.localize.types import LayerScores, LocalizeOptions, NoBenignInputs, Problem


def gradient_scores(problem: Problem, options: LocalizeOptions) -> LayerScores:
    """Mean |d measure / d h| over the counterexamples, per hidden neuron.

    CARE's gradient baseline (§4.2, RQ3) ranks neurons by dy/dv, y the output value of
    interest and v the hidden neuron's value; here y is the violation measure (its active
    row), and the magnitude is averaged over the counterexamples. The gradient is taken
    w.r.t. the neuron's post-ReLU value, the same variable CARE intervenes on.
    """
    with torch.enable_grad():
        pre, post = trace(problem.layers, problem.cex.clone().requires_grad_(True))
        wanted = [post[k] for k in problem.hidden]
        grads = torch.autograd.grad(problem.measure(pre[-1]).sum(), wanted,
                                    allow_unused=True)
    out = {}
    for k, g, h in zip(problem.hidden, grads, wanted):
        g = torch.zeros_like(h) if g is None else g
        out[k] = g.abs().mean(dim=0).detach().numpy()
    return LayerScores(scores=out)


def activation_divergence(problem: Problem, options: LocalizeOptions) -> LayerScores:
    """|mean activation on counterexamples - mean activation on benign inputs| per neuron.

    In the units of the neuron's value (no normalisation): a neuron that behaves the
    same on violating and benign inputs scores 0.
    """
    if problem.benign.shape[0] == 0:
        raise NoBenignInputs("activation divergence needs benign inputs to compare with")
    with torch.no_grad():
        post_c = trace(problem.layers, problem.cex)[1]
        post_b = trace(problem.layers, problem.benign)[1]
    out = {k: (post_c[k].mean(dim=0) - post_b[k].mean(dim=0)).abs().numpy()
           for k in problem.hidden}
    return LayerScores(scores=out)


def random_scores(problem: Problem, options: LocalizeOptions) -> LayerScores:
    """Uniform random scores from ``seed``: a seeded random order (CARE's Random baseline)."""
    rng = np.random.default_rng(options.seed)
    sizes = {k: problem.layers[k][0].shape[0] for k in problem.hidden}
    return LayerScores(scores={k: rng.random(n) for k, n in sizes.items()})
