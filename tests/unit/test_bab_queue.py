"""The branch-and-bound queue and the alpha-CROWN gate (plain bookkeeping, no bounds)."""

from __future__ import annotations

import torch

from verirepair.bounds import HiddenBounds
from verirepair.verify.bab import (GATE_BIN, AlphaGate, BabOptions, Boxes, Queue, gate_bins,
                                   gate_choose, gate_record)


def make_boxes(ids: range, gen: torch.Generator) -> Boxes:
    n = len(ids)
    lo = torch.tensor(list(ids), dtype=torch.float64).unsqueeze(1)
    return Boxes(lo, lo + 1, torch.ones((n, 1), dtype=torch.bool),
                 torch.rand(n, generator=gen, dtype=torch.float64), torch.zeros(n, 2, 3))


def ids_of(boxes: Boxes) -> list[int]:
    return boxes.lower[:, 0].long().tolist()


def drive(limit: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    queue = Queue(make_boxes(range(5), gen), limit)
    pushed, popped, nxt = set(range(5)), [], 5
    for _ in range(150):
        count = int(torch.randint(1, 30, (1,), generator=gen))
        before = {i: p for c, g in zip(queue.chunks, queue.gone)
                  for i, p, dead in zip(ids_of(c), c.prio.tolist(), g.tolist()) if not dead}
        assert len(before) == len(queue)
        batch = queue.pop(count)
        got = ids_of(batch)
        assert len(got) == min(count, len(before))
        assert set(got) <= set(before)
        if len(before) <= limit:  # best-first: nothing left is better than what was taken
            rest = [p for i, p in before.items() if i not in set(got)]
            if rest:
                assert max(before[i] for i in got) <= min(rest)
        popped += got
        n = int(torch.randint(0, 40, (1,), generator=gen))
        queue.push(make_boxes(range(nxt, nxt + n), gen))
        pushed |= set(range(nxt, nxt + n))
        nxt += n
    while len(queue):
        popped += ids_of(queue.pop(17))
    assert sorted(popped) == sorted(pushed)


def test_best_first_queue_pops_every_box_once_lowest_priority_first() -> None:
    for seed in range(5):
        drive(10**9, seed)


def test_depth_first_queue_pops_every_box_once() -> None:
    for seed in range(5):
        drive(40, seed)


def hidden_with_unstable(counts: list[int], width: int = 300) -> HiddenBounds:
    lo = torch.ones((len(counts), width), dtype=torch.float64)
    for i, k in enumerate(counts):
        lo[i, :k] = -1.0
    return HiddenBounds((lo,), (torch.ones_like(lo),))


def test_gate_bins_count_unstable_neurons() -> None:
    hidden = hidden_with_unstable([0, 9, 10, 35, 299])
    mask = torch.tensor([True, True, True, False, True])
    assert gate_bins(hidden, mask).tolist() == [0, 0, 1, 15]


def test_gate_warms_up_then_samples_bins_that_do_not_close() -> None:
    opt = BabOptions(alpha_warmup=4, alpha_min_rate=0.5, alpha_sample_every=3,
                     alpha_max_unstable=10 * GATE_BIN)
    gate = AlphaGate.empty()
    bins = torch.tensor([2, 2, 2, 2, 5, 12])
    assert gate_choose(gate, bins, opt).tolist() == [True] * 5 + [False]  # cap: bin 12
    gate_record(gate, bins[:5], torch.tensor([False, False, False, False, True]))
    # bin 2 tried 4 times, closed 0: sampled every 3rd box; bin 5 closed 1/1: always
    chosen = gate_choose(gate, torch.tensor([2] * 6 + [5, 5]), opt)
    assert chosen[6:].all()
    assert int(chosen[:6].sum()) == 2
