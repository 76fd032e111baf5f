"""Sound output bounds over a batch of input boxes.

The methods share one call shape ``method(layers, lower, upper, ...)``:

- :func:`interval_bounds` — interval bound propagation (IBP).
- :func:`symbolic_bounds` — forward linear bounds in terms of the input (symbolic
  intervals, DeepPoly/CROWN-style ReLU relaxation), intersected with IBP; cheap when the
  input dimension is small. Gives the pre-activation bounds of every hidden layer.
- :func:`spec_lower_bounds` — backward linear relaxation (CROWN) of ``C @ y - d`` using
  given hidden-layer bounds; returns the lower bounds and the input-space linear
  coefficients (used to choose split dimensions and candidate counterexamples).
  With :class:`Splits` it bounds a subproblem of ReLU splitting (beta-CROWN).
- :func:`crown_hidden_bounds` — the hidden layers' bounds by backward CROWN.
- :func:`optimized_spec_lower_bounds` (alpha-CROWN: optimised lower ReLU slopes) and
  :func:`optimized_split_lower_bounds` (alpha-beta-CROWN: slopes and split multipliers).

Soundness under floating point: all arithmetic is float64 on float32-exact weights and
every concrete bound is widened outward by ``REL_MARGIN`` times the magnitude of the terms
that produced it (plus ``ABS_MARGIN``). That magnitude includes the rounding of the
linear functions themselves: a computed coefficient vector (e.g. c @ W, or a product of
symbolic coefficients with W) may have cancelled to almost nothing while the exact
products were huge, so every such product also adds |coefficients| @ |W| times a bound
on |input of W| (the ``zmag`` terms below). REL_MARGIN is many orders of magnitude above
the float64 rounding error of these sums (n * 2^-53 for n-term sums, n up to
``MAX_SUM_TERMS`` = 10^5: wider layers are refused at load), so rounding cannot turn an
unprovable bound into a proof.
Reference: Zhang et al., "Efficient Neural Network Robustness Certification with General
Activation Functions" (CROWN), NeurIPS 2018; Singh et al., DeepPoly, POPL 2019.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor
Layers = list[tuple[Tensor, Tensor]]

REL_MARGIN = 1e-10
ABS_MARGIN = 1e-12
# The widest sum the margin covers: an n-term float64 sum errs by at most about
# n * 2^-53 of its terms' magnitude, 1.1e-11 at n = 10^5, a ninth of REL_MARGIN. A lowered
# layer with more inputs or outputs (the backward pass sums over its outputs) is refused
# at load (network.load_network).
MAX_SUM_TERMS = 100_000


@dataclass(frozen=True)
class HiddenBounds:
    """Pre-activation bounds of every hidden layer, each (N, width)."""

    lower: tuple[Tensor, ...]
    upper: tuple[Tensor, ...]

    def select(self, mask: Tensor) -> "HiddenBounds":
        """The bounds of the boxes chosen by ``mask`` (boolean or index)."""
        return HiddenBounds(tuple(t[mask] for t in self.lower),
                            tuple(t[mask] for t in self.upper))


def pack_hidden(hidden: HiddenBounds, n: int) -> Tensor:
    """(N, 2, H) float32 copy, rounded outward (lower down, upper up): still sound.
    ``n`` is the number of boxes (needed when there is no hidden layer)."""
    if not hidden.lower:
        return torch.zeros((n, 2, 0), dtype=torch.float32)
    lo = torch.cat(hidden.lower, dim=1)
    hi = torch.cat(hidden.upper, dim=1)
    lo32, hi32 = lo.to(torch.float32), hi.to(torch.float32)
    lo32 = torch.where(lo32.to(lo.dtype) > lo, torch.nextafter(lo32, lo32.new_tensor(-torch.inf)),
                       lo32)
    hi32 = torch.where(hi32.to(hi.dtype) < hi, torch.nextafter(hi32, hi32.new_tensor(torch.inf)),
                       hi32)
    return torch.stack([lo32, hi32], dim=1)


def unpack_hidden(packed: Tensor, widths: list[int]) -> HiddenBounds:
    lo = packed[:, 0].to(torch.float64).split(widths, dim=1)
    hi = packed[:, 1].to(torch.float64).split(widths, dim=1)
    return HiddenBounds(tuple(lo), tuple(hi))


@dataclass(frozen=True)
class SpecBounds:
    """Lower bounds of ``C @ f(x) - d`` per box and row, with their input coefficients."""

    lower: Tensor  # (N, R)
    coef: Tensor  # (N, R, n_in): lower >= coef @ x + const on the box


def _outward(value: Tensor, magnitude: Tensor, direction: float) -> Tensor:
    return value + direction * (REL_MARGIN * magnitude + ABS_MARGIN)


def _affine_interval(w: Tensor, b: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    mid = (hi + lo) / 2
    rad = (hi - lo) / 2
    c = mid @ w.T + b
    r = rad @ w.abs().T
    mag = mid.abs() @ w.abs().T + r + b.abs()
    return _outward(c - r, mag, -1.0), _outward(c + r, mag, 1.0)


def interval_bounds(layers: Layers, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """IBP bounds of the network output over boxes (N, n_in) -> two (N, n_out)."""
    lo, hi = lower, upper
    for i, (w, b) in enumerate(layers):
        lo, hi = _affine_interval(w, b, lo, hi)
        if i < len(layers) - 1:
            lo, hi = lo.clamp_min(0), hi.clamp_min(0)
    return lo, hi


def _augment(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Box in homogeneous form: mid' = (mid, 1), rad' = (rad, 0), and |mid'| + rad'."""
    n = lower.shape[0]
    one = torch.ones((n, 1), dtype=lower.dtype)
    mid = torch.cat([(upper + lower) / 2, one], dim=1)
    rad = torch.cat([(upper - lower) / 2, torch.zeros_like(one)], dim=1)
    return mid, rad, mid.abs() + rad


