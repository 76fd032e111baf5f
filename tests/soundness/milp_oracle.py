"""An exact MILP oracle for small ReLU networks (test-only, independent of verirepair's
own bounds and encodings): big-M encoding with interval bounds, solved by HiGHS through
scipy.optimize.milp.

``min_margin(net, box, c, d)`` is min over the box of max_r (c_r . f(x) - d_r): <= 0
means the disjunct {c y <= d} is reachable. Floating-point MILP: callers only trust
answers clear of zero by a tolerance.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from verirepair.net_types import AffineReluNet
from verirepair.spec_types import Box


def interval_preactivations(net: AffineReluNet, box: Box) -> list[tuple[np.ndarray, np.ndarray]]:
    lo, hi = box.lower.astype(np.float64), box.upper.astype(np.float64)
    out = []
    for layer in net.layers[:-1]:
        w, b = layer.weight, layer.bias
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        zl = mid @ w.T + b - rad @ np.abs(w).T
        zu = mid @ w.T + b + rad @ np.abs(w).T
        pad = 1e-6 * (1 + np.abs(zl) + np.abs(zu))
        out.append((zl - pad, zu + pad))
        lo, hi = np.maximum(zl - pad, 0), np.maximum(zu + pad, 0)
    return out


def min_margin(net: AffineReluNet, box: Box, c: np.ndarray, d: np.ndarray,
               time_limit: float = 60.0) -> float | None:
    """Exact (up to MILP tolerances) min-max margin; None if the solver did not finish."""
    pre = interval_preactivations(net, box)
    n_in = net.n_inputs
    # variable layout: x | per hidden layer (z, h, a) | t
    index = n_in
    layout = []
    for zl, _ in pre:
        w = zl.shape[0]
        layout.append((index, index + w, index + 2 * w))
        index += 3 * w
    t_col = index
    n_vars = index + 1
    lower = np.full(n_vars, -np.inf)
    upper = np.full(n_vars, np.inf)
    integrality = np.zeros(n_vars)
    lower[:n_in], upper[:n_in] = box.lower, box.upper
    rows: list[tuple[dict[int, float], float, float]] = []
    prev = list(range(n_in))
    for (zl, zu), (z0, h0, a0), layer in zip(pre, layout, net.layers[:-1]):
        w, b = layer.weight, layer.bias
        for j in range(zl.shape[0]):
            coeffs = {prev[i]: float(w[j, i]) for i in range(w.shape[1]) if w[j, i] != 0}
            coeffs[z0 + j] = -1.0
            rows.append((coeffs, -b[j], -b[j]))  # w h - z = -b
            lower[z0 + j], upper[z0 + j] = zl[j], zu[j]
            lower[h0 + j], upper[h0 + j] = 0.0, max(zu[j], 0.0)
            lower[a0 + j], upper[a0 + j] = 0.0, 1.0
            integrality[a0 + j] = 1
            rows.append(({h0 + j: 1.0, z0 + j: -1.0}, 0.0, np.inf))  # h >= z
            # h <= z - l (1 - a)  <=>  h - z - l a <= -l
            rows.append(({h0 + j: 1.0, z0 + j: -1.0, a0 + j: -zl[j]}, -np.inf, -zl[j]))
            rows.append(({h0 + j: 1.0, a0 + j: -max(zu[j], 0.0)}, -np.inf, 0.0))  # h <= u a
        prev = [h0 + j for j in range(zl.shape[0])]
    w, b = net.layers[-1].weight, net.layers[-1].bias
    for r in range(c.shape[0]):
        row_w = c[r] @ w  # over the last hidden layer (or x)
        coeffs = {prev[i]: float(row_w[i]) for i in range(row_w.shape[0]) if row_w[i] != 0}
        coeffs[t_col] = -1.0
        rows.append((coeffs, -np.inf, float(d[r] - c[r] @ b)))  # c(Wh + b) - d <= t
    a = lil_matrix((len(rows), n_vars))
    lo_r, hi_r = np.zeros(len(rows)), np.zeros(len(rows))
    for i, (coeffs, lo_v, hi_v) in enumerate(rows):
        for col, val in coeffs.items():
            a[i, col] = val
        lo_r[i], hi_r[i] = lo_v, hi_v
    cost = np.zeros(n_vars)
    cost[t_col] = 1.0
    res = milp(cost, constraints=LinearConstraint(a.tocsr(), lo_r, hi_r),
               integrality=integrality, bounds=Bounds(lower, upper),
               options={"time_limit": time_limit, "mip_rel_gap": 1e-9})
    if res.status != 0 or res.x is None:
        return None
    return float(res.fun)
