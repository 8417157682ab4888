"""A lower bound on the mean task completion time (TCT) that any scheduler and eviction
policy can reach on one `kvsaga.sim` run, counting the KV capacity; hence an upper bound on
any scheduler's mean-TCT gain over fcfs+lru at that point of bench/scheduling.py.

    python bench/scheduling_bound.py                  # seed 1's grid, as bench/scheduling.py
    python bench/scheduling_bound.py --seeds 1,7,8 --families swe,bfcl

The older "gain bound" of bench/scheduling.py divides by the sessions' unloaded TCT (each
alone on an idle GPU with unbounded KV), so it ignores memory. This one adds what memory
forces, in the spirit of bench/vllm_replay_bound.py's `memory_bound`, under the simulator's
own cost model (`StepCostModel._step_time`: a batch step costs its overhead plus the larger
of its compute and memory times, each a sum of non-negative terms per token and request) on
one GPU with no host tier (bench/scheduling.py's runs have none). The argument, for every
schedule the simulator could carry out (any scheduler, any policy, any chunking,
preemption and order; even idling):

1. **Solo.** Step k of session i has prompt L_k and n_k outputs. Its prefill computes at
   least L_k - h_k tokens, h_k the most it can hit: every token of the context computed
   before (L_{k-1} + n_{k-1} - 1; the last output is never fed), or for a first step the
   full blocks of its shared prefix (another session may have computed them), and never the
   last prompt token (`KVCacheManager.begin_step` leaves it to compute). In c >=
   ceil((L_k - h_k) / max_num_batched_tokens) batch steps, whose times sum to at least
   c x overhead + max(their compute, their memory time) (a sum of maxima is at least the
   maximum of the sums; other requests in a step only add). Then each of its n_k - 1 decode
   tokens is a step of its own, at least a one-token decode over its context (other
   requests add). Tool pauses follow. The sum is `solo`; the task ends no sooner than its
   arrival + solo ("e_i"). Counting prefill this way is a little below `unloaded_tct`,
   which fixes the chunking and hits no shared prefix: that is why it is not used here.
2. **Phases that exclude each other.** The last prefill chunk of step k and its decode
   steps ("emitting steps", n_k of them: the chunk may be one token) each attend to the
   whole prompt, so all of its ceil(L_k / block_size) blocks are resident during each of
   them: the leading floor(shared prefix / block_size) may be shared with other sessions,
   the rest ("own" blocks) are the session's alone (its token ids are its own). The chunk
   lasts at least a one-token chunk over L_k - 1 cached tokens (a longer one computes more
   and reads and writes the same L_k tokens), each decode at least a one-token decode over
   its context (L_k + j tokens, j = 1 .. n_k - 1). If the own blocks of m + 1 phases
   exceed the GPU less the fewest shared blocks any running session holds, no m + 1 of
   them run in one batch step; with threshold (blocks - shared) / (m + 1), the phases
   above it ("big") run at most m to a batch step. Batch steps run one after another, so
   the big phases' emitting steps are processed as on m parallel machines, preemptively
   (a session may stop between steps).
   Per session with a big phase: r_i = arrival + the solo time of its steps and pauses
   before its first big step (its earliest start), p_i = the emitting steps' time of its big
   phases, q_i = the solo time after its last big phase (its pause, the later steps and
   pauses); it ends no sooner than X_i + q_i, X_i the end of its last big emitting step.
3. **The machine.** On m parallel machines with preemption and release dates, the k-th
   completion of any schedule is no sooner than the k-th of SRPT on one machine m times as
   fast (it can run any m-machine schedule's work; SRPT on one machine completes the most
   jobs by every time: Schrage 1968); and no job ends before r_i + p_i. So X's k-th order
   statistic is at least y_k, the larger of the two.
4. **Putting it together.** The sum of completions is at least sum_i max(X_i + q_i, e_i) =
   sum q_i + sum_i max(X_i, d_i), d_i = e_i - q_i, for the sessions with a big phase, plus
   e_i for the others. max(x, d) = d + max(0, x - d) with max(0, .) convex, so pairing the
   X's and d's both in ascending order gives the least sum (rearrangement), and it only
   grows with each X; hence sum_k max(y_k, d_(k)) bounds sum_i max(X_i, d_i). Each m gives a
   valid bound; the bound is the largest over m = 1 .. `MAX_MACHINES` (and never below the
   solo bound, m = infinity).

The memory-time bound (as `memory_bound` there, but over windows of time, since these
traces' arrivals spread over minutes):

5. **Keep or recompute.** Every token that step k + 1 could hit beyond the shared blocks
   (fact 1's hit) is, through the pause before it (at least the tool's `tool_s`), either
   kept resident the whole time, at least `tool_s` / block_size block-seconds (a block
   holds block_size of them; counting fractions of blocks only lowers the cost), or not,
   and then computed again: its compute time, (2 params + attention x (position + 1)) /
   achievable flops, which no batch step hides from the GPU's busy time (a step lasts at
   least its compute time). Besides, every emitting step holds its own blocks (fact 2) for
   at least its time ("area"), and the session computes at least fact 1's tokens ("work").
6. **Windows.** The sum of the TCTs is the integral over time of N(t), the sessions arrived
   and not ended. Take any s <= t: a set G of the sessions arrived in [s, t] that end by t
   does all of the above within [s, t], where there are at most B (t - s) block-seconds
   (B the GPU's blocks; different sessions' own blocks are distinct) and t - s seconds of
   GPU time. For any multiplier lam >= 0 the sum over G of (memory-time + lam x GPU time)
   is at most (B + lam) (t - s), and each session's share is at least phi(lam) = area +
   lam x work + per pause and token the cheaper of keeping and lam x recomputing. So at most
   as many of them end by t as the smallest phi's (of those whose solo end is <= t) fit
   in (B + lam) (t - s), and N(t) is at least the window's arrivals less that, for every s
   (an arrival time) and lam (a grid).
7. **Integral.** The bound on N(t) falls as t grows between arrivals (more may have ended),
   so on a cell between two grid times with no arrival inside, its value at the cell's
   end, taken with the sessions arrived at the cell's start, bounds N there; the cells are
   summed.

The bound is the largest of fact 1 alone, facts 2-4 and facts 5-7. What it leaves out (so it
stays a bound, and is loose there): the recomputation forced when a big phase runs beside a
paused session (facts 2-4 let a preempted phase resume free), the batch-step overhead and
weight reads that requests share, a prefill's stall of the decodes in its batch step, and
the indivisibility of a context in facts 5-7 (memory-time is shared as a fluid).
"""