def _size_weighted(coef: Tensor, size: Tensor) -> Tensor:
    """(N, m): sum_i size_i |coef_i| -- the magnitude of evaluating ``coef`` on the box."""
    return (size.unsqueeze(-1) * coef.abs()).sum(1)


def chord_slope(upper: Tensor, lower: Tensor) -> Tensor:
    """The slope u / (u - l) of the chord above relu on [l, u] (l < 0 < u), NaN where
    u - l overflows: a slope of 0 there would drop the neuron from the upper relaxation
    (a wrong 'holds' on boxes near the float64 range); NaN proves nothing."""
    width = upper - lower
    return torch.where(torch.isfinite(width), upper / width.clamp_min(1e-300),
                       torch.full_like(width, torch.nan))


def _range(coef: Tensor, mid: Tensor, rad: Tensor, size: Tensor, err: Tensor
           ) -> tuple[Tensor, Tensor]:
    """Outward-widened [min, max] of the linear functions ``coef`` (N, n+1, m) on the box;
    ``err`` (N, m) is the magnitude of the rounding already in ``coef`` (see module)."""
    absc = coef.abs()
    centre = (mid.unsqueeze(-1) * coef).sum(1)  # batched vector-matrix products:
    spread = (rad.unsqueeze(-1) * absc).sum(1)  # elementwise + sum beats bmm on CPU here
    mag = (size.unsqueeze(-1) * absc).sum(1) + err
    return _outward(centre - spread, mag, -1.0), _outward(centre + spread, mag, 1.0)


def _relu_forward(lo_f: Tensor, up_f: Tensor, l: Tensor, u: Tensor, mid: Tensor,
                  rad: Tensor, size: Tensor, err: Tensor) -> tuple[Tensor, Tensor]:
    """Relax relu(z) for L(x) <= z <= U(x), l <= z <= u; returns new (L, U) functions.

    Functions are (N, n+1, m) with the constant in the last input row; ``err`` as in
    :func:`_range`.
    """
    # Upper: relu(z) <= relu(U(x)) <= chord of relu over [min U, max U] applied to U(x).
    lu, uu = _range(up_f, mid, rad, size, err)
    dead = u <= 0
    straddle = (lu < 0) & (uu > 0) & ~dead
    s_up = torch.where(dead, torch.zeros_like(u),
                       torch.where(straddle, chord_slope(uu, lu), (lu >= 0).to(u.dtype)))
    new_up = up_f * s_up.unsqueeze(1)
    new_up[:, -1, :] -= torch.where(straddle, s_up * lu, torch.zeros_like(u))
    # Lower: relu(z) >= alpha * L(x) for any alpha in [0, 1]; 1 if mostly active else 0.
    ul = torch.minimum(_range(lo_f, mid, rad, size, err)[1], u)
    alpha = torch.where(l >= 0, torch.ones_like(l),
                        torch.where(ul <= 0, torch.zeros_like(l), (ul > -l).to(l.dtype)))
    return lo_f * alpha.unsqueeze(1), new_up


