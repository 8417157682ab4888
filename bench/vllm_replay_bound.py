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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class TaskNeeds:
    """What one task needs from any schedule (fact 1), and its solo time (fact 2)."""

    arrival_s: float
    solo_s: float  # its pauses + per step the fixed cost of its steps and its own tokens
    tokens: int  # tokens it computes at least (prefill beyond its hits, then decode)
    request_steps: int  # steps its requests are scheduled in, at least
    block_steps: int  # blocks x steps its token-emitting steps hold, system prompt aside


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
        sched = math.ceil(prefill / chunk_tokens) + n_out - 1
        tokens = prefill + n_out - 1
        need.tokens += tokens
        need.request_steps += sched
        need.block_steps += n_out * max(math.ceil(prompt / block_size) - system_blocks, 0)
        need.solo_s += sched * step_s + tokens * token_s
        if k + 1 < len(steps):
            need.solo_s += st.tool_s
        computed = prompt + n_out - 1  # the last reply token is sampled, never computed
        context = prompt + n_out + template_end_tokens
    return need


def mean_tct_lower_bound(needs: Sequence[TaskNeeds], *, step_s: float, token_s: float,
                         usable_blocks: int, system_blocks: int,
                         max_num_seqs: int) -> dict[str, float]:
    """The bound (module docstring): `bound_s` the mean task time no schedule beats, and
    `solo_s`, fact 2 alone (every task as if it ran alone: no rebuild, no queueing)."""
    n = len(needs)
    per_step_blocks = usable_blocks - system_blocks
    if n == 0 or per_step_blocks <= 0:
        raise ValueError(f"no tasks ({n}) or no blocks beyond the system prompt's "
                         f"({usable_blocks} usable, {system_blocks} system)")
    tokens = sorted(t.tokens for t in needs)
    blocks = sorted(t.block_steps for t in needs)
    reqs = sorted(t.request_steps for t in needs)
    ends = sorted(t.arrival_s + t.solo_s for t in needs)
    arrivals = sum(t.arrival_s for t in needs)
    bound = solo = 0.0
    tok = blk = req = 0
    for j in range(n):
        tok, blk, req = tok + tokens[j], blk + blocks[j], req + reqs[j]
        steps = max(blk / per_step_blocks, req / max_num_seqs)
        w = step_s * steps + token_s * tok
        bound += max(w, ends[j])
        solo += ends[j]
    return {"bound_s": (bound - arrivals) / n, "solo_s": (solo - arrivals) / n}