from __future__ import annotations

import argparse
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ascii_args import ascii_int

from kvsaga.sim.cost import StepCostModel, attention_pairs
from kvsaga.sim.trace import Session

MAX_MACHINES = 8  # the largest m tried (m = 1: phases of over half the GPU exclude each other)


@dataclass
class SessionNeeds:
    """One session's solo timeline (fact 1) and its emitting phases (fact 2)."""

    arrival_s: float
    solo_s: float
    # per step: (solo time of the step (prefill + decodes), the pause after it, the
    # emitting steps' time, the step's own blocks)
    steps: list[tuple[float, float, float, int]] = field(default_factory=list)
    shared_blocks: int = 0
    work_s: float = 0.0  # compute time of the tokens it computes at least (fact 5)
    area: float = 0.0  # own blocks x emitting steps' time, summed (block-seconds)
    # per pause: (its least length, the first and the end token the next step could hit
    # beyond the shared blocks)
    pauses: list[tuple[float, int, int]] = field(default_factory=list)


def _decode_sum(cost: StepCostModel, first_ctx: int, count: int) -> float:
    """Sum of one-token decode steps over contexts first_ctx .. first_ctx + count - 1 (the
    cost model's own times, elementwise)."""
    if count <= 0:
        return 0.0
    ctx = np.arange(first_ctx, first_ctx + count, dtype=np.int64)
    return float(cost.decode_step_times(1, ctx).sum())