def _affine_forward(lo_f: Tensor, up_f: Tensor, w: Tensor, b: Tensor
                    ) -> tuple[Tensor, Tensor]:
    n, k, m = lo_f.shape
    wp, wn = w.clamp_min(0).T, w.clamp_max(0).T
    flat_lo, flat_up = lo_f.reshape(n * k, m), up_f.reshape(n * k, m)
    new_lo = (flat_lo @ wp + flat_up @ wn).reshape(n, k, -1)
    new_up = (flat_up @ wp + flat_lo @ wn).reshape(n, k, -1)
    new_lo[:, -1, :] += b
    new_up[:, -1, :] += b
    return new_lo, new_up


def symbolic_bounds(layers: Layers, lower: Tensor, upper: Tensor,
                    prior: HiddenBounds | None = None) -> HiddenBounds:
    """Pre-activation bounds of every hidden layer by forward symbolic propagation.

    Requires: boxes (N, n_in) with lower <= upper; optional ``prior`` bounds known to be
    valid on these boxes (e.g. a parent box's), intersected layer by layer before the
    ReLU relaxation. Returns HiddenBounds for the len(layers) - 1 hidden layers.
    Sound: yes (outward-widened float64), intersected with interval bounds.
    """
    mid, rad, size = _augment(lower, upper)
    n = lower.shape[0]
    w0, b0 = layers[0]
    first = torch.cat([w0.T, b0.unsqueeze(0)], dim=0).unsqueeze(0).expand(n, -1, -1)
    lo_f, up_f = first, first
    err = torch.zeros((n, w0.shape[0]), dtype=lower.dtype)  # the first layer is exact
    ibp_lo, ibp_hi = lower, upper
    lows: list[Tensor] = []
    ups: list[Tensor] = []
    for i in range(len(layers) - 1):
        w, b = layers[i]
        ibp_lo, ibp_hi = _affine_interval(w, b, ibp_lo, ibp_hi)
        if i > 0:
            # rounding of the new coefficients (and of the ReLU slopes before them):
            # bounded by |W| times the magnitudes of the functions it multiplies
            err = ((err + _size_weighted(lo_f, size) + _size_weighted(up_f, size))
                   @ w.abs().T + b.abs())
            lo_f, up_f = _affine_forward(lo_f, up_f, w, b)
        l = torch.maximum(_range(lo_f, mid, rad, size, err)[0], ibp_lo)
        u = torch.minimum(_range(up_f, mid, rad, size, err)[1], ibp_hi)
        if prior is not None:
            l = torch.maximum(l, prior.lower[i])
            u = torch.minimum(u, prior.upper[i])
        u = torch.maximum(u, l)
        lows.append(l)
        ups.append(u)
        ibp_lo, ibp_hi = l.clamp_min(0), u.clamp_min(0)
        lo_f, up_f = _relu_forward(lo_f, up_f, l, u, mid, rad, size, err)
    return HiddenBounds(tuple(lows), tuple(ups))


@dataclass(frozen=True)
class Splits:
    """ReLU split constraints of a batch of subproblems: ``signs[k]`` (N, width_k) is +1
    where the subproblem requires z >= 0 (active), -1 where it requires z <= 0
    (inactive), 0 where the neuron is free; ``betas[k]`` (N, R, width_k) >= 0 are the
    Lagrange multipliers of those constraints per spec row (beta-CROWN: any betas >= 0
    give a sound bound on the subproblem, because beta * sign * z >= 0 there)."""

    signs: list[Tensor]
    betas: list[Tensor]


