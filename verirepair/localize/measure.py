"""The violation measure of a property and batched forward passes through hidden layers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from verirepair.errors import SpecError
from verirepair.localize.types import Layers, Tensor
from verirepair.spec_types import Spec
from verirepair.verify.problem import CaseTensors, case_tensors, unsafe_margin


def violation_measure(y: Tensor, case: CaseTensors) -> Tensor:
    """How deep each output lies inside the case's unsafe set: (..., n_out) -> (...).

    ``max over disjuncts of min over their rows of (rhs - matrix @ y)``: >= 0 exactly when
    y satisfies every row of some unsafe disjunct (the property is violated there), and
    the value is the slack of the least-satisfied row of the best disjunct, in output
    units. Negative values say how far (in the same units) the output is from violating.
    Piecewise linear in y, so autograd gives the active row's gradient.
    """
    flat = y.reshape(-1, y.shape[-1])
    return (-unsafe_margin(case, flat)).reshape(y.shape[:-1])


def assign_cases(x: np.ndarray, spec: Spec) -> np.ndarray:
    """(N,) index of the case whose box contains each point (else the nearest box).

    Distance is the L-infinity distance outside the box; ties go to the first case, so a
    point inside several boxes is measured against the first of them.
    """
    lower = np.stack([c.box.lower for c in spec.cases])  # (C, n)
    upper = np.stack([c.box.upper for c in spec.cases])
    outside = np.maximum(lower[None] - x[:, None], x[:, None] - upper[None]).clip(min=0.0)
    return outside.max(axis=2).argmin(axis=1)


@dataclass(frozen=True)
class SpecMeasure:
    """The violation measure of N fixed inputs, each against its own case.

    Calling it maps outputs (..., N, n_out) -- batched interventions over the same N
    inputs -- to (..., N).
    """

    cases: tuple[CaseTensors, ...]
    case_of: Tensor  # (N,) long

    def __call__(self, y: Tensor) -> Tensor:
        if len(self.cases) == 1:
            return violation_measure(y, self.cases[0])
        per_case = torch.stack([violation_measure(y, ct) for ct in self.cases], dim=-1)
        index = self.case_of.expand(per_case.shape[:-1]).unsqueeze(-1)
        return per_case.gather(-1, index).squeeze(-1)


def spec_measure(spec: Spec, x: np.ndarray) -> SpecMeasure:
    """The measure for the points ``x`` (N, n_in) of ``spec``.

    Raises SpecError when a disjunct has no rows (every output is unsafe: there is nothing
    a neuron could change).
    """
    cases = tuple(case_tensors(c, spec.n_outputs) for c in spec.cases)
    for index, ct in enumerate(cases):
        if ct.trivially_unsafe:
            raise SpecError(f"case {index}: an unsafe disjunct has no output constraint, "
                            "every output is unsafe; there is nothing to localize",
                            spec.source)
    return SpecMeasure(cases=cases, case_of=torch.as_tensor(assign_cases(x, spec)))


def trace(layers: Layers, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Pre-activations of every affine layer and post-ReLU values of the hidden ones.

    Returns (pre, post): ``pre[k]`` (N, n_k) for every layer (``pre[-1]`` is the output),
    ``post[k] = relu(pre[k])`` for the hidden layers only.
    """
    pre, post = [], []
    h = x
    for k, (w, b) in enumerate(layers):
        z = h @ w.T + b
        pre.append(z)
        if k < len(layers) - 1:
            h = torch.relu(z)
            post.append(h)
    return pre, post


def forward_from_pre(layers: Layers, k: int, z: Tensor) -> Tensor:
    """Finish the forward pass from the pre-activation ``z`` (..., n_k) of layer ``k``."""
    h = z
    last = len(layers) - 1
    for i in range(k, last + 1):
        if i > k:
            w, b = layers[i]
            h = h @ w.T + b
        if i < last:
            h = torch.relu(h)
    return h