def _prefill_lower(cost: StepCostModel, new: int, hit: int, budget: int) -> float:
    """The least total time of the batch steps that compute `new` prompt tokens over `hit`
    cached ones, in any chunking under a token budget of `budget` (fact 1)."""
    two_params, attention, flops, kv_bytes, weights, hbm_bw, _ = cost._roofline
    chunks = -(-new // budget)
    compute = (two_params * new + attention * attention_pairs(new, hit)) / flops
    compute += cost._comm_bytes_time(new)
    if cost.tp > 1:
        compute += chunks * 2 * cost.model.num_layers * cost.allreduce_latency_s
    memory = (chunks * weights + (hit + new) * kv_bytes) / hbm_bw
    return chunks * cost.step_overhead_s + max(compute, memory)


def session_needs(session: Session, cost: StepCostModel, budget: int) -> SessionNeeds:
    """Fact 1 and fact 2's per-step figures of one session."""
    bs = cost.block_size
    shared = session.shared_prefix.tokens // bs
    need = SessionNeeds(session.arrival_s, 0.0, shared_blocks=shared)
    two_params, attention, flops = cost._roofline[:3]
    computed = shared * bs  # tokens the next prompt may hit
    for k, step in enumerate(session.steps):
        prompt = session.prompt_length(k)
        hit = min(computed, prompt - 1)
        if k:
            need.pauses.append((session.steps[k - 1].tool_s, shared * bs, hit))
        prefill = _prefill_lower(cost, prompt - hit, hit, budget)
        decoding = _decode_sum(cost, prompt + 1, step.output_tokens - 1)
        emitting = cost.prefill_time(1, prompt - 1) + decoding  # last chunk, decodes
        solo = prefill + decoding
        own = -(-prompt // bs) - shared
        need.steps.append((solo, step.tool_s, emitting, own))
        need.solo_s += solo + step.tool_s
        need.area += emitting * own
        decodes = step.output_tokens - 1  # contexts prompt + 1 .. prompt + decodes
        need.work_s += (two_params * (prompt - hit + decodes) + attention * (
            attention_pairs(prompt - hit, hit)
            + decodes * prompt + decodes * (decodes + 1) // 2)) / flops
        computed = prompt + step.output_tokens - 1
    return need


def srpt_completions(jobs: Sequence[tuple[float, float]], speed: float = 1.0) -> list[float]:
    """Completion times, ascending, of preemptive shortest-remaining-processing-time on one
    machine of `speed`, jobs (release, processing)."""
    pending = sorted(jobs)
    heap: list[float] = []  # remaining processing (at speed 1) of released jobs
    out: list[float] = []
    t, i = 0.0, 0
    while i < len(pending) or heap:
        if not heap:
            t = max(t, pending[i][0])
        while i < len(pending) and pending[i][0] <= t:
            heapq.heappush(heap, pending[i][1])
            i += 1
        rest = heapq.heappop(heap)
        nxt = pending[i][0] if i < len(pending) else math.inf
        if t + rest / speed <= nxt:
            t += rest / speed
            out.append(t)
        else:
            heapq.heappush(heap, rest - (nxt - t) * speed)
            t = nxt
    return out


def _machine_bound(needs: Sequence[SessionNeeds], threshold: float, machines: int) -> float:
    """Facts 2-4 for phases of more than `threshold` own blocks on `machines` machines:
    a lower bound on the sum of completion times."""
    total = 0.0
    jobs, ds, floors = [], [], []
    for n in needs:
        big = [k for k, s in enumerate(n.steps) if s[3] > threshold]
        if not big:
            total += n.arrival_s + n.solo_s
            continue
        first, last = big[0], big[-1]
        r = n.arrival_s + sum(s[0] + s[1] for s in n.steps[:first])
        p = sum(n.steps[k][2] for k in big)
        q = n.steps[last][1] + sum(s[0] + s[1] for s in n.steps[last + 1:])
        jobs.append((r, p))
        floors.append(r + p)
        ds.append(n.arrival_s + n.solo_s - q)
        total += q
    if not jobs:
        return total
    ys = srpt_completions(jobs, speed=machines)
    floors.sort()
    ds.sort()
    return total + sum(max(y, f, d) for y, f, d in zip(ys, floors, ds, strict=True))


def _pause_cost(pause: tuple[float, int, int], lam: float, block_size: int, two_params: float,
                attention: float, flops: float) -> float:
    """Fact 6's least price of one pause at multiplier `lam`: each token the next step could
    hit is kept (pause / block_size block-seconds) or recomputed (`lam` x its compute
    time, (2 params + attention x (position + 1)) / flops), whichever is cheaper; the
    recompute price grows with the position, so the first tokens are the ones recomputed."""
    tau, lo, hi = pause
    if hi <= lo:
        return 0.0
    keep = tau / block_size
    if lam <= 0:
        return 0.0
    # recompute position p while lam * (two_params + attention * (p + 1)) / flops <= keep
    last = math.floor((keep * flops / lam - two_params) / attention) - 1
    cut = min(max(last + 1, lo), hi)  # positions [lo, cut) are recomputed
    n = cut - lo
    positions = n * (lo + cut + 1) / 2  # sum of (p + 1) over [lo, cut)
    return lam * (two_params * n + attention * positions) / flops + keep * (hi - cut)


def _window_bound(needs: Sequence[SessionNeeds], cost: StepCostModel, num_blocks: int,
                  cells: int = 600) -> float:
    """Facts 5-7: a lower bound on the sum of the sessions' TCTs (not of completions)."""
    two_params, attention, flops = cost._roofline[:3]
    lams = [0.0] + [num_blocks * 4.0 ** e for e in range(-3, 4)]
    arr = np.array([n.arrival_s for n in needs])
    ends = np.array([n.arrival_s + n.solo_s for n in needs])
    phi = np.array([[n.area + lam * n.work_s + sum(
        _pause_cost(p, lam, cost.block_size, two_params, attention, flops) for p in n.pauses)
        for n in needs] for lam in lams])
    # cells: every arrival and solo end is a boundary, the rest split evenly
    marks = np.unique(np.concatenate([arr, ends]))
    span = marks[-1] - marks[0]
    bounds = [marks[0]]
    for a, b in zip(marks[:-1], marks[1:], strict=True):
        k = max(1, int(math.ceil((b - a) / span * cells)))
        bounds += list(np.linspace(a, b, k + 1)[1:])
    starts = np.unique(arr)
    width = span / cells if span > 0 else max(ends.max() - arr.min(), 1e-3) / cells
    total = 0.0
    t0, cell = bounds[0], 0
    while True:
        # in (t0, t1) the sessions arrived are those with arrival <= t0; N there is at least
        # what the larger time t1 allows (fewer unfinished), with that set; past the last
        # solo end, cells of the same width until the bound reaches 0 (it only falls then)
        cell += 1
        t1 = bounds[cell] if cell < len(bounds) else t0 + width
        arrived = arr <= t0
        done_ok = ends <= t1
        best = int((arrived & ~done_ok).sum())  # fact 1 alone
        for s in starts[starts <= t0]:
            window = arrived & (arr >= s)
            size = int(window.sum())
            can = window & done_ok
            if not can.any():
                best = max(best, size)
                continue
            most = size
            for j, lam in enumerate(lams):
                ok = np.sort(phi[j][can])
                room = (num_blocks + lam) * (t1 - s)
                most = min(most, int(np.searchsorted(np.cumsum(ok), room, side="right")))
            best = max(best, size - most)
        total += best * (t1 - t0)
        if cell >= len(bounds) - 1 and best == 0:
            return total
        t0 = t1


def mean_tct_bound(sessions: Sequence[Session], cost: StepCostModel, num_blocks: int,
                   budget: int = 8192) -> dict[str, float]:
    """The bound of the module docstring for `sessions` on `num_blocks` GPU blocks:
    `bound_s` the mean TCT no schedule beats, `solo_s` fact 1 alone (memory ignored), and
    `which` the part that gave it ("solo", "exclusive phases, m M" or "memory-time")."""
    if not sessions:
        raise ValueError("no sessions")
    if num_blocks < 1 or budget < 1:
        raise ValueError(f"num_blocks ({num_blocks}) and budget ({budget}) must be >= 1")
    needs = [session_needs(s, cost, budget) for s in sessions]
    arrivals = sum(n.arrival_s for n in needs)
    solo = sum(n.arrival_s + n.solo_s for n in needs)
    free = num_blocks - min(n.shared_blocks for n in needs)
    best, which = solo, "solo"
    for m in range(1, MAX_MACHINES + 1):
        got = _machine_bound(needs, free / (m + 1), m)
        if got > best * (1 + 1e-9):  # more than rounding: the sums run in other orders
            best, which = got, f"exclusive phases, m {m}"
    window = _window_bound(needs, cost, num_blocks) + arrivals
    if window > best * (1 + 1e-9):
        best, which = window, "memory-time"
    n = len(needs)
    return {"bound_s": (best - arrivals) / n, "solo_s": (solo - arrivals) / n,
            "which": which}


def point_bound(family: str, seed: int, load: float, frac: float) -> dict[str, float]:
    """The bound at one grid point of bench/scheduling.py (its trace and capacity)."""
    import scheduling

    from kvsaga.sim.simulator import SimConfig
    sessions = scheduling.trace(family, seed, load)
    cfg = SimConfig(preset=scheduling.PRESET)
    return mean_tct_bound(sessions, cfg.cost, scheduling.capacity(sessions, frac),
                          cfg.max_num_batched_tokens)


def main(argv: list[str] | None = None) -> int:
    import scheduling
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default=str(scheduling.REPORT_SEED),
                    help="comma-separated trace seeds (default: the report seed, %(default)s)")
    ap.add_argument("--families", default="swe,web,bfcl",
                    help="comma-separated workflow families (default: %(default)s)")
    args = ap.parse_args(argv)
    print("| seed | family | load | capacity | solo bound s | memory bound s | from |")
    print("|---|---|---|---|---|---|---|")
    for seed in (ascii_int(s) for s in args.seeds.split(",")):
        for fam in args.families.split(","):
            for load, frac in scheduling.GRID:
                b = point_bound(fam, seed, load, frac)
                print(f"| {seed} | {fam} | {load:g}x | {frac:.0%} | {b['solo_s']:.2f} "
                      f"| {b['bound_s']:.2f} | {b['which']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
