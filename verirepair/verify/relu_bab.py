"""Complete ReLU-splitting branch and bound, for networks with many inputs.

Input splitting halves one input interval per split: right for ACAS Xu's 5 inputs,
hopeless for hundreds. Here the input box stays whole and the search splits unstable
ReLUs instead: a subproblem requires some neurons active (z >= 0) and some inactive
(z <= 0).

- Bounds: the hidden bounds of the whole box (CROWN, computed once), clamped at 0 for the
  split neurons and, with ``relu_tighten`` (default), re-tightened per subproblem
  (symbolic, then CROWN, with the clamps as prior); then alpha-beta-CROWN on the output
  rows (bounds.optimized_split_lower_bounds: the split constraints enter through Lagrange
  multipliers; every iterate is a sound bound), warm-started from the parent's slopes
  and multipliers. A subproblem whose root bounds contradict a split (required active,
  but its upper bound is negative) is empty.
- Branching: the neurons that straddle 0 are scored by how much their relaxation costs
  the best row of the worst open disjunct, |coefficient| x u(-l)/(u-l) (BaBSR-like);
  both children of the ``relu_branch_candidates`` (32) best are bounded once (parent's
  bounds, the new split clamped in, the parent's parameters) and the neuron whose weaker
  child is strongest is split (filtered smart branching; 1 = the score alone).
- Leaves: a subproblem in which no unsplit neuron straddles 0 under its own bounds is
  linear, and an LP per open disjunct (HiGHS, verify/leaf_lp.py) decides it; an
  infeasible LP is followed by a feasibility LP. LP answers are only hints: a proof is
  rebuilt from the LP's multipliers by the same sound bound (emptiness from the zero
  row), a point is confirmed in onnxruntime. A leaf that gets neither is counted
  unresolved: the search goes on, but can then end UNKNOWN instead of HOLDS. An LP cut
  short by the deadline puts its leaf back in the queue (the run ends TIMEOUT).
- Falsification: the opening and wide attacks of input splitting; every round the
  points that minimise the rows' linear bounds; every ``attack_every`` rounds PGD from
  those of the ``relu_attack_subproblems`` most promising subproblems.

Sound: yes. Complete: yes up to the LP's numerics (finitely many patterns).
Reference: Wang et al., "Beta-CROWN", NeurIPS 2021; Bunel et al., "Branch and Bound for
Piecewise Linear Neural Network Verification" (BaBSR), JMLR 2020.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from verirepair.bounds import (HiddenBounds, SplitParams, Splits, crown_hidden_bounds,
                               initial_alphas, interval_bounds,
                               optimized_split_lower_bounds, spec_lower_bounds,
                               symbolic_bounds)
from verirepair.verify import falsify
from verirepair.verify.bab import _Search
from verirepair.verify.leaf_lp import (SplitRow, feasibility_lp, linear_piece, min_max_lp,
                                       solve_lp)
from verirepair.verify.problem import group_max
from verirepair.verify.types import Counterexample

Tensor = torch.Tensor

FREE, ACTIVE, INACTIVE = 0, 1, -1


@dataclass
class Subproblems:
    """A batch of open subproblems: split decisions over all hidden neurons (int8, one
    row per subproblem, layers concatenated), open disjuncts, priority (lower first)."""

    signs: Tensor  # (N, H) int8
    alive: Tensor  # (N, K) bool
    prio: Tensor  # (N,)
    alphas: Tensor  # (N, R, H) float32: the parent's optimised slopes (warm start)
    gammas: Tensor  # (N, R, H) float32: the parent's scaled split multipliers

    FIELDS = ("signs", "alive", "prio", "alphas", "gammas")

    def __len__(self) -> int:
        return int(self.signs.shape[0])

    def select(self, index) -> "Subproblems":
        return Subproblems(*(getattr(self, f)[index] for f in self.FIELDS))

    @staticmethod
    def concat(parts: list["Subproblems"]) -> "Subproblems":
        if len(parts) == 1:
            return parts[0]
        return Subproblems(*(torch.cat([getattr(p, f) for p in parts])
                             for f in Subproblems.FIELDS))


@dataclass(frozen=True)
class LeafOutcome:
    proven: Tensor  # (K,) bool: disjuncts the leaf's LPs led to a sound proof of
    counterexample: Counterexample | None
    unresolved: bool  # neither proven nor confirmed: the run can only end UNKNOWN
    timed_out: bool = False  # an LP hit the deadline: the leaf goes back to the queue


# A proof from a convex combination of rows must clear the rounding of that combination
# (the bound's own margin scales with the combined row, which may cancel): this times
# sum_r theta_r (|c_r| |y|max + |d_r|), far above float64 rounding.
COMBINATION_MARGIN = 1e-9


def clamp_splits(hidden: HiddenBounds, signs: list[Tensor], n: int
                 ) -> tuple[HiddenBounds, Tensor]:
    """Bounds valid on n subproblems with split neurons clamped at 0 (still valid there),
    and which subproblems are empty (a required sign the bounds exclude)."""
    empty = torch.zeros(n, dtype=torch.bool)
    lows, ups = [], []
    for s, l, u in zip(signs, hidden.lower, hidden.upper):
        empty |= ((s > 0) & (u < 0)).any(1) | ((s < 0) & (l > 0)).any(1)
        l = torch.where(s > 0, l.clamp_min(0), l)
        u = torch.where(s < 0, u.clamp_max(0), u)
        lows.append(l)
        ups.append(torch.maximum(u, l))
    return HiddenBounds(tuple(lows), tuple(ups)), empty


def straddling(hidden: HiddenBounds) -> Tensor:
    """(N, H): the neurons whose bounds straddle 0 (l < 0 < u), layers concatenated;
    split neurons never do (they are clamped)."""
    return torch.cat([(l < 0) & (u > 0) for l, u in zip(hidden.lower, hidden.upper)],
                     dim=1)


class ReluSearch(_Search):
    """State of one ReLU-splitting run on one case (the attacks are :class:`_Search`'s)."""

    unit = "subproblems"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        lo, hi = self.ct.lower[None], self.ct.upper[None]
        self.root_hidden = crown_hidden_bounds(self.layers, lo, hi)
        y_lo, y_hi = interval_bounds(self.layers, lo, hi)
        self.output_mag = torch.maximum(y_lo.abs(), y_hi.abs())[0]  # |y| on the box
        self.bounds_ = np.cumsum([0] + self.widths)
        self.np_layers = [(w.numpy(), b.numpy()) for w, b in self.layers]

    def _root(self) -> Subproblems:
        h, rows = sum(self.widths), self.ct.c.shape[0]
        with torch.no_grad():  # CROWN's adaptive slopes of the root
            start = initial_alphas(self.root_hidden, rows)
        alphas = torch.cat(start, dim=2) if start else torch.zeros((1, rows, 0))
        return Subproblems(torch.zeros((1, h), dtype=torch.int8),
                           torch.ones((1, self.ct.n_disjuncts), dtype=torch.bool),
                           torch.zeros(1, dtype=torch.float64), alphas.to(torch.float32),
                           torch.zeros((1, rows, h), dtype=torch.float32))

    def _best_first_limit(self) -> int:
        """Fewer subproblems than boxes are kept best-first: each carries its slopes and
        multipliers (``relu_queue_bytes`` in all before the queue goes depth-first)."""
        per = 8 * self.ct.c.shape[0] * max(sum(self.widths), 1) + 64
        return max(1000, min(self.options.best_first_limit,
                             int(self.options.relu_queue_bytes / per)))

    def _split_layers(self, flat: Tensor) -> list[Tensor]:
        return [flat[..., a:b] for a, b in zip(self.bounds_[:-1], self.bounds_[1:])]

    def _unresolved_reason(self) -> str:
        return (f"{self.unresolved} linear leaves undecided (the LP's answer could be "
                "neither proven soundly nor confirmed)")

    # -- bounds ------------------------------------------------------------------
    def _layer_signs(self, signs: Tensor) -> list[Tensor]:
        return [s.to(torch.float64) for s in self._split_layers(signs)]

    def _clamped(self, signs: list[Tensor], n: int) -> tuple[HiddenBounds, Tensor]:
        """Root hidden bounds with split neurons clamped at 0 (valid on the subproblem),
        and which of the ``n`` subproblems are empty (a required sign the root bounds
        exclude)."""
        root = HiddenBounds(tuple(l.expand(n, -1) for l in self.root_hidden.lower),
                            tuple(u.expand(n, -1) for u in self.root_hidden.upper))
        return clamp_splits(root, signs, n)

    def _box(self, n: int) -> tuple[Tensor, Tensor]:
        return self.ct.lower[None].expand(n, -1), self.ct.upper[None].expand(n, -1)

    # -- branching -----------------------------------------------------------------
    def _choose(self, alive: Tensor, hidden: HiddenBounds, row_lb: Tensor, disj_lb: Tensor,
                trace: list[Tensor], k: int = 1) -> tuple[Tensor, Tensor]:
        """(the ``k`` best neurons to split, best first (N, k), whether a free unstable
        neuron is left (N,)): the best row of the worst open disjunct, and its relaxation
        cost per neuron (BaBSR-like). Whether a subproblem is a leaf comes from its bounds
        alone, never from the scores; a candidate may be a non-free neuron only when
        fewer than ``k`` are free (the caller skips those)."""
        n = row_lb.shape[0]
        if not hidden.lower:
            return torch.zeros((n, 1), dtype=torch.long), torch.zeros(n, dtype=torch.bool)
        free = straddling(hidden)
        has_free = free.any(1)
        k = min(k, free.shape[1])
        if row_lb.shape[1] == 0:  # no row to score: any free neuron
            return free.to(torch.uint8).argmax(1, keepdim=True), has_free
        ct = self.ct
        worst = torch.where(alive, disj_lb, torch.inf).argmin(1)
        in_worst = ct.group.unsqueeze(0) == worst.unsqueeze(1)
        row = torch.where(in_worst, row_lb, -torch.inf).argmax(1)
        rows = torch.arange(n)
        scores = []
        frees = free.split([l.shape[1] for l in hidden.lower], dim=1)
        for lam, l, u, f in zip(trace, hidden.lower, hidden.upper, frees):
            gap = torch.where(f, u * -l / (u - l).clamp_min(1e-300), torch.zeros_like(l))
            cost = (lam[rows, row].abs() * gap).nan_to_num(nan=0.0, posinf=1e300)
            scores.append(torch.where(f, cost + 1e-12 * gap, torch.full_like(cost, -1.0)))
        return torch.topk(torch.cat(scores, dim=1), k, dim=1).indices, has_free

    def _filtered_choice(self, cands: Tensor, signs: Tensor, alive: Tensor,
                         hidden: HiddenBounds, params: SplitParams) -> Tensor:
        """Filtered smart branching: bound both children of every candidate once (the
        parent's hidden bounds with the new split clamped in, its slopes and
        multipliers, no optimisation) and take the candidate whose weaker child is the
        strongest. (N, k) candidates -> (N,) neurons; subproblems in chunks of at most
        ``relu_filter_elements`` tensor elements."""
        n, k = cands.shape
        # per child: about 9 tensors of R x H (slopes, multipliers, their copies, Adam
        # state) and 3 of R x n_in (coefficients)
        per = 2 * k * max(self.ct.c.shape[0], 1) * (9 * sum(self.widths)
                                                    + 3 * self.ct.lower.shape[0] + 1)
        step = max(1, int(self.options.relu_filter_elements // per))
        return torch.cat([self._filter_chunk(
            cands[a:a + step], signs[a:a + step], alive[a:a + step],
            hidden.select(slice(a, a + step)),
            SplitParams([x[a:a + step] for x in params.alphas],
                        [x[a:a + step] for x in params.gammas]))
            for a in range(0, n, step)])

    def _filter_chunk(self, cands: Tensor, signs: Tensor, alive: Tensor,
                      hidden: HiddenBounds, params: SplitParams) -> Tensor:
        ct = self.ct
        n, k = cands.shape
        rep = torch.arange(n).repeat_interleave(2 * k)
        child = signs[rep].clone()
        neuron = cands.repeat_interleave(2, dim=1).reshape(-1)
        # only neurons that straddle 0 under the parent's bounds qualify (a split one is
        # clamped, a stable one would give the parent again and an empty child)
        was_free = straddling(hidden)[rep, neuron]
        child[torch.arange(n * 2 * k), neuron] = torch.tensor(
            [ACTIVE, INACTIVE], dtype=torch.int8).repeat(n * k)
        layer_signs = self._layer_signs(child)
        bounds, empty = clamp_splits(hidden.select(rep), layer_signs, n * 2 * k)
        lo, hi = self._box(n * 2 * k)
        sb, _ = optimized_split_lower_bounds(
            self.layers, bounds, lo, hi, ct.c, ct.d, layer_signs, steps=0,
            lr=self.options.alpha_lr, beta_lr=self.options.relu_beta_lr,
            start=SplitParams([a[rep] for a in params.alphas],
                              [g[rep] for g in params.gammas]))
        disj = group_max(sb.lower, ct.group, ct.n_disjuncts)
        worst = torch.where(alive[rep], disj, torch.inf).amin(1)
        worst = torch.where(empty, torch.inf, worst).nan_to_num(nan=-torch.inf)
        worst = torch.where(was_free, worst, -torch.inf)  # only free neurons qualify
        weaker = worst.reshape(n, k, 2).amin(2)
        pick = weaker.argmax(1)
        return cands[torch.arange(n), pick]

    @staticmethod
    def _split(batch: Subproblems, neuron: Tensor) -> Subproblems:
        rows = torch.arange(len(batch))
        on, off = batch.signs.clone(), batch.signs.clone()
        on[rows, neuron] = ACTIVE
        off[rows, neuron] = INACTIVE
        return Subproblems(torch.cat([on, off]), batch.alive.repeat(2, 1),
                           batch.prio.repeat(2), batch.alphas.repeat(2, 1, 1),
                           batch.gammas.repeat(2, 1, 1))

    # -- falsification ---------------------------------------------------------------
    def _subproblem_attack(self, lower: Tensor, upper: Tensor, coef: Tensor, row_lb: Tensor,
                           prio: Tensor) -> Counterexample | None:
        """PGD over the whole box from the points minimising the linear bounds of the
        most promising subproblems' disjuncts."""
        k = min(self.options.relu_attack_subproblems, prio.shape[0])
        idx = torch.topk(prio, k, largest=False).indices
        starts = falsify.linear_surrogate_points(coef[idx], row_lb[idx], lower[idx],
                                                 upper[idx], self.ct.group,
                                                 self.ct.n_disjuncts)
        starts = starts.reshape(-1, lower.shape[1])
        lo, hi = self._box(starts.shape[0])
        self.stats.attack_points += starts.shape[0] * self.options.pgd_steps
        return self._confirm(falsify.pgd_attack(self.layers, self.ct, lo, hi, starts,
                                                self.options.pgd_steps))

    # -- leaves ----------------------------------------------------------------------
    def _leaf(self, signs: Tensor, alive: Tensor, hidden: HiddenBounds) -> LeafOutcome:
        """Decide a subproblem without free unstable neurons (under its hidden bounds
        ``hidden``, valid on it, one row), disjunct by disjunct."""
        ct = self.ct
        layer_signs = self._layer_signs(signs[None])
        active = [(l[0] >= 0).numpy() for l in hidden.lower]
        piece = linear_piece(self.np_layers, active)
        splits = [SplitRow(k, int(j), int(s[0, j]))
                  for k, s in enumerate(layer_signs) for j in s[0].nonzero().flatten()]
        lo, hi = ct.lower.numpy(), ct.upper.numpy()
        c, d = ct.c.numpy(), ct.d.numpy()
        proven = ~alive.clone()
        for k in alive.nonzero().flatten().tolist():
            rows = (ct.group == k).nonzero().flatten()
            lp = min_max_lp(piece, c[rows.numpy()], d[rows.numpy()], splits, lo, hi)
            sol = solve_lp(lp, self.deadline.seconds - self.deadline.elapsed())
            if sol.status == "infeasible":
                if self._prove_empty(piece, splits, layer_signs, hidden):
                    return LeafOutcome(torch.ones_like(alive), None, False)
                return self._undecided(proven)
            if sol.status != "optimal":
                return self._undecided(proven)
            if sol.value <= 0:
                x = torch.as_tensor(sol.x[:-1]).clamp(ct.lower, ct.upper)[None]
                cex = self._confirm(falsify.Candidates(x, torch.zeros(1)))
                if cex is not None:
                    return LeafOutcome(proven, cex, False)
            if not self._prove_from_duals(sol, lp, layer_signs, hidden, rows):
                return LeafOutcome(proven, None, True)
            proven[k] = True
        return LeafOutcome(proven, None, False)

    def _undecided(self, proven: Tensor) -> LeafOutcome:
        """A leaf left undecided: back to the queue when the deadline cut an LP short
        (the run ends TIMEOUT), else unresolved (the run can only end UNKNOWN)."""
        late = self.deadline.expired()
        return LeafOutcome(proven, None, unresolved=not late, timed_out=late)

    def _beta_tensors(self, splits: list[SplitRow], mult: np.ndarray) -> list[Tensor]:
        betas = [torch.zeros((1, 1, w), dtype=torch.float64) for w in self.widths]
        for s, m in zip(splits, mult):
            betas[s.layer][0, 0, s.neuron] = float(m)
        return betas

    def _sound_lower(self, hidden: HiddenBounds, layer_signs: list[Tensor], c: Tensor,
                     d: Tensor, betas: list[Tensor]) -> float:
        lo, hi = self._box(1)
        sb = spec_lower_bounds(self.layers, hidden, lo, hi, c, d,
                               splits=Splits(layer_signs, betas))
        return float(sb.lower[0, 0])

    def _prove_from_duals(self, sol, lp, layer_signs: list[Tensor], hidden: HiddenBounds,
                          rows: Tensor) -> bool:
        """The LP's multipliers as a convex combination of the disjunct's rows and as
        split multipliers: a proof when the sound bound of that combination is > 0."""
        duals = np.abs(sol.row_duals)
        theta = duals[:lp.n_objective_rows]
        if not np.isfinite(duals).all() or theta.sum() <= 0:
            return False
        scale = theta.sum()
        weights = torch.as_tensor(theta / scale)
        c = weights @ self.ct.c[rows]
        d = weights @ self.ct.d[rows]
        rows_mag = self.ct.c[rows].abs() @ self.output_mag + self.ct.d[rows].abs()
        betas = self._beta_tensors(lp.splits, duals[lp.n_objective_rows:] / scale)
        return (self._sound_lower(hidden, layer_signs, c[None], d[None], betas)
                > COMBINATION_MARGIN * float(weights @ rows_mag))

    def _prove_empty(self, piece, splits: list[SplitRow], layer_signs: list[Tensor],
                     hidden: HiddenBounds) -> bool:
        """An LP said the subproblem is empty: rebuild that soundly. The feasibility LP's
        multipliers mu (sum 1) make max over the box of sum mu sign z negative. On the
        subproblem 0 >= -sum mu sign z, so a sound lower bound > 0 of the zero row with
        mu as split multipliers shows that no input satisfies the splits."""
        lo, hi = self.ct.lower.numpy(), self.ct.upper.numpy()
        sol = solve_lp(feasibility_lp(piece, splits, lo, hi),
                       self.deadline.seconds - self.deadline.elapsed())
        slack = -sol.value  # the largest s with sign * z >= s for every split
        if sol.status != "optimal" or not slack < 0:
            return False
        mu = np.abs(sol.row_duals)
        if not np.isfinite(mu).all() or mu.sum() <= 0:
            return False
        zero = torch.zeros((1, self.ct.c.shape[1]), dtype=torch.float64)
        betas = self._beta_tensors(splits, mu / mu.sum())
        return self._sound_lower(hidden, layer_signs, zero,
                                 torch.zeros(1, dtype=torch.float64), betas) > 0

    # -- one round -------------------------------------------------------------------
    def _round(self, queue, iteration: int) -> Counterexample | None:
        ct, opt = self.ct, self.options
        batch = queue.pop(opt.relu_batch_size)
        n = len(batch)
        signs = self._layer_signs(batch.signs)
        hidden, empty = self._clamped(signs, n)
        lo, hi = self._box(n)
        if opt.relu_tighten:
            hidden = crown_hidden_bounds(self.layers, lo, hi,
                                         symbolic_bounds(self.layers, lo, hi, hidden))
        trace: list[Tensor] = []
        start = SplitParams(self._split_layers(batch.alphas), self._split_layers(batch.gammas))
        sb, params = optimized_split_lower_bounds(
            self.layers, hidden, lo, hi, ct.c, ct.d, signs, steps=opt.relu_bound_steps,
            lr=opt.alpha_lr, beta_lr=opt.relu_beta_lr, trace=trace, start=start)
        alphas = torch.cat(params.alphas, dim=2).to(torch.float32) if params.alphas \
            else batch.alphas
        gammas = torch.cat(params.gammas, dim=2).to(torch.float32) if params.gammas \
            else batch.gammas
        trace.reverse()  # shallowest layer first
        self.stats.bound_calls += 1
        self.stats.boxes += n
        row_lb = sb.lower
        disj_lb = group_max(row_lb, ct.group, ct.n_disjuncts)
        alive = batch.alive & ~(disj_lb > 0) & ~empty.unsqueeze(1)
        open_ = alive.any(1)
        if not bool(open_.any()):
            return None
        prio = torch.where(alive, disj_lb, torch.inf).amin(1)
        cex = self._corner_candidates(lo[open_], hi[open_], sb.coef[open_], row_lb[open_])
        if cex is None and iteration % opt.attack_every == 0:
            cex = self._subproblem_attack(lo[open_], hi[open_], sb.coef[open_],
                                          row_lb[open_], prio[open_])
        if cex is not None:
            return cex
        cands, has_free = self._choose(alive, hidden, row_lb, disj_lb, trace,
                                       max(1, opt.relu_branch_candidates))
        now = Subproblems(batch.signs, alive, prio, alphas, gammas)
        keep = open_ & has_free
        if bool(keep.any()):
            neuron = cands[keep, 0]
            if cands.shape[1] > 1:
                neuron = self._filtered_choice(
                    cands[keep], batch.signs[keep], alive[keep], hidden.select(keep),
                    SplitParams([a[keep] for a in params.alphas],
                                [g[keep] for g in params.gammas]))
            queue.push(self._split(now.select(keep), neuron))
        leaves = (open_ & ~has_free).nonzero().flatten().tolist()
        for done, i in enumerate(leaves):
            if self.deadline.expired():  # back to the queue: the run ends in TIMEOUT
                queue.push(now.select(torch.tensor(leaves[done:])))
                break
            leaf = self._leaf(batch.signs[i], alive[i], hidden.select([i]))
            if leaf.counterexample is not None:
                return leaf.counterexample
            if leaf.timed_out:
                queue.push(now.select(torch.tensor(leaves[done:])))
                break
            self.unresolved += int(leaf.unresolved)
        return None
