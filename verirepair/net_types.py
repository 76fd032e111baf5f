"""Plain data for the lowered network: affine maps with ReLU between them.

Every supported ONNX graph is lowered to ``f(x) = A_L(relu(A_{L-1}(... relu(A_1(x)))))``
over the flattened input, in float64 (the float32 weights are exactly representable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Affine:
    """``y = weight @ x + bias``; weight (out, in), bias (out,), both float64."""

    weight: np.ndarray
    bias: np.ndarray

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])


@dataclass(frozen=True)
class AffineReluNet:
    """Affine layers; a ReLU follows every layer except the last."""

    layers: tuple[Affine, ...]

    @property
    def n_inputs(self) -> int:
        return self.layers[0].n_in

    @property
    def n_outputs(self) -> int:
        return self.layers[-1].n_out

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Evaluate on a batch ``x`` of shape (N, n_inputs) in float64."""
        h = np.asarray(x, dtype=np.float64)
        for i, layer in enumerate(self.layers):
            h = h @ layer.weight.T + layer.bias
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h
