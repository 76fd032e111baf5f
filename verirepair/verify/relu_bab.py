"""Complete ReLU-splitting branch and bound, for networks with many inputs.

Input splitting halves one input interval per split: right for ACAS Xu's 5 inputs,
hopeless for hundreds. Here the input box stays whole and the search splits unstable
ReLUs instead: a subproblem requires some neurons active (z >= 0) and some inactive
(z <= 0).

- Bounds: the hidden bounds of the whole box (CROWN, computed once) clamped at 0 for the
  split neurons, then alpha-beta-CROWN on the output rows
  (bounds.optimized_split_lower_bounds: the split constraints enter through Lagrange
  multipliers; every iterate is a sound bound). A subproblem whose clamped bounds are
  contradictory (required active, but its upper bound is negative) is empty.
- Branching: per subproblem, the free unstable neuron whose relaxation costs the best row
  of its worst open disjunct the most: |coefficient| x u(-l)/(u-l) (BaBSR-like).
- Leaves: a subproblem with no free unstable neuron is linear, and an LP (HiGHS,
  verify/leaf_lp.py) decides each open disjunct. Its answer is only a hint: a proof is
  rebuilt from the LP's multipliers by the same sound bound, a point is confirmed in
  onnxruntime. A leaf that gets neither is counted unresolved (the run ends UNKNOWN).
- Falsification: the opening and wide attacks of input splitting, plus every round the
  points that minimise the rows' linear bounds, and PGD started from those of the most
  promising subproblems.

Sound: yes. Complete: yes up to the LP's numerics (finitely many patterns).
Reference: Wang et al., "Beta-CROWN", NeurIPS 2021; Bunel et al., "Branch and Bound for
Piecewise Linear Neural Network Verification" (BaBSR), JMLR 2020.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from verirepair.bounds import (HiddenBounds, SplitParams, Splits, crown_hidden_bounds,
                               initial_alphas, optimized_split_lower_bounds,
                               spec_lower_bounds, symbolic_bounds)
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
    unresolved: bool


class ReluSearch(_Search):
    """State of one ReLU-splitting run on one case (the attacks are :class:`_Search`'s)."""

    unit = "subproblems"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        lo, hi = self.ct.lower[None], self.ct.upper[None]
        self.root_hidden = crown_hidden_bounds(self.layers, lo, hi)
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
        return [signs[:, a:b].to(torch.float64)
                for a, b in zip(self.bounds_[:-1], self.bounds_[1:])]

    def _clamped(self, signs: list[Tensor], n: int) -> tuple[HiddenBounds, Tensor]:
        """Root hidden bounds with split neurons clamped at 0 (valid on the subproblem),
        and which of the ``n`` subproblems are empty (a required sign the root bounds
        exclude)."""
        empty = torch.zeros(n, dtype=torch.bool)
        lows, ups = [], []
        for s, l0, u0 in zip(signs, self.root_hidden.lower, self.root_hidden.upper):
            l, u = l0.expand(n, -1), u0.expand(n, -1)
            empty |= ((s > 0) & (u < 0)).any(1) | ((s < 0) & (l > 0)).any(1)
            l = torch.where(s > 0, l.clamp_min(0), l)
            u = torch.where(s < 0, u.clamp_max(0), u)
            lows.append(l)
            ups.append(torch.maximum(u, l))
        return HiddenBounds(tuple(lows), tuple(ups)), empty

    def _box(self, n: int) -> tuple[Tensor, Tensor]:
        return self.ct.lower[None].expand(n, -1), self.ct.upper[None].expand(n, -1)

    # -- branching -----------------------------------------------------------------
    def _choose(self, alive: Tensor, hidden: HiddenBounds, row_lb: Tensor, disj_lb: Tensor,
                trace: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(neuron to split (N,), whether a free unstable neuron is left (N,)): the best
        row of the worst open disjunct, and its relaxation cost per neuron."""
        ct = self.ct
        n = row_lb.shape[0]
        worst = torch.where(alive, disj_lb, torch.inf).argmin(1)
        in_worst = ct.group.unsqueeze(0) == worst.unsqueeze(1)
        row = torch.where(in_worst, row_lb, -torch.inf).argmax(1)
        rows = torch.arange(n)
        scores = []
        for lam, l, u in zip(trace, hidden.lower, hidden.upper):
            free = (l < 0) & (u > 0)
            gap = torch.where(free, u * -l / (u - l).clamp_min(1e-300), torch.zeros_like(l))
            cost = lam[rows, row].abs() * gap + 1e-12 * gap
            scores.append(torch.where(free, cost, torch.full_like(cost, -1.0)))
        if not scores:
            return torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool)
        score = torch.cat(scores, dim=1)
        best = score.max(dim=1)
        return best.indices, best.values > 0

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
    def _leaf(self, signs: Tensor, alive: Tensor, row_lb: Tensor, hidden: HiddenBounds
              ) -> LeafOutcome:
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
                if self._prove_empty(piece, splits, layer_signs, hidden, rows, row_lb):
                    return LeafOutcome(torch.ones_like(alive), None, False)
                return LeafOutcome(proven, None, True)
            if sol.status != "optimal":
                return LeafOutcome(proven, None, True)
            if sol.value <= 0:
                x = torch.as_tensor(sol.x[:-1]).clamp(ct.lower, ct.upper)[None]
                cex = self._confirm(falsify.Candidates(x, torch.zeros(1)))
                if cex is not None:
                    return LeafOutcome(proven, cex, False)
            if not self._prove_from_duals(sol, lp, layer_signs, hidden, rows):
                return LeafOutcome(proven, None, True)
            proven[k] = True
        return LeafOutcome(proven, None, False)

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
        c = torch.as_tensor(theta / scale) @ self.ct.c[rows]
        d = torch.as_tensor(theta / scale) @ self.ct.d[rows]
        betas = self._beta_tensors(lp.splits, duals[lp.n_objective_rows:] / scale)
        return self._sound_lower(hidden, layer_signs, c[None], d[None], betas) > 0

    def _prove_empty(self, piece, splits: list[SplitRow], layer_signs: list[Tensor],
                     hidden: HiddenBounds, rows: Tensor, row_lb: Tensor) -> bool:
        """An LP said the subproblem is empty: rebuild that soundly. The feasibility LP's
        multipliers mu (sum 1) make max over the box of sum mu sign z negative; M mu as
        split multipliers then lifts any row's bound above 0 for M large enough."""
        lo, hi = self.ct.lower.numpy(), self.ct.upper.numpy()
        sol = solve_lp(feasibility_lp(piece, splits, lo, hi),
                       self.deadline.seconds - self.deadline.elapsed())
        slack = -sol.value  # the largest s with sign * z >= s for every split
        if sol.status != "optimal" or not slack < 0:
            return False
        mu = np.abs(sol.row_duals)
        if not np.isfinite(mu).all() or mu.sum() <= 0:
            return False
        mu = mu / mu.sum()
        r = int(rows[0])
        need = max(0.0, -float(row_lb[r])) + 1.0
        for factor in (2.0, 20.0, 2000.0):
            betas = self._beta_tensors(splits, mu * factor * need / -slack)
            if self._sound_lower(hidden, layer_signs, self.ct.c[r][None], self.ct.d[r][None],
                                 betas) > 0:
                return True
        return False

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
        neuron, has_free = self._choose(alive, hidden, row_lb, disj_lb, trace)
        now = Subproblems(batch.signs, alive, prio, alphas, gammas)
        keep = open_ & has_free
        if bool(keep.any()):
            queue.push(self._split(now.select(keep), neuron[keep]))
        leaves = (open_ & ~has_free).nonzero().flatten().tolist()
        for done, i in enumerate(leaves):
            if self.deadline.expired():  # back to the queue: the run ends in TIMEOUT
                queue.push(now.select(torch.tensor(leaves[done:])))
                break
            leaf = self._leaf(batch.signs[i], alive[i], row_lb[i], hidden.select([i]))
            if leaf.counterexample is not None:
                return leaf.counterexample
            self.unresolved += int(leaf.unresolved)
        return None
