"""Set-ups the scheduler tests share: a small manager, token runs, a workflow scheduler with
test-friendly defaults, two sessions admitted and paused, and two waiting behind a full pool."""

from __future__ import annotations

import math

from kvsaga import KVCacheManager, KVSpec
from kvsaga.scheduler import make_scheduler
from tests.sched_helpers import ToyExecutor, ToyRequest, drive

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
    "predicted", the default, is tests/scheduler/test_admission_order.py's), and a demoted
    session's step charged "uncached" with no swap (`readmit_charge`, whose rules the tests
    check; "room_returns_queue", the default since `--fit` round 34, is
    tests/scheduler/test_room_returns_queue.py's)."""
    kw.setdefault("paused_growth", True)
    kw.setdefault("readmit_charge", "uncached")
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


def queued_big_small(**kw):
    """A workflow scheduler whose pool holds one admitted session (a, 44 tokens), with two new
    sessions waiting: `big` (24 tokens, queued at 0) and `small` (8 tokens, at 0.1)."""
    m = manager(16)
    s = wf(m, backfill_window=0, **kw)
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 44), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    big = ToyRequest("big", toks(100, 24), max_new=1, arrival=0.0)
    small = ToyRequest("small", toks(200, 8), max_new=1, arrival=0.1)
    s.add(big, 0.0)
    s.add(small, 0.1)
    assert not s.schedule(0.1, ex).admitted  # a's working set leaves no room for either
    return s, big, small


def two_finished_sessions(**kw):
    """A workflow scheduler that has run two sessions to their ends: a (2 steps, resumed at
    3 s) and b (1 step)."""
    s = wf(manager(64), **kw)
    a1 = ToyRequest("a", toks(0, 4), max_new=1, last=False)
    a2 = ToyRequest("a", toks(0, 4) + [1, 5], max_new=1, resumed=True, arrival=3.0)
    b = ToyRequest("b", toks(100, 4), max_new=1)
    drive(s, [(0.0, a1), (0.0, b), (3.0, a2)])
    return s


def run_two_to_pause(m, s) -> tuple[ToyExecutor, ToyRequest, float]:
    """Sessions a and b (20-token prompts, up to 9 new tokens, more steps to come) added to
    scheduler `s` on manager `m` at t=0 and run, one step a second, until both pause.

    Returns (executor, a, the time they paused by)."""
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, 20), max_new=9, last=False)
    b = ToyRequest("b", toks(100, 20), max_new=9, last=False)
    for r in (a, b):
        s.add(r, 0.0)
    t = 0.0
    while s.running or s.num_waiting:
        ex.run(s, s.schedule(t, ex), t)
        t += 1.0
    return ex, a, t


def free_counts_while_refused(m, s, ex, steps: int) -> list[int]:
    """Admission attempts at 1.0 .. `steps` (the executor running each), none admitting
    (asserted): the pool's free count at the first attempt and at each where it changed."""
    seen = []
    for i in range(1, steps + 1):
        out = s.schedule(float(i), ex)
        assert not out.admitted
        seen.append(m.pool.num_available)
        ex.run(s, out, float(i))
    return [b for i, b in enumerate(seen) if i == 0 or b != seen[i - 1]]


def decision_trace(m, s, ex, steps: int = 6, t: float = 2.0) -> list[tuple]:
    """`steps` admission attempts from `t`, 0.1 s apart (the executor running each): per
    attempt the admitted sessions, the sessions, the demoted ones and the committed blocks;
    the manager's integrity checked after them."""
    trace = []
    for _ in range(steps):
        out = s.schedule(t, ex)
        trace.append((sorted(r.session_id for r in out.admitted), sorted(s.sessions),
                      sorted(s._deferred), s._committed))
        ex.run(s, out, t)
        t += 0.1
    m.check_integrity()
    return trace
