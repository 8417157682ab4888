"""Set-ups the scheduler tests share: a small manager, token runs, a workflow scheduler with
test-friendly defaults, and two sessions admitted and paused."""

from __future__ import annotations

import math

from kvsaga import KVCacheManager, KVSpec
from kvsaga.scheduler import make_scheduler
from tests.sched_helpers import ToyExecutor, ToyRequest

BS = 4


def manager(num_blocks: int = 16, policy: str = "lru", **kw) -> KVCacheManager:
    return KVCacheManager(KVSpec(1, 1, 4, block_size=BS), num_blocks, policy=policy,
                          clock=lambda: 0.0, **kw)


def toks(base: int, n: int) -> list[int]:
    return list(range(base, base + n))


def wf(m, **kw):
    """A workflow scheduler with a small growth prior, no idle admission, no overcommit,
    paused sessions charged their growth too (`paused_growth`), which the tests' pool sizes
    assume (the default, False, is checked in tests/scheduler/test_workflow.py), and
    sessions waiting in queue order (`admission_order` "fifo", whose rules the tests check;
    "predicted", the default, is tests/scheduler/test_admission_order.py's)."""
    kw.setdefault("paused_growth", True)
    kw.setdefault("admission_order", "fifo")
    kw.setdefault("overcommit", 1.0)
    kw.setdefault("max_num_batched_tokens", 64)
    kw.setdefault("prior_growth_tokens", 8)
    kw.setdefault("horizon_steps", 1.0)
    kw.setdefault("idle_admit_s", math.inf)
    return make_scheduler("workflow", m, **kw)


def two_paused(prompt_len=20, **kw):
    """A workflow scheduler on a 64-token manager that admitted sessions a and b (prompts of
    `prompt_len` tokens) at t=0 and saw both pause on a tool.

    Returns (manager, scheduler, executor, a)."""
    m = manager(16)
    s = wf(m, **kw)
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, prompt_len), max_new=1, last=False)
    b = ToyRequest("b", toks(100, prompt_len), max_new=1, last=False)
    for r in (a, b):
        s.add(r, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    return m, s, ex, a