def spec_lower_bounds(layers: Layers, hidden: HiddenBounds, lower: Tensor, upper: Tensor,
                      c: Tensor, d: Tensor, alphas: list[Tensor] | None = None,
                      splits: Splits | None = None, trace: list[Tensor] | None = None
                      ) -> SpecBounds:
    """CROWN lower bounds of ``c @ f(x) - d`` for every box and row.

    Requires: hidden bounds valid on these boxes; c (R, n_out), d (R,); optional lower
    ReLU slopes ``alphas[k]`` (N, R, width_k) in [0, 1] (any such slopes are sound).
    With ``splits`` the bound holds on the subproblem {x in box : the split constraints},
    and the hidden bounds need only be valid there (split neurons clamped at 0). With
    ``trace`` the coefficients of every hidden layer's post-ReLU values (N, R, width_k)
    are appended, deepest layer first (used to choose ReLU splits).
    Returns: SpecBounds; sound (outward-widened float64); exact when no ReLU is unstable.
    """
    n = lower.shape[0]
    w_last, b_last = layers[-1]
    lam = (c @ w_last).unsqueeze(0).expand(n, -1, -1)  # (N, R, width)
    const = (c @ b_last - d).unsqueeze(0).expand(n, -1)
    # |c| (|W| |h| + |b|) + |d|: covers the rounding of c @ W (and c @ b) on any h of
    # the last hidden layer (module docstring)
    zmag = _input_size(hidden, len(layers) - 2, lower, upper) @ w_last.abs().T + b_last.abs()
    mag = zmag @ c.abs().T + d.abs()
    lb, coef, _ = _backward_lower(layers, hidden, len(layers) - 1, lam, const, mag, lower,
                                  upper, alphas, splits, trace)
    return SpecBounds(lower=lb, coef=coef)


def initial_alphas(hidden: HiddenBounds, rows: int) -> list[Tensor]:
    """CROWN's adaptive lower slopes (1 if u > -l else 0), one copy per spec row."""
    return [(u > -l).to(l.dtype).unsqueeze(1).expand(-1, rows, -1).clone()
            for l, u in zip(hidden.lower, hidden.upper)]


@dataclass
class _Adam:
    """Projected Adam state for a list of slope tensors (torch.optim's Adam would import
    torch._dynamo on first use: ~1.3 s of CPU per process)."""

    lr: float
    m: list[Tensor]
    v: list[Tensor]
    t: int = 0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


def _adam_step(state: _Adam, params: list[Tensor], grads: list[Tensor],
               ceilings: list[float] | None = None) -> list[Tensor]:
    """One Adam step (minimising), then projection onto [0, ceiling] (default 1 for
    every parameter); returns new tensors."""
    ceilings = ceilings or [1.0] * len(params)
    state.t += 1
    b1, b2 = state.beta1, state.beta2
    out = []
    for i, (p, g, top) in enumerate(zip(params, grads, ceilings)):
        state.m[i] = b1 * state.m[i] + (1 - b1) * g
        state.v[i] = b2 * state.v[i] + (1 - b2) * g * g
        m_hat = state.m[i] / (1 - b1 ** state.t)
        v_hat = state.v[i] / (1 - b2 ** state.t)
        out.append((p - state.lr * m_hat / (v_hat.sqrt() + state.eps)).clamp(0.0, top))
    return out


def optimized_spec_lower_bounds(layers: Layers, hidden: HiddenBounds, lower: Tensor,
                                upper: Tensor, c: Tensor, d: Tensor, steps: int = 8,
                                lr: float = 0.3, initial: SpecBounds | None = None
                                ) -> SpecBounds:
    """alpha-CROWN on the output rows: lower ReLU slopes optimised by projected Adam.

    Hidden bounds stay fixed; every iterate is a valid bound (any slopes in [0, 1] are),
    the best per row is kept. ``initial``: the plain CROWN bound with these hidden
    bounds, if already computed. Returns detached tensors.
    Reference: Xu et al., "Fast and Complete" (alpha-CROWN), ICLR 2021.
    """
    best = initial or spec_lower_bounds(layers, hidden, lower, upper, c, d)
    best_lb, best_coef = best.lower.detach().clone(), best.coef.detach().clone()
    alphas = initial_alphas(hidden, c.shape[0])
    if not alphas:  # no hidden layer: CROWN is already exact
        return SpecBounds(lower=best_lb, coef=best_coef)
    best_lb, best_coef, _ = _adam_best_bound(
        alphas, [1.0] * len(alphas), lr, steps, best_lb, best_coef,
        lambda live, last: spec_lower_bounds(layers, hidden, lower, upper, c, d, live))
    return SpecBounds(lower=best_lb, coef=best_coef)


BoundOf = Callable[[list[Tensor], bool], SpecBounds]


