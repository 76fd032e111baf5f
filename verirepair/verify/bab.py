"""Complete branch and bound: input splitting over a batch of boxes (this module), or
ReLU splitting (verify/relu_bab.py, a subclass of the search here), chosen per case by
:func:`split_kind` (``BabOptions.split``; "auto": ReLU splitting for networks with a hidden
layer and at least ``relu_split_min_inputs`` inputs). The rest of this docstring is
about input splitting.

Requires: a lowered ReLU network and one spec case (box + disjunction of output polytopes).
Returns: HOLDS when every sub-box is proven (a lower bound of some row of every disjunct
is > 0: symbolic, then CROWN, then for boxes still open a few alpha-CROWN steps on the
output slopes — chosen by :class:`AlphaGate`), VIOLATED with a counterexample confirmed in onnxruntime, TIMEOUT, or
UNKNOWN (boxes shrank below ``min_rel_width`` without a decision — e.g. a margin of
exactly zero that float32 cannot confirm).
Sound: yes (bounds are outward-widened float64; violations are re-checked in
onnxruntime). Complete: yes for ReLU networks up to ``min_rel_width``: on small enough
boxes every ReLU is stable, the bound is exact, and the minimising corner is a witness.

The split dimension is chosen by sensitivity: for every open disjunct take the row with
the best bound and split where |coefficient| x width is largest. Boxes are processed
best-first by their worst disjunct bound (most violated first), which drives the search
to counterexample regions and, on proofs, costs nothing (every leaf is visited once).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from verirepair.bounds import (HiddenBounds, SpecBounds, crown_hidden_bounds,
                               gradient_smear, optimized_spec_lower_bounds, pack_hidden,
                               spec_lower_bounds, symbolic_bounds, unpack_hidden)
from verirepair.network import Network
from verirepair.spec_types import SpecCase
from verirepair.verify import falsify
from verirepair.verify.confirm import confirm, float32_inside
from verirepair.verify.problem import CaseTensors, case_tensors, group_max
from verirepair.verify.types import Counterexample, Result, Stats, Verdict

Tensor = torch.Tensor
Layers = list[tuple[Tensor, Tensor]]
Progress = Callable[[Stats, int], None]


@dataclass(frozen=True)
class BabOptions:
    batch_size: int = 2048
    best_first_limit: int = 100_000
    random_samples: int = 4096
    pgd_starts: int = 32
    pgd_steps: int = 30
    attack_every: int = 2
    attack_boxes: int = 256
    attack_starts: int = 4
    confirm_per_round: int = 4
    min_rel_width: float = 1e-9
    hidden_bounds: str = "crown"
    smear_weight: float = 0.5  # split score: this x smear + rest x CROWN-coefficient score
    alpha_steps: int = 3  # alpha-CROWN steps on the output rows of boxes CROWN leaves open
    alpha_lr: float = 0.5
    alpha_min_rate: float = 0.1  # below this measured closing rate a bin is only sampled
    alpha_warmup: int = 16  # boxes per bin always tried before its rate is trusted
    alpha_sample_every: int = 16  # a low-rate bin still tries every this-many-th box
    alpha_max_unstable: int = 100  # boxes with more unstable neurons never try (measured:
    # on ACAS Xu they closed < 2% of the time)
    # A search still open after `wide_attack_after` seconds runs a wide PGD attack over
    # the whole case box (fresh random starts), again at twice the time searched when it
    # ended, and so on, with `wide_attack_rate` starts per second searched so far (about
    # 7 % extra time on ACAS Xu). Caps for large networks: starts x (inputs + hidden
    # neurons) <= `wide_attack_work` (memory), starts x weights <= `wide_attack_weights`
    # (time; ACAS Xu, 13k weights, reaches it at ~4600 starts), and no attack while the
    # attacks so far took more than `wide_attack_share` of the search. Branch and bound
    # alone took ~30 s to reach the tiny unsafe region of ACAS Xu N1,9 phi7; 4096 starts
    # x 50 steps reach it in 2 of 3 seeds in ~0.5 s. Cheap instances never pay.
    wide_attack_after: float = 2.0
    wide_attack_rate: float = 512.0
    wide_attack_steps: int = 50
    wide_attack_work: float = 2e6
    wide_attack_weights: float = 6e7
    wide_attack_share: float = 0.2
    # What branch and bound splits: "input" intervals (suits few inputs, e.g. ACAS Xu's
    # 5), "relu" neurons (verify/relu_bab.py; the input box stays whole), or "auto":
    # ReLU splitting from `relu_split_min_inputs` inputs on (when there is a hidden layer).
    # ReLU splitting uses the relu_* fields below instead of batch_size, alpha_steps, the
    # alpha gate, hidden_bounds (always CROWN), min_rel_width, attack_boxes and
    # attack_starts; it shares alpha_lr (slope step), the attack fields, confirm_per_round
    # and seed.
    split: str = "auto"
    relu_split_min_inputs: int = 12
    relu_batch_size: int = 256
    relu_bound_steps: int = 8  # alpha-beta-CROWN steps per subproblem batch
    relu_tighten: bool = True  # recompute the hidden bounds of every subproblem
    # best-first while the queued warm-start state stays under this (at least 1000
    # subproblems), then depth-first (which keeps the queue short); not a hard cap
    relu_queue_bytes: float = 2e9
    relu_beta_lr: float = 0.05
    relu_attack_subproblems: int = 32  # PGD from the bound minimisers of this many
    # Filtered smart branching: both children of the k best-scored neurons are bounded
    # once and the split whose weaker child is strongest is taken (1: the top score
    # alone). Measured on the split_kinds networks (2 x 32 hidden neurons, 15 s limit),
    # 32 instances with 16-100 inputs, decided / total seconds: k = 1: 30 / 54.4,
    # 3: 30 / 41.7, 6: 31 / 24.9, 10: 31 / 18.9, 16: 32 / 9.2; 40 instances with 8-100
    # inputs: k = 16: 40 / 14.4, 32: 40 / 6.1, 64: 40 / 8.3.
    relu_branch_candidates: int = 32
    relu_filter_elements: float = 3e7  # tensor elements (about) per batch of children
    seed: int = 0


GATE_BIN = 10  # unstable neurons per gate bin
GATE_BINS = 16


@dataclass
class AlphaGate:
    """Online closing rate of the alpha-CROWN step per bin of unstable-neuron count.

    The optimised output slopes close most open boxes with few unstable neurons and
    almost none with many; where the threshold lies depends on the network and property,
    so it is measured during the search. Affects only which boxes get the extra (sound)
    bound, never soundness.
    """

    tried: Tensor  # (GATE_BINS,) long
    closed: Tensor  # (GATE_BINS,) long
    seen: Tensor  # (GATE_BINS,) long: boxes offered, for sampling low-rate bins

    @staticmethod
    def empty() -> "AlphaGate":
        z = torch.zeros(GATE_BINS, dtype=torch.long)
        return AlphaGate(z.clone(), z.clone(), z.clone())


def gate_bins(hidden: HiddenBounds, mask: Tensor) -> Tensor:
    """Gate bin of every box in ``mask``: its number of unstable neurons / GATE_BIN."""
    count = torch.zeros(int(mask.sum()), dtype=torch.long)
    for l, u in zip(hidden.lower, hidden.upper):
        count += ((l[mask] < 0) & (u[mask] > 0)).sum(1)
    return (count // GATE_BIN).clamp_max(GATE_BINS - 1)


def gate_choose(gate: AlphaGate, bins: Tensor, options: BabOptions) -> Tensor:
    """Which of these boxes get the alpha step: all in bins still warming up or closing
    at least ``alpha_min_rate`` of their boxes, every ``alpha_sample_every``-th other."""
    rate = gate.closed.to(torch.float64) / gate.tried.clamp_min(1).to(torch.float64)
    good = (gate.tried < options.alpha_warmup) | (rate >= options.alpha_min_rate)
    one_hot = torch.nn.functional.one_hot(bins, GATE_BINS)
    rank = gate.seen[bins] + (one_hot.cumsum(0) * one_hot).sum(1) - 1  # per-bin counter
    gate.seen += one_hot.sum(0)
    small = bins < options.alpha_max_unstable // GATE_BIN
    return small & (good[bins] | (rank % options.alpha_sample_every == 0))


def gate_record(gate: AlphaGate, bins: Tensor, closed: Tensor) -> None:
    gate.tried += torch.bincount(bins, minlength=GATE_BINS)
    gate.closed += torch.bincount(bins[closed], minlength=GATE_BINS)


@dataclass(frozen=True)
class Deadline:
    start: float
    seconds: float

    @staticmethod
    def after(seconds: float) -> "Deadline":
        return Deadline(time.monotonic(), seconds)

    def expired(self) -> bool:
        return time.monotonic() - self.start >= self.seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start


@dataclass
class Boxes:
    """A batch of open boxes: bounds, which disjuncts are still open, a priority (lower
    first) and the float32 hidden bounds inherited from the parent box."""

    lower: Tensor
    upper: Tensor
    alive: Tensor
    prio: Tensor
    hidden: Tensor  # (N, 2, H)

    def __len__(self) -> int:
        return int(self.lower.shape[0])

    def select(self, index: Tensor) -> "Boxes":
        return Boxes(self.lower[index], self.upper[index], self.alive[index],
                     self.prio[index], self.hidden[index])

    @staticmethod
    def concat(parts: list["Boxes"]) -> "Boxes":
        if len(parts) == 1:
            return parts[0]
        return Boxes(*(torch.cat([getattr(p, f) for p in parts])
                       for f in ("lower", "upper", "alive", "prio", "hidden")))


class Queue:
    """Open boxes kept as a list of chunks (no copy of the whole queue per round).

    Small queues are served best-first (lowest priority = most violated first); once the
    queue exceeds ``best_first_limit`` the newest chunks are served first (depth-first),
    which keeps memory bounded. Best-first pops only mark the taken rows of a chunk
    (``gone``); a chunk is compacted once half of it is gone, so a pop copies the taken
    boxes plus, amortised, at most as many again — never the whole queue.
    """

    def __init__(self, first, best_first_limit: int) -> None:
        self._concat = type(first).concat  # Boxes, or any batch with the same methods
        self.chunks: list[Boxes] = []
        self.gone: list[Tensor] = []
        self.size = 0
        self.best_first_limit = best_first_limit
        self.push(first)

    def __len__(self) -> int:
        return self.size

    def push(self, boxes: Boxes) -> None:
        if len(boxes):
            self.chunks.append(boxes)
            self.gone.append(torch.zeros(len(boxes), dtype=torch.bool))
            self.size += len(boxes)

    def _compact(self, i: int) -> None:
        if bool(self.gone[i].any()):
            self.chunks[i] = self.chunks[i].select(~self.gone[i])
            self.gone[i] = torch.zeros(len(self.chunks[i]), dtype=torch.bool)

    def _drop_empty(self) -> None:
        keep = [i for i, c in enumerate(self.chunks) if len(c) > int(self.gone[i].sum())]
        self.chunks = [self.chunks[i] for i in keep]
        self.gone = [self.gone[i] for i in keep]

    def pop(self, count: int) -> Boxes:
        if self.size <= count:
            for i in range(len(self.chunks)):
                self._compact(i)
            taken = self._concat(self.chunks)
            self.chunks, self.gone, self.size = [], [], 0
            return taken
        if self.size <= self.best_first_limit:
            return self._pop_best(count)
        return self._pop_newest(count)

    def _pop_best(self, count: int) -> Boxes:
        prio = torch.cat([torch.where(g, torch.inf, c.prio.nan_to_num(posinf=1e300))
                          for c, g in zip(self.chunks, self.gone)])
        chosen = torch.topk(prio, count, largest=False).indices.sort().values
        sizes = torch.tensor([len(c) for c in self.chunks])
        ends = sizes.cumsum(0)
        owner = torch.bucketize(chosen, ends, right=True)
        taken: list[Boxes] = []
        for i in owner.unique().tolist():
            local = chosen[owner == i] - (ends[i] - sizes[i])
            taken.append(self.chunks[i].select(local))
            self.gone[i][local] = True
            if 2 * int(self.gone[i].sum()) >= len(self.chunks[i]):
                self._compact(i)
        self._drop_empty()
        self.size -= count
        return self._concat(taken)

    def _pop_newest(self, count: int) -> Boxes:
        taken: list[Boxes] = []
        need = count
        while need > 0:
            self._compact(len(self.chunks) - 1)
            last = self.chunks.pop()
            self.gone.pop()
            if len(last) > need:
                taken.append(last.select(slice(len(last) - need, None)))
                rest = last.select(slice(0, len(last) - need))
                self.chunks.append(rest)
                self.gone.append(torch.zeros(len(rest), dtype=torch.bool))
                need = 0
            else:
                taken.append(last)
                need -= len(last)
        self.size -= count
        return self._concat(taken)


class _Search:
    """State of one branch-and-bound run on one case."""

    def __init__(self, network: Network, layers: Layers, case: SpecCase, case_index: int,
                 deadline: Deadline, options: BabOptions, progress: Progress | None,
                 session) -> None:
        self.network, self.layers, self.case = network, layers, case
        self.case_index, self.deadline, self.options = case_index, deadline, options
        self.progress, self.session = progress, session
        self.ct: CaseTensors = case_tensors(case, network.n_outputs)
        self.stats = Stats()
        self.gen = torch.Generator().manual_seed(options.seed)
        self.min_width = options.min_rel_width * float((self.ct.upper - self.ct.lower).max())
        self.unresolved = 0
        self.widths = [w.shape[0] for w, _ in layers[:-1]]
        lo, hi = case.box.lower, case.box.upper
        self.float32_box = float32_inside(lo, lo, hi, case.box.strict_lower,
                                          case.box.strict_upper) is not None
        self.real_only_violation = False
        self.last_report = time.monotonic()
        self.alpha_gate = AlphaGate.empty()
        self.started = time.monotonic()
        self.next_wide_attack = options.wide_attack_after
        self.wide_attack_seconds = 0.0
        self.n_weights = sum(w.numel() for w, _ in layers)

    # -- counterexamples ---------------------------------------------------------
    def _confirm(self, cands: falsify.Candidates) -> Counterexample | None:
        if len(cands.x) and not self.float32_box:
            self.real_only_violation = True
            return None
        for x in cands.x[: self.options.confirm_per_round]:
            cex = confirm(self.network, self.case, self.case_index, x.numpy(), self.session)
            if cex is not None:
                return cex
            self.stats.unconfirmed += 1
        return None

    def _initial_attack(self) -> Counterexample | None:
        ct, opt = self.ct, self.options
        if ct.trivially_unsafe:
            mid = ((ct.lower + ct.upper) / 2).unsqueeze(0)
            return self._confirm(falsify.Candidates(mid, torch.zeros(1)))
        cands = falsify.random_attack(self.layers, ct, opt.random_samples, self.gen)
        self.stats.attack_points += opt.random_samples
        cex = self._confirm(cands)
        if cex is not None:
            return cex
        return self._confirm(self._pgd(ct.lower[None], ct.upper[None], opt.pgd_starts,
                                       opt.pgd_steps))

    def _pgd(self, lower: Tensor, upper: Tensor, per_box: int, steps: int,
             stop: Callable[[], bool] | None = None) -> falsify.Candidates:
        """PGD from ``per_box`` random starts in each box (rows of lower/upper), counted
        in the stats; candidates still to be confirmed."""
        starts, lo, hi = falsify.random_starts(lower, upper, per_box, self.gen)
        self.stats.attack_points += starts.shape[0] * steps
        return falsify.pgd_attack(self.layers, self.ct, lo, hi, starts, steps, stop=stop)

    def _wide_attack_starts(self, elapsed: float) -> int:
        opt = self.options
        width = self.ct.lower.shape[0] + sum(self.widths)
        cap = min(opt.wide_attack_work / width, opt.wide_attack_weights / self.n_weights)
        return max(1, int(min(opt.wide_attack_rate * elapsed, cap)))

    def _wide_attack_due(self) -> Counterexample | None:
        """The wide attack (see ``BabOptions.wide_attack_after``) when its time has come;
        never once the deadline has passed, and it stops at the deadline."""
        opt = self.options
        elapsed = time.monotonic() - self.started
        if opt.wide_attack_after <= 0 or opt.wide_attack_rate <= 0 \
                or elapsed < self.next_wide_attack or self.deadline.expired() \
                or self.wide_attack_seconds > opt.wide_attack_share * elapsed:
            return None
        cands = self._pgd(self.ct.lower[None], self.ct.upper[None],
                          self._wide_attack_starts(elapsed), opt.wide_attack_steps,
                          stop=self.deadline.expired)
        ended = time.monotonic() - self.started
        self.wide_attack_seconds += ended - elapsed
        self.next_wide_attack = 2.0 * ended
        return self._confirm(cands)

    def _box_attack(self, batch: Boxes) -> Counterexample | None:
        """PGD from the centres of the most promising open boxes."""
        k = min(self.options.attack_boxes, len(batch))
        idx = torch.topk(batch.prio, k, largest=False).indices
        return self._confirm(self._pgd(batch.lower[idx], batch.upper[idx],
                                       self.options.attack_starts, self.options.pgd_steps))

    # -- one round ---------------------------------------------------------------
    def _bound(self, batch: Boxes) -> tuple[HiddenBounds, Tensor, Tensor, Tensor]:
        """Cheap symbolic bounds first; boxes they leave open get full CROWN bounds, and
        those still open an alpha-CROWN step (see :meth:`_alpha_bound`)."""
        ct = self.ct
        prior = unpack_hidden(batch.hidden, self.widths)
        hidden = symbolic_bounds(self.layers, batch.lower, batch.upper, prior)
        sb = spec_lower_bounds(self.layers, hidden, batch.lower, batch.upper, ct.c, ct.d)
        row_lb, coef = sb.lower, sb.coef
        disj_lb = group_max(row_lb, ct.group, ct.n_disjuncts)
        self.stats.bound_calls += 1
        self.stats.boxes += len(batch)
        todo = ((disj_lb <= 0) & batch.alive).any(1)
        if self.options.hidden_bounds == "crown" and bool(todo.any()):
            lo, hi = batch.lower[todo], batch.upper[todo]
            start = hidden.select(todo)
            tight = crown_hidden_bounds(self.layers, lo, hi, start)
            sb2 = spec_lower_bounds(self.layers, tight, lo, hi, ct.c, ct.d)
            row_lb, coef = row_lb.clone(), coef.clone()
            row_lb[todo] = torch.maximum(sb2.lower, row_lb[todo])
            coef[todo] = sb2.coef
            hidden = HiddenBounds(_scatter(hidden.lower, tight.lower, todo),
                                  _scatter(hidden.upper, tight.upper, todo))
            disj_lb = group_max(row_lb, ct.group, ct.n_disjuncts)
        row_lb, disj_lb = self._alpha_bound(batch, hidden, row_lb, coef, disj_lb)
        return hidden, row_lb, coef, disj_lb

    def _alpha_bound(self, batch: Boxes, hidden: HiddenBounds, row_lb: Tensor, coef: Tensor,
                     disj_lb: Tensor) -> tuple[Tensor, Tensor]:
        """alpha-CROWN output slopes (a few Adam steps, hidden bounds fixed) on the open
        boxes the gate picks. Only disjuncts the optimised bound proves take its values:
        the others keep their CROWN rows, coefficients and priority, so the search order
        of everything still open is unchanged. Returns (row_lb, disj_lb)."""
        ct, opt = self.ct, self.options
        todo = ((disj_lb <= 0) & batch.alive).any(1)
        if opt.alpha_steps <= 0 or not self.widths or not bool(todo.any()):
            return row_lb, disj_lb
        todo[todo.clone()] = gate_choose(self.alpha_gate, gate_bins(hidden, todo), opt)
        if not bool(todo.any()):
            return row_lb, disj_lb
        initial = SpecBounds(lower=row_lb[todo], coef=coef[todo])
        sb = optimized_spec_lower_bounds(self.layers, hidden.select(todo), batch.lower[todo],
                                         batch.upper[todo], ct.c, ct.d, steps=opt.alpha_steps,
                                         lr=opt.alpha_lr, initial=initial)
        proven = group_max(sb.lower, ct.group, ct.n_disjuncts) > 0
        use = proven[:, ct.group] & (sb.lower > row_lb[todo])
        row_lb = row_lb.clone()
        row_lb[todo] = torch.where(use, sb.lower, row_lb[todo])
        disj_lb = group_max(row_lb, ct.group, ct.n_disjuncts)
        closed = ((disj_lb[todo] > 0) | ~batch.alive[todo]).all(1)
        gate_record(self.alpha_gate, gate_bins(hidden, todo), closed)
        return row_lb, disj_lb

    def _corner_candidates(self, lower: Tensor, upper: Tensor, coef: Tensor, row_lb: Tensor
                           ) -> Counterexample | None:
        """Evaluate the box centres, the corners that minimise each row's bound, and per
        disjunct the point minimising the max of its rows' linear lower bounds (boxes are
        the rows of ``lower``/``upper``)."""
        corners = torch.where(coef > 0, lower.unsqueeze(1), upper.unsqueeze(1))
        mid = ((lower + upper) / 2).unsqueeze(1)
        joint = falsify.linear_surrogate_points(coef, row_lb, lower, upper,
                                                self.ct.group, self.ct.n_disjuncts)
        pts = torch.cat([mid, corners, joint], dim=1).reshape(-1, lower.shape[1])
        self.stats.attack_points += pts.shape[0]
        return self._confirm(falsify.evaluate_points(self.layers, self.ct, pts))

    def _split_dims(self, batch: Boxes, hidden: HiddenBounds, row_lb: Tensor,
                    disj_lb: Tensor, coef: Tensor) -> Tensor:
        """Split dimension per box: the best open rows' smear (interval gradient x width)
        and CROWN input-coefficient x width, each normalised, mixed by ``smear_weight``."""
        group = self.ct.group
        best_row = row_lb >= disj_lb[:, group]  # (N, R): rows achieving their group max
        weight = (best_row & batch.alive[:, group]).to(row_lb.dtype)
        width = batch.upper - batch.lower
        coef_score = torch.einsum("nr,nri->ni", weight, coef.abs()) * width
        coef_score = coef_score / coef_score.sum(1, keepdim=True).clamp_min(1e-300)
        out_weight = weight @ self.ct.c  # (N, n_out)
        smear = gradient_smear(self.layers, hidden, out_weight, batch.lower, batch.upper)
        smear = smear / smear.sum(1, keepdim=True).clamp_min(1e-300)
        w = self.options.smear_weight
        score = w * smear + (1 - w) * coef_score
        score = torch.where(width > 0, score + 1e-30 * width, torch.full_like(score, -1.0))
        return score.argmax(1)

    def _split(self, batch: Boxes, dims: Tensor, prio: Tensor) -> Boxes:
        n = len(batch)
        rows = torch.arange(n)
        mid = (batch.lower[rows, dims] + batch.upper[rows, dims]) / 2
        left_hi = batch.upper.clone()
        left_hi[rows, dims] = mid
        right_lo = batch.lower.clone()
        right_lo[rows, dims] = mid
        return Boxes(torch.cat([batch.lower, right_lo]), torch.cat([left_hi, batch.upper]),
                     batch.alive.repeat(2, 1), prio.repeat(2), batch.hidden.repeat(2, 1, 1))

    def _round(self, queue: Queue, iteration: int) -> Counterexample | None:
        batch = queue.pop(self.options.batch_size)
        hidden, row_lb, coef, disj_lb = self._bound(batch)
        batch.alive &= ~(disj_lb > 0)
        open_ = batch.alive.any(1)
        if not bool(open_.any()):
            return None
        row_lb, coef, disj_lb = row_lb[open_], coef[open_], disj_lb[open_]
        hidden = hidden.select(open_)
        batch = Boxes(batch.lower[open_], batch.upper[open_], batch.alive[open_],
                      torch.where(batch.alive[open_], disj_lb, torch.inf).amin(1),
                      pack_hidden(hidden, int(open_.sum())))
        cex = self._corner_candidates(batch.lower, batch.upper, coef, row_lb)
        if cex is None and iteration % self.options.attack_every == 0:
            cex = self._box_attack(batch)
        if cex is not None:
            return cex
        tiny = (batch.upper - batch.lower).amax(1) <= self.min_width
        self.unresolved += int(tiny.sum())
        dims = self._split_dims(batch, hidden, row_lb, disj_lb, coef)
        keep = ~tiny
        kept = batch.select(keep)
        queue.push(self._split(kept, dims[keep], kept.prio))
        return None

    def _report(self, queue_len: int) -> None:
        now = time.monotonic()
        self.stats.max_queue = max(self.stats.max_queue, queue_len)
        if self.progress is not None and now - self.last_report >= 1.0:
            self.last_report = now
            self.stats.seconds = self.deadline.elapsed()
            self.progress(self.stats, queue_len)

    unit = "boxes"  # what the queue holds, for messages

    def _root(self) -> Boxes:
        k = self.ct.n_disjuncts
        no_prior = torch.tensor([-torch.inf, torch.inf]).reshape(1, 2, 1)
        return Boxes(self.ct.lower[None].clone(), self.ct.upper[None].clone(),
                     torch.ones((1, k), dtype=torch.bool), torch.zeros(1, dtype=torch.float64),
                     no_prior.expand(1, 2, sum(self.widths)).to(torch.float32).clone())

    def _best_first_limit(self) -> int:
        return self.options.best_first_limit

    def _unresolved_reason(self) -> str:
        return (f"{self.unresolved} boxes reached the minimum width undecided (margin too "
                "close to zero)")

    def run(self, initial_attack: bool = True) -> Result:
        cex = self._initial_attack() if initial_attack else None
        if cex is not None:
            return self._result(Verdict.VIOLATED, cex)
        queue = Queue(self._root(), self._best_first_limit())
        iteration = 0
        while len(queue) > 0:
            if self.real_only_violation:
                return self._result(Verdict.UNKNOWN, reason="unsafe in real arithmetic, but "
                                    "the box contains no float32 input to confirm it")
            if self.deadline.expired():
                return self._result(Verdict.TIMEOUT, reason=f"{len(queue)} {self.unit} open")
            cex = self._round(queue, iteration)
            if cex is None and len(queue) > 0:
                cex = self._wide_attack_due()
            if cex is not None:
                return self._result(Verdict.VIOLATED, cex)
            iteration += 1
            self._report(len(queue))
        if self.unresolved:
            return self._result(Verdict.UNKNOWN, reason=self._unresolved_reason())
        return self._result(Verdict.HOLDS)

    def _result(self, verdict: Verdict, cex: Counterexample | None = None,
                reason: str = "") -> Result:
        self.stats.seconds = self.deadline.elapsed()
        return Result(verdict=verdict, counterexample=cex, reason=reason, engine="bab",
                      stats=self.stats)


def _scatter(full: tuple[Tensor, ...], part: tuple[Tensor, ...], mask: Tensor
             ) -> tuple[Tensor, ...]:
    out = []
    for f, p in zip(full, part):
        f = f.clone()
        f[mask] = p
        out.append(f)
    return tuple(out)


def verify_case(network: Network, layers: Layers, case: SpecCase, case_index: int,
                deadline: Deadline, options: BabOptions = BabOptions(),
                progress: Progress | None = None, session=None,
                initial_attack: bool = True) -> Result:
    """Decide one spec case with branch and bound (see module docstring).
    ``initial_attack=False`` skips the opening random/PGD attack (the caller already ran
    :func:`attack_case` on this case with the same options)."""
    kind = split_kind(options, network.n_inputs, len(layers) - 1)
    search = _searches()[kind](network, layers, case, case_index, deadline, options, progress,
                            session)
    search.stats.split = kind
    with torch.no_grad():
        return search.run(initial_attack)


SPLIT_KINDS = ("auto", "input", "relu")


def split_kind(options: BabOptions, n_inputs: int, n_hidden_layers: int) -> str:
    """"input" or "relu": ``options.split``, or for "auto" ReLU splitting when the
    network has a hidden layer and at least ``relu_split_min_inputs`` inputs."""
    if options.split not in SPLIT_KINDS:
        raise ValueError(f"unknown split kind {options.split!r} (one of {SPLIT_KINDS})")
    if options.split != "auto":
        return options.split
    return ("relu" if n_hidden_layers > 0 and n_inputs >= options.relu_split_min_inputs
            else "input")


def attack_case(network: Network, layers: Layers, case: SpecCase, case_index: int,
                deadline: Deadline, options: BabOptions = BabOptions(), session=None
                ) -> Result:
    """Only the opening attack of :func:`verify_case` (random samples, then PGD): VIOLATED
    with an onnxruntime-confirmed counterexample, else UNKNOWN. Cheap; lets a caller try
    every case before it spends the deadline proving any one of them."""
    search = _Search(network, layers, case, case_index, deadline, options, None, session)
    with torch.no_grad():
        cex = search._initial_attack()
    if cex is not None:
        return search._result(Verdict.VIOLATED, cex)
    return search._result(Verdict.UNKNOWN, reason="the opening attack found no counterexample")


def _searches() -> dict[str, type]:
    """The search class per split kind (relu_bab imports this module, hence the late
    import)."""
    from verirepair.verify.relu_bab import ReluSearch

    return {"input": _Search, "relu": ReluSearch}
