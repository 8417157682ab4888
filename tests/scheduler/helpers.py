"""Set-ups the scheduler tests share: a small manager, token runs, a workflow scheduler with
test-friendly defaults, a session's next step, two sessions admitted and paused, two waiting
behind a full pool, and a demoted session whose room another took."""

from __future__ import annotations

import math
from collections import deque
from enum import Enum
from types import BuiltinFunctionType, FunctionType, MethodType

from kvsaga import KVCacheManager, KVSpec
from kvsaga.scheduler import make_scheduler
from tests.sched_helpers import ToyExecutor, ToyRequest, drive

BS = 4


def plain(x):
    """`x` as plain values (its tables' fields, recursively), comparable by value: an object
    with the default repr shows only its address, so a change inside it would go unseen.
    Sets are sorted (their order is not state); functions and enum members stay themselves."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, deque)):
        return [plain(v) for v in x]
    if isinstance(x, (set, frozenset)):
        return sorted((plain(v) for v in x), key=repr)
    if isinstance(x, (Enum, FunctionType, BuiltinFunctionType, MethodType)):
        return x
    if hasattr(x, "__dict__") or hasattr(x, "__slots__"):
        names = list(getattr(x, "__dict__", {})) + list(getattr(x, "__slots__", ()))
        return {n: plain(getattr(x, n)) for n in names if hasattr(x, n)}
    return x


def scheduler_state(s) -> str:
    """Everything scheduler `s` holds but its manager, as text: every attribute walked down
    to plain values (`plain`), so a refused call that changes a table in place is seen.
    `_asked_graph` is the policy's graph, which the scheduler only compares by identity
    (`_refusal_still_holds`): it counts by identity too (its predictions are the policy's,
    cached as anyone reads them). Asserts that no object is left as a bare address (a new
    opaque attribute fails here)."""
    text = repr(plain({k: f"id {id(v)}" if k == "_asked_graph" else v
                       for k, v in sorted(vars(s).items()) if k != "manager"}))
    assert " object at 0x" not in text, text
    return text


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


def next_step(prev: ToyRequest, extra: list[int], arrival: float) -> ToyRequest:
    """The next step of `prev`'s session, queued at `arrival`: its context (`prev`'s prompt
    and output) then `extra`, one output token, more steps to come; `prev`'s workflow,
    tenant and salt."""
    return ToyRequest(prev.session_id, prev.prompt + prev.out + extra, max_new=1, last=False,
                      resumed=True, arrival=arrival, workflow=prev.workflow,
                      tenant=prev.tenant, salt=prev.salt)


def big_demoted(charge, tenant=None, o_tenant=None, **kw):
    """keep (60 tokens) and big (40 tokens), both of `tenant`, admitted on a 32-block pool
    under `readmit_charge=charge` (`kw`: the scheduler's other parameters), run a step and
    paused; big is demoted and a new session o (40 tokens, of `o_tenant`) takes its room
    and pauses. All of workflow "w". Returns (manager, scheduler, executor, big's next step:
    45 tokens, not queued yet)."""
    m = manager(32)
    s = wf(m, readmit_charge=charge, **kw)
    ex = ToyExecutor(m)
    keep = ToyRequest("keep", toks(300, 60), max_new=1, last=False, workflow="w", tenant=tenant)
    big = ToyRequest("big", toks(100, 40), max_new=1, last=False, workflow="w", tenant=tenant)
    for r in (keep, big):
        s.add(r, 0.0)
    for t in (0.0, 0.1, 0.2):
        ex.run(s, s.schedule(t, ex), t)
    assert set(s.sessions) == {"keep", "big"} and not s.running
    s._demote_session("big", 1.0)
    s.add(ToyRequest("o", toks(700, 40), max_new=1, last=False, workflow="w",
                     tenant=o_tenant), 1.0)
    for t in (1.0, 1.1, 1.2):
        ex.run(s, s.schedule(t, ex), t)
    assert set(s.sessions) == {"keep", "o"} and not s.running
    return m, s, ex, next_step(big, toks(500, 4), 2.0)



def assert_charged_uncached(s, step) -> None:
    """`s` charges `step` (big's next step of `big_demoted`, queued) what "uncached" charges
    it on `big_demoted`'s state queued at 2.0: the same figures, no whole-context charge."""
    _, base, _, ref = big_demoted("uncached")
    base.add(ref, 2.0)
    want = base._readmit_tokens(ref, base.lookup(ref))
    assert want[1] is None and s._readmit_tokens(step, s.lookup(step)) == want


def growing_charges(steps: int, **kw) -> list[tuple[int | None, int, int | None]]:
    """One session whose prompts grow by 16 tokens a step (a tool's observation and the
    step's 1-token reply) under a workflow scheduler on a 256-block pool (`kw`: its
    parameters): per step, the working set charged while its step is queued (None for the
    first), admitted, and paused after it (None after the last)."""
    m = manager(256)
    s = wf(m, **kw)
    ex = ToyExecutor(m)
    out = []
    for k in range(steps):
        t = float(k)
        req = ToyRequest("a", toks(0, 20 + 16 * k), max_new=1, last=k == steps - 1,
                         arrival=t, resumed=k > 0)
        s.add(req, t)
        queued = s.sessions["a"].blocks if k else None
        sched_out = s.schedule(t, ex)
        admitted = s.sessions["a"].blocks
        ex.run(s, sched_out, t)
        paused = s.sessions["a"].blocks if "a" in s.sessions else None
        out.append((queued, admitted, paused))
    return out


def assert_fast_path_as_reference(policy: str, **params) -> None:
    """The simulator's decode runs (its fast path) on tests/sim/test_decode_runs.py's tiny
    trace (380 GPU blocks, the workflow scheduler with `params` under `policy`) give the
    reference path's row and number of session admissions."""
    from kvsaga.sim.simulator import SimConfig, Simulator
    from tests.sim.test_decode_runs import same, tiny_trace

    config = SimConfig(num_gpu_blocks=380, scheduler="workflow", policy=policy,
                       scheduler_params=params)
    rows = []
    for reference in (True, False):
        sim = Simulator(tiny_trace(), config, reference=reference)
        rows.append((sim.run().to_dict(), sim.scheduler.num_session_admissions))
    assert same(rows[0][0], rows[1][0]) and rows[0][1] == rows[1][1]


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


def a_paused(**kw):
    """A workflow scheduler (`wf(m, **kw)`) on a 64-token manager that admitted session a (20
    tokens, 7 blocks with its growth) at t=0 and saw it pause on a tool.

    Returns (manager, scheduler, executor)."""
    m = manager(16)
    s = wf(m, **kw)
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 20), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    return m, s, ex


def queued_big_small(readmitted_at: float | None = None, began_at: float | None = None, **kw):
    """A workflow scheduler whose pool holds one admitted session (a, 44 tokens), with two new
    sessions waiting: `big` (24 tokens, queued at 0) and `small` (8 tokens, at 0.1).
    `readmitted_at`: big's step is instead a demoted session's (resumed), queued then;
    `began_at` (with it): big's session's first step queued then and left the queue (as if
    admitted, then demoted)."""
    m = manager(16)
    s = wf(m, backfill_window=0, **kw)
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 44), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    if began_at is not None:
        first = ToyRequest("big", toks(100, 24), max_new=1, arrival=began_at)
        s.add(first, began_at)
        assert s._dequeue(first, began_at)
    at = 0.0 if readmitted_at is None else readmitted_at
    big = ToyRequest("big", toks(100, 24), max_new=1, arrival=at,
                     resumed=readmitted_at is not None)
    small = ToyRequest("small", toks(200, 8), max_new=1, arrival=0.1)
    s.add(big, at)
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
