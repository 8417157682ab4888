"""A lower bound on the mean task time any scheduler can reach on one replay of
bench/vllm_scheduler_replay.py, hence an upper bound on any connector's gain over plain vLLM.

Plain Python (no vLLM import): it reads only the sessions, the clock and vLLM's limits.

The replay's clock charges a step `step_s` plus `token_s` per scheduled token, and a request
is scheduled in at least one step per token it emits (the last prefill chunk emits the first;
a chunk holds at most `max_num_batched_tokens` tokens). Whatever a connector (or any other
scheduler inside the same vLLM and KV budget) does, it can change only *when* requests run,
*which* run together and *what* prefill they can skip; so the bound rests on three facts that
hold for every schedule:

1. **Minimal compute per request.** vLLM caches full blocks only and always computes a
   prompt's last token, so step k of a session computes at least `L_k - h_k` prefill tokens,
   `h_k` the longest full-block prefix of its prompt (at most its last token excluded) that
   the session (or, for the shared system prompt, any session) had computed before, and then
   `n_k - 1` decode tokens; it is scheduled in at least `ceil((L_k - h_k) / chunk) + n_k - 1`
   steps.
2. **Solo.** A task's time is at least its tool pauses plus, per step, those steps' fixed
   cost and its own tokens (other requests in a step only lengthen it): no rebuild, no
   queueing, no one else in the batch. So the task cannot end before its arrival plus this.
3. **Work.** Before the j-th task to end has ended, the j tasks that ended have been computed
   in full: the engine spent at least `token_s` x their tokens plus `step_s` x the steps they
   needed, and those steps are at least their block-steps over the blocks a step can hold
   (each of a request's `n_k` token-emitting steps holds its prompt's blocks, less the
   system prompt's, which every running request shares; a step holds at most the usable
   blocks less those) and at least their request-steps over `max_num_seqs`. Taking, for each
   term, the j smallest tasks' sum bounds the j-th completion time from below.

So the j-th completion is at least max(work bound of j tasks, j-th smallest solo end), and
the mean task time is at least the mean of those minus the mean arrival. Plain vLLM's mean
TCT over this is more than any connector can gain on that replay (the "every hit kept"
arms, the clairvoyant order among them, stay inside it too: they reference no more blocks).
It ignores what memory forces beyond block-steps (preemption, waiting for room), so it is
loose where the budget binds: an upper bound, not an estimate.

**With memory** (`memory_bound`): contexts that cannot stay resident side by side through
their pauses must be computed again (or wait, resident, which holds memory longer still).
Every full block that step k+1 of a session could hit beyond the system prompt (fact 1's
`h_{k+1}`) is, through the pause before it (at least the tool's `tool_s`), either

- **kept** resident the whole time: memory-time of at least `tool_s` block-seconds, or
- **not**: then it is gone when step k+1 runs (nothing but the session's own request
  computes its context, and this engine has no other tier to reload it from), which
  computes it again: `block_size` tokens, `rho = block_size x token_s` seconds, added to
  the engine's busy time and to that task's own time.

Blocks of different sessions' contexts beyond the system prompt are distinct, and while
any request runs the system prompt's blocks are resident too (every prompt starts with it).
So up to time T the memory-time of the blocks beyond the system prompt is at most
`B x T - S x busy` (B usable blocks, S the system prompt's, busy the engine's busy time up
to T). For the set of the first j tasks to end, all of their steps and pauses lie before
the j-th end T, so T is at least the least T for which some choice of kept blocks meets
(a) their running area (each token-emitting step holds its prompt's blocks beyond the
system prompt for at least its step: `step_s` plus its own tokens) + their kept
memory-time + S x (their work + their recompute) <= B x T;
(b) their work (fact 3) + their recompute <= T;
(c) each of them: arrival + solo time (fact 2) + its own recompute <= T.
Keeping a block costs its pause in (a) and saves `rho` in (b), (c) and `S x rho` in (a);
for a given T the cheapest choice that meets (b) and (c) is greedy (each task's shortest
pauses first, up to what (c) forces; then the shortest of all, up to what (b) forces; then
every block whose pause is shorter than `S x rho`), so the least T is found by bisection.
Blocks are counted fractionally (a relaxation: the bound only gets lower). Taking, for each
j, the least T over every set of j tasks (all subsets: at most `MAX_EXACT_TASKS` tasks)
bounds the j-th completion from below, with or without the bound above beside it. This one
holds for schedules whose cached blocks count against the budget (plain vLLM, any
connector), not for the "every hit kept" arms, which cache freed blocks outside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskNeeds:
    """What one task needs from any schedule (fact 1), and its solo time (fact 2)."""

    arrival_s: float
    solo_s: float  # its pauses + per step the fixed cost of its steps and its own tokens
    tokens: int  # tokens it computes at least (prefill beyond its hits, then decode)
    request_steps: int  # steps its requests are scheduled in, at least
    block_steps: int  # blocks x steps its token-emitting steps hold, system prompt aside
    # block-seconds its token-emitting steps hold at least (blocks beyond the system prompt
    # x `step_s` and its own tokens in those steps)
    run_area: float = 0.0
    # per pause: (full blocks beyond the system prompt the next step can hit, the pause s)
    pauses: list[tuple[int, float]] = field(default_factory=list)


def task_needs(steps: Sequence[Any], system_tokens: int, arrival_s: float, *, step_s: float,
               token_s: float, block_size: int, chunk_tokens: int, template_tokens: int,
               template_end_tokens: int, reply: Any) -> TaskNeeds:
    """One session's needs. `steps`: its trace steps (`input_tokens`, `tool_s`), framed as
    bench/vllm_scheduler_replay.py frames them; `reply(step)`: the step's reply tokens."""
    context = system_tokens  # the prompt so far, as the replay builds it
    computed = 0  # leading tokens of the context whose KV was computed (by some session)
    system_blocks = system_tokens // block_size
    need = TaskNeeds(arrival_s, 0.0, 0, 0, 0)
    for k, st in enumerate(steps):
        prompt = context + st.input_tokens + template_tokens
        n_out = reply(st)
        # the system prompt may be cached from another session, even for a first step
        had = max(computed, system_tokens)
        hit = min(had // block_size, (prompt - 1) // block_size) * block_size
        prefill = prompt - hit
        chunks = math.ceil(prefill / chunk_tokens)
        sched = chunks + n_out - 1
        tokens = prefill + n_out - 1
        need.tokens += tokens
        need.request_steps += sched
        blocks = max(math.ceil(prompt / block_size) - system_blocks, 0)
        need.block_steps += n_out * blocks
        last_chunk = prefill - chunk_tokens * (chunks - 1)  # computed in the first emitting step
        need.run_area += blocks * (n_out * step_s + (last_chunk + n_out - 1) * token_s)
        if k > 0:  # the pause before this step, and the blocks it can hit beyond the system's
            need.pauses.append((max(hit // block_size - system_blocks, 0), steps[k - 1].tool_s))
        need.solo_s += sched * step_s + tokens * token_s
        if k + 1 < len(steps):
            need.solo_s += st.tool_s
        computed = prompt + n_out - 1  # the last reply token is sampled, never computed
        context = prompt + n_out + template_end_tokens
    return need


def _rank_ends(needs: Sequence[TaskNeeds], *, step_s: float, token_s: float,
               usable_blocks: int, system_blocks: int, max_num_seqs: int) -> list[float]:
    """Per rank j, the least end of the j-th task to end by facts 2 and 3."""
    per_step_blocks = usable_blocks - system_blocks
    if not needs or per_step_blocks <= 0:
        raise ValueError(f"no tasks ({len(needs)}) or no blocks beyond the system prompt's "
                         f"({usable_blocks} usable, {system_blocks} system)")
    tokens = sorted(t.tokens for t in needs)
    blocks = sorted(t.block_steps for t in needs)
    reqs = sorted(t.request_steps for t in needs)
    ends = sorted(t.arrival_s + t.solo_s for t in needs)
    out = []
    tok = blk = req = 0
    for j in range(len(needs)):
        tok, blk, req = tok + tokens[j], blk + blocks[j], req + reqs[j]
        steps = max(blk / per_step_blocks, req / max_num_seqs)
        out.append(max(step_s * steps + token_s * tok, ends[j]))
    return out


def mean_tct_lower_bound(needs: Sequence[TaskNeeds], *, step_s: float, token_s: float,
                         usable_blocks: int, system_blocks: int,
                         max_num_seqs: int) -> dict[str, float]:
    """The bound (module docstring): `bound_s` the mean task time no schedule beats, and
    `solo_s`, fact 2 alone (every task as if it ran alone: no rebuild, no queueing)."""
    ranks = _rank_ends(needs, step_s=step_s, token_s=token_s, usable_blocks=usable_blocks,
                       system_blocks=system_blocks, max_num_seqs=max_num_seqs)
    arrivals = sum(t.arrival_s for t in needs)
    n = len(needs)
    return {"bound_s": (sum(ranks) - arrivals) / n,
            "solo_s": (sum(t.arrival_s + t.solo_s for t in needs) - arrivals) / n}


MAX_EXACT_TASKS = 14  # memory_bound tries every set of tasks: 2^n of them


def _least_end(group: Sequence[TaskNeeds], *, step_s: float, token_s: float, block_size: int,
               usable_blocks: int, system_blocks: int, max_num_seqs: int) -> float:
    """The least T meeting (a), (b) and (c) of the module docstring for the tasks `group`
    (the last of them to end cannot end before it)."""
    rho = block_size * token_s
    per_step = usable_blocks - system_blocks
    tok = sum(t.tokens for t in group)
    steps = max(sum(t.block_steps for t in group) / per_step,
                sum(t.request_steps for t in group) / max_num_seqs)
    work = step_s * steps + token_s * tok
    run_area = sum(t.run_area for t in group)
    ends = [t.arrival_s + t.solo_s for t in group]
    # each task's pauses, shortest first: (pause s, blocks)
    mine = [sorted((p, b) for b, p in t.pauses if b > 0) for t in group]
    totals = [sum(b for _, b in m) for m in mine]
    total = sum(totals)

    def feasible(end: float) -> bool:
        if end < work or any(end < e for e in ends):
            return False
        kept = area = 0.0
        rest = []  # (pause s, blocks) not kept by (c)
        for i, m in enumerate(mine):
            need = totals[i] - (end - ends[i]) / rho  # (c): blocks task i must keep
            for p, b in m:
                take = min(b, max(need, 0.0))
                kept, area, need = kept + take, area + take * p, need - take
                if b > take:
                    rest.append((p, b - take))
        must = total - (end - work) / rho - kept  # (b): blocks all must keep besides
        for p, b in sorted(rest):
            take = b if p < system_blocks * rho else min(b, max(must, 0.0))
            if take <= 0:
                break  # nothing (b) still needs, and keeping costs more than computing
            kept, area, must = kept + take, area + take * p, must - take
        return (run_area + area + system_blocks * (work + rho * (total - kept))
                <= usable_blocks * end + 1e-9)

    lo = max(work, *ends)
    hi = lo + rho * total + run_area / max(usable_blocks, 1) + sum(
        p * b for m in mine for p, b in m) / max(usable_blocks, 1) + 1.0
    while not feasible(hi):  # never more than a few doublings: memory-time grows with T
        hi *= 2
    if feasible(lo):
        return lo
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    return hi


def memory_bound(needs: Sequence[TaskNeeds], *, step_s: float, token_s: float,
                 block_size: int, usable_blocks: int, system_blocks: int,
                 max_num_seqs: int) -> dict[str, float]:
    """The bound with memory (module docstring): `bound_s` the mean task time no schedule
    beats at this budget, each rank's end the larger of `mean_tct_lower_bound`'s and the
    least end of any set of that many tasks under (a)-(c). Raises ValueError beyond
    `MAX_EXACT_TASKS` tasks (every set is tried)."""
    n = len(needs)
    if n > MAX_EXACT_TASKS:
        raise ValueError(f"memory_bound tries every set of tasks: {n} tasks is more than "
                         f"{MAX_EXACT_TASKS}")
    kw = {"step_s": step_s, "token_s": token_s, "usable_blocks": usable_blocks,
          "system_blocks": system_blocks, "max_num_seqs": max_num_seqs}
    base = mean_tct_lower_bound(needs, **kw)
    least = [math.inf] * (n + 1)
    for mask in range(1, 1 << n):
        group = [needs[i] for i in range(n) if mask >> i & 1]
        t = _least_end(group, block_size=block_size, **kw)
        least[len(group)] = min(least[len(group)], t)
    ranks = _rank_ends(needs, **kw)
    arrivals = sum(t.arrival_s for t in needs)
    total = sum(max(r, m) for r, m in zip(ranks, least[1:], strict=True))
    return {"bound_s": (total - arrivals) / n, "base_bound_s": base["bound_s"],
            "solo_s": base["solo_s"]}


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/vllm_scheduler_replay.py"))
