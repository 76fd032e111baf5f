"""SHARPEN's coarse-to-fine Deep SHAP localisation (SHARPEN, arXiv 2026, abstract).

SHARPEN quantifies each layer's and neuron's marginal contribution to the erroneous output
with Deep SHAP, reranks layers by their aggregated impact, then ranks the neurons of the
chosen layer by the activation divergence between property-violating and benign states.

Deep SHAP (Lundberg & Lee 2017) averages DeepLIFT attributions over a background set.
Here: the background is ``background`` benign inputs r (seeded choice), the explained
value is the violation measure at each counterexample x, linearised at x (the measure is
a max/min of linear rows; we keep the row active at x). For a hidden neuron j of layer k,

    phi_j(x, r) = (h_j(x) - h_j(r)) * m_j(x, r),

the activation divergence between the violating and the benign state times the DeepLIFT
multiplier from h_j to the measure, propagated back with the rescale rule at every ReLU
(``(relu(z_x) - relu(z_r)) / (z_x - z_r)``, the gradient where z_x = z_r). This is exact
DeepLIFT for ReLU networks, so per layer sum_j phi_j(x, r) = g(x) - g(r) for the active
linear piece g. Neuron score: mean of phi over all (x, r) pairs (positive = pushes the
output into the unsafe set, relative to benign behaviour). Layer impact (coarse step):
sum over its neurons of |mean phi|.

Approximations, stated: only the SHARPEN abstract is available, so the aggregation of the
layer impact (sum of |phi|) and the background size (100, the size the Deep SHAP
documentation suggests) are our choices.
"""

from __future__ import annotations

import numpy as np
import torch

from verirepair.localize.measure import trace
from verirepair.localize.types import (LayerScores, Layers, LocalizeOptions, NoBenignInputs,
                                       Problem, Tensor)

TINY = 1e-12


def measure_gradient(problem: Problem) -> Tensor:
    """(N, n_out): gradient of the measure w.r.t. the output at each counterexample."""
    y = trace(problem.layers, problem.cex)[0][-1].detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(problem.measure(y).sum(), y)
    return grad


def rescale(z_x: Tensor, z_r: Tensor) -> Tensor:
    """DeepLIFT rescale multiplier of a ReLU between reference and input pre-activations."""
    dz = z_x - z_r
    ratio = (torch.relu(z_x) - torch.relu(z_r)) / torch.where(dz.abs() > TINY, dz, 1.0)
    return torch.where(dz.abs() > TINY, ratio, (z_x > 0).to(z_x.dtype))


def pair_attributions(layers: Layers, gx: Tensor, pre_x: list[Tensor], post_x: list[Tensor],
                      pre_r: list[Tensor], post_r: list[Tensor]) -> list[Tensor]:
    """Mean over references of phi for each hidden layer: list of (N, n_k).

    ``pre_x``/``post_x`` hold (N, 1, n) tensors, ``pre_r``/``post_r`` (1, B, n).
    """
    mult = gx[:, None, :]  # multiplier w.r.t. the output, (N, 1, n_out)
    phis: list[Tensor] = []
    for k in range(len(layers) - 2, -1, -1):  # hidden layer k feeds affine layer k+1
        m_post = mult @ layers[k + 1][0]  # (N, B, n_k)
        phis.append(((post_x[k] - post_r[k]) * m_post).mean(dim=1))
        mult = m_post * rescale(pre_x[k], pre_r[k])
    return phis[::-1]


def deep_shap(problem: Problem, options: LocalizeOptions) -> dict[int, np.ndarray]:
    """Mean Deep SHAP value of every hidden neuron of every hidden layer."""
    if problem.benign.shape[0] == 0:
        raise NoBenignInputs("shap needs benign inputs as Deep SHAP background")
    rng = np.random.default_rng(options.seed)
    n_bg = min(options.background, problem.benign.shape[0])
    pick = torch.as_tensor(np.sort(rng.choice(problem.benign.shape[0], n_bg, replace=False)))
    layers = problem.layers
    with torch.enable_grad():
        gx = measure_gradient(problem)
    with torch.no_grad():
        pre_r, post_r = trace(layers, problem.benign[pick])
        width = max(w.shape[0] for w, _ in layers)
        step = max(1, options.chunk_elements // (n_bg * width * 4))
        sums: list[Tensor] | None = None
        for start in range(0, problem.cex.shape[0], step):
            xs = problem.cex[start:start + step]
            pre_x, post_x = trace(layers, xs)
            phis = pair_attributions(layers, gx[start:start + step],
                                     [p[:, None] for p in pre_x], [p[:, None] for p in post_x],
                                     [p[None] for p in pre_r], [p[None] for p in post_r])
            part = [p.sum(dim=0) for p in phis]
            sums = part if sums is None else [a + b for a, b in zip(sums, part)]
    n = problem.cex.shape[0]
    return {k: (s / n).numpy() for k, s in enumerate(sums or [])}


def shap_ranking(problem: Problem, options: LocalizeOptions) -> LayerScores:
    """Coarse-to-fine: layers by aggregated |phi|, then neurons by mean phi."""
    phi = deep_shap(problem, options)
    impact = {k: float(np.abs(v).sum()) for k, v in phi.items()}
    chosen = sorted(problem.hidden, key=lambda k: -impact[k])
    return LayerScores(scores={k: phi[k] for k in problem.hidden}, layer_order=tuple(chosen),
                       layer_scores=impact)