def _adam_best_bound(params: list[Tensor], ceilings: list[float], lr: float, steps: int,
                     best_lb: Tensor, best_coef: Tensor, bound: BoundOf
                     ) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Maximise ``bound(params, last)`` (a sound bound for any parameters in [0, ceiling])
    by ``steps`` projected Adam steps; keeps the best bound per row (starting from
    ``best_lb``/``best_coef``). Returns (best lower, its coefficients, last parameters).
    ``last`` tells ``bound`` that no gradient will be taken."""
    state = _Adam(lr, [torch.zeros_like(p) for p in params],
                  [torch.zeros_like(p) for p in params])
    for step in range(steps + 1):
        last = step == steps
        with torch.enable_grad():
            live = [p.detach().requires_grad_(not last) for p in params]
            sb = bound(live, last)
            if not last:
                grads = torch.autograd.grad(-sb.lower.sum(), live)
        lb = sb.lower.detach()
        better = lb > best_lb
        best_lb = torch.where(better, lb, best_lb)
        best_coef = torch.where(better.unsqueeze(-1), sb.coef.detach(), best_coef)
        if not last:
            params = _adam_step(state, [p.detach() for p in params],
                                [g.detach() for g in grads], ceilings)
    return best_lb, best_coef, [p.detach() for p in params]


@dataclass(frozen=True)
class SplitParams:
    """What :func:`optimized_split_lower_bounds` optimised, to start from next time (a
    subproblem's children inherit it): per hidden layer the lower slopes and the scaled
    split multipliers, each (N, R, width_k)."""

    alphas: list[Tensor]
    gammas: list[Tensor]


def optimized_split_lower_bounds(layers: Layers, hidden: HiddenBounds, lower: Tensor,
                                 upper: Tensor, c: Tensor, d: Tensor, signs: list[Tensor],
                                 steps: int = 10, lr: float = 0.3, beta_lr: float = 0.05,
                                 trace: list[Tensor] | None = None,
                                 start: SplitParams | None = None
                                 ) -> tuple[SpecBounds, SplitParams]:
    """alpha-beta-CROWN on subproblems of ReLU splitting: the lower ReLU slopes (in
    [0, 1]) and the multipliers of the split constraints (>= 0, only where a neuron is
    split) optimised together by projected Adam, from ``start`` if given (else CROWN's
    slopes and zero multipliers); the best bound per row is kept.

    Requires: ``hidden`` valid on every subproblem (split neurons clamped at 0) and
    ``signs[k]`` (N, width_k) in {-1, 0, +1}. Sound: every iterate is a valid bound
    (:class:`Splits`; slopes are projected onto [0, 1], multipliers onto >= 0, and
    multipliers of unsplit neurons are masked out). ``trace`` receives the post-ReLU
    coefficients of the last iterate. A multiplier moves by about ``beta_lr`` times the
    size of the rows' coefficients on its layer per step (:func:`_row_scale`).
    Returns the bounds and the last iterate's parameters.
    Reference: Wang et al., "Beta-CROWN", NeurIPS 2021.
    """
    n, rows = lower.shape[0], c.shape[0]
    if start is None:
        alphas = initial_alphas(hidden, rows)
        gammas = [torch.zeros((n, rows, s.shape[1]), dtype=lower.dtype) for s in signs]
    else:
        # NaN (from a diverged step) restarts at 0: still sound, only looser
        alphas = [a.to(lower.dtype).nan_to_num(0.0).clamp(0.0, 1.0) for a in start.alphas]
        gammas = [g.to(lower.dtype).nan_to_num(0.0, posinf=0.0).clamp_min(0.0)
                  for g in start.gammas]
    k = len(alphas)
    if not k:  # no hidden layer: nothing to optimise, CROWN is exact
        return (spec_lower_bounds(layers, hidden, lower, upper, c, d, trace=trace),
                SplitParams([], []))
    factor = [(s != 0).to(lower.dtype).unsqueeze(1) * (sc * beta_lr / lr)
              for s, sc in zip(signs, _row_scale(layers, c))]
    best_lb = torch.full((n, rows), -torch.inf, dtype=lower.dtype)
    best_coef = torch.zeros((n, rows, lower.shape[1]), dtype=lower.dtype)

    def bound(live: list[Tensor], last: bool) -> SpecBounds:
        split = Splits(signs, [g * f for g, f in zip(live[k:], factor)])
        return spec_lower_bounds(layers, hidden, lower, upper, c, d, live[:k], split,
                                 trace if last else None)

    best_lb, best_coef, params = _adam_best_bound(
        alphas + gammas, [1.0] * k + [torch.inf] * len(gammas), lr, steps, best_lb,
        best_coef, bound)
    return SpecBounds(lower=best_lb, coef=best_coef), SplitParams(params[:k], params[k:])


def _row_scale(layers: Layers, c: Tensor) -> list[float]:
    """Per hidden layer: the mean |coefficient| of the spec rows on that layer's
    outputs through |W| (a size for the split multipliers)."""
    out = []
    lam = c.abs() @ layers[-1][0].abs()
    for k in range(len(layers) - 2, -1, -1):
        out.append(float(lam.mean()) or 1.0)
        lam = lam @ layers[k][0].abs()
    return out[::-1]


def gradient_smear(layers: Layers, hidden: HiddenBounds, out_weight: Tensor,
                   lower: Tensor, upper: Tensor) -> Tensor:
    """ReluVal's smear: width_i x max |d(out_weight @ f)/dx_i| over the box, per box.

    ``out_weight`` (N, n_out) is the output combination whose sensitivity matters. The
    gradient is bounded by interval arithmetic through the ReLU derivative intervals
    given by the hidden bounds ([1,1] active, [0,0] inactive, [0,1] unstable). Used only
    to choose split dimensions (no soundness role).
    """
    w_last, _ = layers[-1]
    g_lo = out_weight @ w_last
    g_hi = g_lo
    for k in range(len(layers) - 2, -1, -1):
        l, u = hidden.lower[k], hidden.upper[k]
        d_lo = (l >= 0).to(l.dtype)
        d_hi = (u > 0).to(u.dtype)
        g_lo, g_hi = (torch.where(g_lo >= 0, g_lo * d_lo, g_lo * d_hi),
                      torch.where(g_hi >= 0, g_hi * d_hi, g_hi * d_lo))
        w = layers[k][0]
        wp, wn = w.clamp_min(0), w.clamp_max(0)
        g_lo, g_hi = g_lo @ wp + g_hi @ wn, g_hi @ wp + g_lo @ wn
    return torch.maximum(g_lo.abs(), g_hi.abs()) * (upper - lower)


def _input_size(hidden: HiddenBounds, k: int, lower: Tensor, upper: Tensor) -> Tensor:
    """(N, width): a bound on |h_k|, the post-ReLU values of hidden layer ``k`` (the
    input box for k = -1)."""
    if k < 0:
        return torch.maximum(lower.abs(), upper.abs())
    return hidden.upper[k].clamp_min(0)


def _backward_lower(layers: Layers, hidden: HiddenBounds, depth: int, lam: Tensor,
                    const: Tensor, mag: Tensor, lower: Tensor, upper: Tensor,
                    alphas: list[Tensor] | None = None, splits: Splits | None = None,
                    trace: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Back-substitute ``lam @ z_depth + const`` (z_depth = pre-activation of hidden layer
    ``depth``, or the output when depth == len(layers)-1) down to the input.

    ``splits``: subtract beta * sign * z_k at every hidden layer (sound on the subproblem,
    see :class:`Splits`). Returns (lower bound widened, input coefficients, constant) per
    box and row.
    """
    for k in range(depth - 1, -1, -1):
        l, u = hidden.lower[k], hidden.upper[k]
        if trace is not None:
            trace.append(lam)
        unstable = (l < 0) & (u > 0)
        s_up = torch.where(unstable, chord_slope(u, l), (l >= 0).to(l.dtype))
        if alphas is not None:
            alpha = torch.where(unstable.unsqueeze(1), alphas[k],
                                (l >= 0).to(l.dtype).unsqueeze(1))
        else:
            alpha = torch.where(unstable, (u > -l).to(l.dtype),
                                (l >= 0).to(l.dtype)).unsqueeze(1)
        # shift >= 0, so |lam_neg| . |shift| = -(lam_neg . shift): one product serves both.
        shift = torch.where(unstable, -s_up * l, torch.zeros_like(l))
        shifted = (lam.clamp_max(0) * shift.unsqueeze(1)).sum(-1)
        const = const + shifted
        mag = mag - shifted
        lam = lam * torch.where(lam >= 0, alpha, s_up.unsqueeze(1))
        w, b = layers[k]
        # |lam| (|W| |h_{k-1}| + |b|) >= |lam| |z_k|: covers the rounding of lam @ W, of
        # lam @ b and of the slopes just applied to lam (module docstring)
        zmag = _input_size(hidden, k - 1, lower, upper) @ w.abs().T + b.abs()
        if splits is not None:
            # lam z >= (lam - beta sign) z where sign z >= 0; the rounding of the
            # subtraction is covered by |beta| |z_k| (a rounded beta is still >= 0 up to
            # that term)
            term = splits.betas[k] * splits.signs[k].unsqueeze(1)
            lam = lam - term
            mag = mag + (term.abs() * zmag.unsqueeze(1)).sum(-1)
        const = const + lam @ b
        mag = mag + (lam.abs() * zmag.unsqueeze(1)).sum(-1)
        lam = lam @ w
    mid = (upper + lower) / 2
    rad = (upper - lower) / 2
    centre = torch.bmm(lam, mid.unsqueeze(-1)).squeeze(-1)
    absl = lam.abs()
    spread = torch.bmm(absl, rad.unsqueeze(-1)).squeeze(-1)
    mag = mag + torch.bmm(absl, (mid.abs() + rad).unsqueeze(-1)).squeeze(-1)
    lower_bound = _outward(centre + const - spread, mag, -1.0)
    return lower_bound, lam, const - (lower_bound - (centre + const - spread))


def _refine_rows(layers: Layers, hb: HiddenBounds, k: int, idx: Tensor, lower: Tensor,
                 upper: Tensor) -> tuple[Tensor, Tensor]:
    """CROWN lower/upper bounds of the layer-k pre-activations ``idx`` (N, K) per box."""
    w, b = layers[k]
    rows_w, rows_b = w[idx], b[idx]  # (N, K, m), (N, K)
    lam = torch.cat([rows_w, -rows_w], dim=1)
    const = torch.cat([rows_b, -rows_b], dim=1)
    lb, _, _ = _backward_lower(layers, hb, k, lam, const, const.abs(), lower, upper)
    kk = idx.shape[1]
    return lb[:, :kk], -lb[:, kk:]


def _refine_into(layers: Layers, hb: HiddenBounds, k: int, mask: Tensor, idx: Tensor,
                 lower: Tensor, upper: Tensor, l: Tensor, u: Tensor) -> None:
    """Tighten ``l``/``u`` (layer k, in place) of the boxes in ``mask`` at columns ``idx``."""
    nl, nu = _refine_rows(layers, hb.select(mask), k, idx, lower[mask], upper[mask])
    l[mask] = l[mask].scatter_reduce(1, idx, nl, reduce="amax")
    u[mask] = u[mask].scatter_reduce(1, idx, nu, reduce="amin")


def crown_hidden_bounds(layers: Layers, lower: Tensor, upper: Tensor,
                        start: HiddenBounds | None = None, per_box: int = 8
                        ) -> HiddenBounds:
    """Pre-activation bounds by full backward CROWN for every hidden layer (tighter than
    :func:`symbolic_bounds`, quadratic in depth). Sound: yes.

    Only neurons unstable under ``start`` (default: symbolic bounds) are refined: boxes
    with at most ``per_box`` such neurons in a layer refine just theirs (gathered rows);
    the others refine the union of theirs.
    """
    start = start or symbolic_bounds(layers, lower, upper)
    if len(layers) < 2:  # no hidden layer
        return start
    lows, ups = [start.lower[0]], [start.upper[0]]
    for k in range(1, len(layers) - 1):
        l, u = start.lower[k].clone(), start.upper[k].clone()
        unstable = (l < 0) & (u > 0)
        count = unstable.sum(1)
        hb = HiddenBounds(tuple(lows), tuple(ups))
        few = (count > 0) & (count <= per_box)
        if bool(few.any()):
            kk = int(count[few].max())
            idx = torch.topk(unstable[few].to(l.dtype), kk, dim=1).indices
            _refine_into(layers, hb, k, few, idx, lower, upper, l, u)
        many = count > per_box
        if bool(many.any()):
            cols = unstable[many].any(0).nonzero().squeeze(1)
            idx = cols.unsqueeze(0).expand(int(many.sum()), -1)
            _refine_into(layers, hb, k, many, idx, lower, upper, l, u)
        lows.append(l)
        ups.append(torch.maximum(u, l))
    return HiddenBounds(tuple(lows), tuple(ups))
