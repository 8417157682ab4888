"""The core scheduler: registry, fcfs (vLLM v1's rule), workflow-atomic admission, Agent Fair
Share, and the side-effect-free `KVCacheManager.lookup` admission relies on."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga import KVCacheManager, KVSpec
from kvsaga.errors import InvalidRequest
from kvsaga.pool import CACHED
from kvsaga.scheduler import (
    SCHEDULERS,
    FCFSScheduler,
    StepRequest,
    WorkflowScheduler,
    make_scheduler,
    scheduler_params,
)
from kvsaga.scheduler.fair_share import FairShare
from kvsaga.scheduler.working_set import (
    GrowthTable,
    demote_deadline,
    shrink,
    working_set_blocks,
)
from tests.sched_helpers import ToyExecutor, ToyRequest, drive

BS = 4


def manager(num_blocks: int = 16, policy: str = "lru", **kw) -> KVCacheManager:
    return KVCacheManager(KVSpec(1, 1, 4, block_size=BS), num_blocks, policy=policy,
                          clock=lambda: 0.0, **kw)


def toks(base: int, n: int) -> list[int]:
    return list(range(base, base + n))


# -- registry ---------------------------------------------------------------------------------
def test_registry_names_and_defaults():
    assert set(SCHEDULERS) == {"fcfs", "workflow"}
    m = manager()
    assert isinstance(make_scheduler("fcfs", m), FCFSScheduler)
    s = make_scheduler("workflow", m, max_num_seqs=3, overcommit=1.5)
    assert isinstance(s, WorkflowScheduler) and s.max_num_seqs == 3 and s.overcommit == 1.5
    assert "overcommit" in scheduler_params("workflow")
    assert "overcommit" not in scheduler_params("fcfs")
    assert isinstance(ToyRequest("a", [1]), StepRequest)


@pytest.mark.parametrize("name,params,match", [
    ("lifo", {}, "unknown scheduler 'lifo'; choose one of \\['fcfs', 'workflow'\\]"),
    (None, {}, "unknown scheduler None"),
    ("fcfs", {"overcommit": 2.0}, "scheduler 'fcfs' has no parameter 'overcommit'"),
    ("workflow", {"horizon": 2}, "no parameter 'horizon'; its parameters: max_num_seqs"),
    ("workflow", {"overcommit": 0}, "overcommit must be a number > 0, got 0"),
    ("workflow", {"overcommit": float("nan")}, "overcommit"),
    ("workflow", {"max_bypass": -1}, "max_bypass must be an integer >= 0"),
    ("workflow", {"backfill_window": -1}, "backfill_window must be an integer >= 0"),
    ("workflow", {"shrink_aging": -1}, "shrink_aging must be an integer >= 0"),
    ("workflow", {"growth_alpha": 1.5}, "growth_alpha must be in \\(0, 1\\]"),
    ("workflow", {"tenant_weights": {"a": 0}}, "tenant_weights\\['a'\\]"),
    ("fcfs", {"max_num_seqs": 0}, "max_num_seqs must be an integer >= 1, got 0"),
    ("fcfs", {"max_num_batched_tokens": True}, "max_num_batched_tokens"),
])
def test_bad_names_and_params_are_clear_errors(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_scheduler(name, manager(), **params)


def test_manager_must_be_a_manager():
    with pytest.raises(ValueError, match="manager must be a KVCacheManager"):
        make_scheduler("fcfs", object())


# -- lookup -------------------------------------------------------------------------------------
def _state(m: KVCacheManager):
    """Everything lookup must leave alone, eviction order included."""
    victims = m.policy.choose_victims(m.pool.num_cached, 0.0) if m.pool.num_cached else []
    return (m.stats(), list(m.pool.state), list(m.pool.refcount), list(m.pool.generation),
            victims, {s: (list(x.block_ids), x.num_computed, list(x.token_ids), x.tail)
                      for s, x in m.sessions.items()})


def test_lookup_predicts_begin_step_and_changes_nothing():
    m = manager(16)
    st0 = m.begin_step("a", toks(0, 10), now=0.0)
    m.allocate_slots("a", 10 - st0.num_cached_tokens)
    m.append_tokens("a", [99])
    m.finish_step("a", now=1.0)  # 2 full blocks + a tail of 2 computed tokens (8, 9)
    prompt = toks(0, 10) + [99, 5, 6]
    before = _state(m)
    lk = m.lookup("a", prompt)
    assert _state(m) == before
    assert (lk.gpu_hit_blocks, lk.gpu_cached_blocks, lk.host_hit_blocks, lk.tail_tokens) == \
        (2, 3, 0, 2)
    assert lk.num_cached_tokens == 10 and lk.num_prompt_tokens == 13
    assert lk.blocks_to_admit(13) == 3 + 4 - 2
    assert m.begin_step("a", prompt, now=2.0).num_cached_tokens == lk.num_cached_tokens


def test_lookup_errors_match_begin_step():
    m = manager(4)
    with pytest.raises(InvalidRequest, match="non-empty str"):
        m.lookup("", [1])
    with pytest.raises(InvalidRequest, match="must not be empty"):
        m.lookup("a", [])
    with pytest.raises(InvalidRequest, match="the pool has only 4"):
        m.lookup("a", toks(0, 17))
    m.begin_step("a", [1, 2])
    with pytest.raises(InvalidRequest, match="already has an open step"):
        m.lookup("a", [1, 2, 3])


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from("abc"), st.lists(st.integers(0, 2), min_size=1,
                                                                max_size=9),
                              st.booleans(), st.sampled_from([None, "x"])),
                    min_size=1, max_size=25),
       host=st.sampled_from([0, 6]), policy=st.sampled_from(["lru", "graph", "ttl"]))
def test_lookup_matches_begin_step_on_random_histories(ops, host, policy):
    """For any history, lookup then begin_step: same cached tokens (host loads fitting),
    and lookup changed nothing, however often it is asked."""
    m = manager(10, policy=policy, num_host_blocks=host)
    ctx: dict[str, list[int]] = {}
    now = 0.0
    for sid, extra, extend, salt in ops:
        now += 1.0
        prompt = (ctx.get(sid, []) if extend else []) + extra
        prompt = prompt[-36:]
        if sid in m.sessions:
            salt = None
        before = _state(m)
        lk = m.lookup(sid, prompt, salt=salt)
        assert m.lookup(sid, prompt, salt=salt) == lk
        assert _state(m) == before
        if lk.blocks_to_admit(len(prompt)) > m.pool.num_available:
            continue  # the scheduler would not admit it
        start = m.begin_step(sid, prompt, now=now, salt=salt)
        assert start.num_cached_tokens == lk.num_cached_tokens
        m.allocate_slots(sid, len(prompt) - start.num_cached_tokens, now=now)
        m.append_tokens(sid, [extra[0]])
        m.finish_step(sid, now=now, tool="t")
        ctx[sid] = prompt + [extra[0]]
        m.check_integrity()


def test_lookup_uses_given_block_hashes():
    m = manager(16)
    prompt = toks(0, 13)
    st0 = m.begin_step("a", prompt)
    m.allocate_slots("a", 13 - st0.num_cached_tokens)
    m.finish_step("a")
    hashes: list[bytes] = []
    m.hasher.extend(hashes, m.sessions["a"].root, prompt)
    assert m.lookup("b", prompt, block_hashes=hashes).gpu_hit_blocks == 3
    assert m.lookup("b", prompt, block_hashes=hashes[:1]).gpu_hit_blocks == 3  # rest hashed
    assert m.lookup("b", prompt).gpu_hit_blocks == 3


# -- fcfs -------------------------------------------------------------------------------------
def test_fcfs_admits_in_order_with_head_of_line_blocking():
    m = manager(8)  # 32 tokens
    s = make_scheduler("fcfs", m, max_num_batched_tokens=64)
    ex = ToyExecutor(m)
    a, b, c = (ToyRequest(x, toks(100 * i, n), max_new=3)
               for i, (x, n) in enumerate([("a", 12), ("b", 21), ("c", 2)]))
    for r in (a, b, c):
        s.add(r, 0.0)
    out = s.schedule(0.0, ex)
    # a takes 3 blocks; b needs 6 of the 5 left, and c (1 block) waits behind it
    assert [r.session_id for r in out.admitted] == ["a"]
    assert s.waiting == [b, c]


def test_fcfs_preempts_the_newest_running_request():
    m = manager(6)
    s = make_scheduler("fcfs", m, max_num_batched_tokens=64)
    ex = ToyExecutor(m)
    a, b = ToyRequest("a", toks(0, 11), max_new=10), ToyRequest("b", toks(100, 11), max_new=10)
    s.add(a, 0.0)
    s.add(b, 0.0)
    out = s.schedule(0.0, ex)
    assert [r.session_id for r in out.admitted] == ["a", "b"]
    preempted = []
    for t in range(1, 10):
        ex.run(s, out, float(t))
        out = s.schedule(float(t), ex)
        preempted += out.preempted
        if out.preempted:
            assert not out.admitted  # a step that preempted admits nobody
    assert preempted and preempted[0] is b and s.num_preemptions >= 1
    m.check_integrity()


def test_a_blocked_waiter_does_not_touch_its_cached_blocks():
    """The old engine began a blocked waiter's step on every retry (moving its blocks to the
    MRU end); admission now looks up without side effects, so LRU still evicts them first."""
    m = manager(8)
    ex = ToyExecutor(m)
    s = make_scheduler("fcfs", m, max_num_batched_tokens=64)
    old = ToyRequest("old", toks(0, 8), max_new=1)
    drive(s, [(0.0, old)])  # 2 cached blocks of "old" context, ended: plain cache
    big = ToyRequest("big", toks(500, 21), max_new=20)
    s.add(big, 1.0)
    ex.run(s, s.schedule(1.0, ex), 1.0)  # big runs: 6 blocks, old's 2 evictable left
    retry = ToyRequest("old2", toks(0, 8) + toks(900, 12), max_new=1)
    s.add(retry, 1.0)
    order = m.policy.choose_victims(m.pool.num_cached, 1.0)
    for t in range(2, 4):  # big stays within its 6 blocks meanwhile
        out = s.schedule(float(t), ex)
        assert retry not in out.admitted
        assert m.policy.choose_victims(m.pool.num_cached, t) == order
        ex.run(s, out, float(t))


# -- workflow -----------------------------------------------------------------------------------
def _wf(m, **kw):
    kw.setdefault("max_num_batched_tokens", 64)
    kw.setdefault("prior_growth_tokens", 8)
    kw.setdefault("horizon_steps", 1.0)
    kw.setdefault("idle_admit_s", math.inf)
    return make_scheduler("workflow", m, **kw)


def _two_paused(prompt_len=20, **kw):
    """A workflow scheduler on a 64-token manager that admitted sessions a and b (prompts of
    `prompt_len` tokens) at t=0 and saw both pause on a tool.

    Returns (manager, scheduler, executor, a)."""
    m = manager(16)
    s = _wf(m, **kw)
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, prompt_len), max_new=1, last=False)
    b = ToyRequest("b", toks(100, prompt_len), max_new=1, last=False)
    for r in (a, b):
        s.add(r, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    return m, s, ex, a


def test_workflow_admits_a_new_session_only_while_working_sets_fit():
    m = manager(16)  # 64 tokens
    s = _wf(m)
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, 20), max_new=2, last=False)
    b = ToyRequest("b", toks(100, 20), max_new=2, last=False)
    c = ToyRequest("c", toks(200, 20), max_new=2, last=False)
    for r in (a, b, c):
        s.add(r, 0.0)
    out = s.schedule(0.0, ex)
    # each needs blocks(20 + 8) = 7: a and b fit 16, c would make 21
    assert [r.session_id for r in out.admitted] == ["a", "b"]
    assert s.waiting == [c] and s._committed == 14
    ex.run(s, out, 0.0)
    out = s.schedule(1.0, ex)
    assert not out.admitted
    done = ex.run(s, out, 1.0)
    assert {r.session_id for r in done} == {"a", "b"}  # paused, still admitted
    out = s.schedule(2.0, ex)
    assert not out.admitted  # c still waits: a and b keep their working sets across pauses
    # a's next step goes first once it arrives, although c waited longer
    a2 = ToyRequest("a", a.prompt + a.out + toks(50, 3), max_new=2, resumed=True)
    s.add(a2, 3.0)
    assert s.schedule(3.0, ex).admitted == [a2]


def test_workflow_demotes_a_session_away_far_longer_than_predicted():
    _, s, ex, a = _two_paused(demote_factor=2.0, demote_min_s=1.0)  # tool expected: 1 s
    c = ToyRequest("c", toks(200, 20), max_new=1)
    s.add(c, 0.5)
    assert not s.schedule(0.5, ex).admitted
    assert not s.schedule(2.9, ex).admitted  # 2.9 < 2 x 1 s + 1 s
    assert s.schedule(3.0, ex).admitted == [c]
    assert s.num_demotions == 2 and "a" not in s.sessions
    # a demoted session's next step must be admitted again, ahead of new ones of its tenant
    a2 = ToyRequest("a", a.prompt + a.out + [7], max_new=1, resumed=True)
    d = ToyRequest("d", toks(300, 4), max_new=1)
    s.add(d, 3.0)
    s.add(a2, 3.0)
    assert s.waiting == [a2, d]


def test_workflow_admits_when_every_admitted_session_is_away_for_idle_admit_s():
    m = manager(16)
    s = _wf(m, idle_admit_s=2.0)
    ex = ToyExecutor(m)
    for x, base in (("a", 0), ("b", 100)):
        s.add(ToyRequest(x, toks(base, 20), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)  # both pause; their working sets fill the pool
    c = ToyRequest("c", toks(200, 20), max_new=1)
    s.add(c, 0.5)
    assert not s.schedule(0.5, ex).admitted and s.wake_time == 2.5
    assert not s.schedule(2.4, ex).admitted
    assert s.schedule(2.5, ex).admitted == [c]  # the GPU idled 2 s: c goes


def test_workflow_shrinks_the_admitted_set_when_contexts_outgrow_the_pool():
    _, s, ex, a = _two_paused(prompt_len=12)
    assert set(s.sessions) == {"a", "b"}
    # a's next step is much longer than predicted: once it pauses, one of the two must make
    # room (a: its pause began last, so it is expected back last); its next step then waits
    # for admission again.
    a2 = ToyRequest("a", a.prompt + a.out + toks(50, 30), max_new=1, last=False, resumed=True)
    s.add(a2, 1.0)
    for t in (1.0, 2.0):
        ex.run(s, s.schedule(t, ex), t)
    assert set(s.sessions) == {"b"} and s.num_demotions == 1
    assert s._committed <= s.capacity



def test_shrink_demotes_the_session_expected_back_last():
    """When the admitted working sets outgrow the pool, the paused session whose tool is
    expected to take longest is demoted, not the most recently admitted one."""
    m = manager(32)
    s = _wf(m)
    ex = ToyExecutor(m)
    reqs = {}
    for i, (sid, tool_s) in enumerate((("a", 1.0), ("b", 50.0), ("c", 1.0))):
        reqs[sid] = ToyRequest(sid, toks(100 * i, 12), max_new=1, last=False)
        s.add(reqs[sid], 0.1 * i)
        ex.run(s, s.schedule(0.1 * i, ex), 0.1 * i, tool_s=tool_s)
    assert set(s.sessions) == {"a", "b", "c"}
    a = reqs["a"]
    a2 = ToyRequest("a", a.prompt + a.out + toks(500, 40), max_new=1, last=False, resumed=True)
    s.add(a2, 1.0)
    ex.run(s, s.schedule(1.0, ex), 1.0)
    assert set(s.sessions) == {"a", "c"} and s.num_demotions == 1  # b: back in 50 s

@pytest.mark.parametrize("aging,demoted", [(1, "c"), (0, "b")])
def test_shrink_aging_does_not_demote_the_same_session_again(aging, demoted):
    """b (a 50 s tool) is demoted when a outgrows its working set; once readmitted and
    paused again, the next shrink demotes c (paused, eligible) instead of b again, unless
    aging is off (0). (The default, 2, lets a session be demoted twice in the usual order.)"""
    m = manager(32)
    s = _wf(m, shrink_aging=aging)
    ex = ToyExecutor(m)
    tool = {"a": 1.0, "b": 50.0, "c": 1.0}
    reqs = {}

    def step(sid, now, grow, last=False):
        prev = reqs[sid]
        reqs[sid] = ToyRequest(sid, prev.prompt + prev.out + toks(1000 + 100 * int(now), grow),
                               max_new=1, last=last, resumed=True)
        s.add(reqs[sid], now)
        out = s.schedule(now, ex)
        ex.run(s, out, now, tool_s=tool[sid])
        assert out.admitted == [reqs[sid]]

    for i, sid in enumerate("abc"):
        reqs[sid] = ToyRequest(sid, toks(100 * i, 12), max_new=1, last=False)
        s.add(reqs[sid], 0.1 * i)
        ex.run(s, s.schedule(0.1 * i, ex), 0.1 * i, tool_s=tool[sid])
    step("a", 1.0, 40)  # a grew: b, back last, is demoted
    assert set(s.sessions) == {"a", "c"} and s.num_demotions == 1
    step("a", 2.0, 1, last=True)  # a ends: room for b again
    step("b", 3.0, 2)  # b readmitted, paused on its 50 s tool again
    assert set(s.sessions) == {"b", "c"}
    step("c", 4.0, 40)  # c grew: one of the paused b, c must go
    assert s.num_demotions == 2 and set(s.sessions) == {"b", "c"} - {demoted}
    assert s._committed <= s.capacity
    assert make_scheduler("workflow", m).shrink_aging == 2


def test_workflow_admits_a_too_large_session_when_none_is_admitted():
    m = manager(8)
    s = _wf(m, prior_growth_tokens=1000)
    admitted, _ = drive(s, [(0.0, ToyRequest("a", toks(0, 20))),
                            (0.0, ToyRequest("b", toks(100, 4)))])
    assert [sid for _, sid in admitted] == ["a", "b"]


def test_workflow_learns_growth_per_workflow():
    m = manager(64)
    s = _wf(m, growth_alpha=1.0)
    ex = ToyExecutor(m)
    ctx = toks(0, 8)
    for k in range(3):
        r = ToyRequest("a", ctx, max_new=2, last=False, resumed=k > 0)
        s.add(r, float(k))
        for _ in range(3):
            ex.run(s, s.schedule(float(k), ex), float(k))
        ctx = r.prompt + r.out + toks(100 * k, 4)
    assert s._growth["default"].mean == 6  # 4 input + 2 output tokens a step


def test_resumed_warm_steps_go_before_cold_ones_within_the_bypass_bound():
    m = manager(40)
    s = _wf(m, max_num_seqs=1, max_bypass=1)
    ex = ToyExecutor(m)
    prompts = {x: toks(100 * i, 16) for i, x in enumerate("abc")}
    for x in "abc":  # each runs one step and pauses; all stay admitted
        s.add(ToyRequest(x, prompts[x], max_new=1, last=False), 0.0)
    for _ in range(3):
        ex.run(s, s.schedule(0.0, ex), 0.0)
    for b in list(m.sessions["a"].block_ids):  # a turns cold: its context is evicted
        if m.pool.state[b] == CACHED:
            m._drop(b)
    nxt = {x: ToyRequest(x, prompts[x] + [1, 5], max_new=1, resumed=True) for x in "abc"}
    for x in "abc":
        s.add(nxt[x], 1.0)
    order = []
    for t in range(3):
        out = s.schedule(1.0 + t, ex)
        order += [r.session_id for r in out.admitted]
        ex.run(s, out, 1.0 + t)
    assert order == ["b", "a", "c"]  # b is warm and bypasses cold a once (max_bypass=1)


# -- Agent Fair Share ---------------------------------------------------------------------------
def test_afs_alternates_tenants_under_pressure():
    m = manager(16)
    s = _wf(m, max_num_seqs=1)
    arrivals = [(0.0, ToyRequest(f"A{i}", toks(1000 * i, 8), tenant="A", arrival=0.0))
                for i in range(6)]
    arrivals += [(0.5, ToyRequest(f"B{i}", toks(1000 * i + 500, 8), tenant="B", arrival=0.5))
                 for i in range(3)]
    admitted, _ = drive(s, arrivals)
    order = "".join(sid[0] for _, sid in admitted)
    assert order == "AABABABAA"


@settings(max_examples=60, deadline=None)
@given(stream=st.lists(st.tuples(st.sampled_from("ABC"), st.integers(0, 3)), min_size=1,
                       max_size=40),
       weights=st.fixed_dictionaries({}, optional={"A": st.sampled_from([1.0, 2.0, 3.0])}))
def test_afs_deficit_bound(stream, weights):
    """Deficits of the backlogged tenants sum to 0 and stay in (-1, k - 1), and while the
    backlogged set is fixed each tenant's admissions track its weighted share within them."""
    m = manager(32)
    s = _wf(m, max_num_seqs=1, tenant_weights=weights)
    ex = ToyExecutor(m)
    arrivals = sorted(((float(t), ToyRequest(f"{x}{i}", toks(100 * i, 6), tenant=x,
                                            arrival=float(t)))
                       for i, (x, t) in enumerate(stream)), key=lambda a: a[0])
    now = 0.0
    while arrivals or s.has_work:
        while arrivals and arrivals[0][0] <= now:
            s.add(arrivals.pop(0)[1], now)
        out = s.schedule(now, ex)
        d = s.deficits
        k = len(d)
        assert abs(sum(d.values())) < 1e-9
        assert all(-1 < v < max(k - 1, 1) for v in d.values()), d
        ex.run(s, out, now)
        now += 1.0


def test_bounded_waiting_under_a_flood():
    """A tenant flooding the queue delays another tenant's session by at most about one of
    its admissions."""
    m = manager(16)
    s = _wf(m, max_num_seqs=1)
    arrivals = [(0.0, ToyRequest(f"A{i}", toks(1000 * i, 8), tenant="A")) for i in range(30)]
    arrivals.append((5.0, ToyRequest("B", toks(99999, 8), tenant="B", arrival=5.0)))
    admitted, _ = drive(s, arrivals)
    ids = [sid for _, sid in admitted]
    after = [sid for t, sid in admitted if t >= 5.0]
    assert after.index("B") <= 1 and len(ids) == 31


def test_workflow_forgets_a_session_that_left_and_admits_the_next_at_once():
    # A paused admitted session that moves to another GPU (or ends behind the scheduler's
    # back) must stop holding working-set room here: before forget_session existed, c
    # waited until the demotion long after.
    m, s, ex, _ = _two_paused(demote_factor=100.0, demote_min_s=100.0)
    c = ToyRequest("c", toks(200, 20), max_new=1)
    s.add(c, 1.0)
    assert not s.schedule(1.0, ex).admitted
    m.end_session("a", now=2.0)  # a moved away
    assert not s.schedule(2.0, ex).admitted  # the scheduler does not know yet
    s.forget_session("a", 2.0)
    assert "a" not in s.sessions and s._committed == s.sessions["b"].blocks
    assert s.schedule(2.0, ex).admitted == [c]
    s.forget_session("nobody", 2.0)  # unknown: ignored
    with pytest.raises(ValueError, match="'c' still has a step"):
        s.forget_session("c", 2.0)  # running here: refused, nothing changed
    assert "c" in s.sessions


@pytest.mark.parametrize("name", ["fcfs", "workflow"])
def test_forget_session_refuses_a_session_with_a_waiting_step(name):
    s = make_scheduler(name, manager(16))
    r = ToyRequest("a", toks(0, 8))
    s.add(r, 0.0)
    with pytest.raises(ValueError, match="'a' still has a step waiting or running"):
        s.forget_session("a", 0.0)
    assert s.waiting == [r]


@pytest.mark.parametrize("max_backfill,expected", [(0, []), (1, ["s1"]), (2, ["s1", "s2"])])
def test_workflow_backfills_small_sessions_past_a_head_that_does_not_fit(max_backfill, expected):
    """A session that fits goes ahead of its tenant's oldest waiting session when that one
    does not fit, at most max_backfill times ahead of it (bounded waiting)."""
    m = manager(16)
    s = _wf(m, max_backfill=max_backfill)
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 20), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)  # a pauses, admitted: 7 blocks
    big = ToyRequest("big", toks(100, 30), max_new=1)  # 10 blocks: 17 > 16
    smalls = [ToyRequest(f"s{i}", toks(200 + 100 * i, 4), max_new=1) for i in (1, 2)]
    for r in (big, *smalls):
        s.add(r, 1.0)
    out = s.schedule(1.0, ex)
    assert [r.session_id for r in out.admitted] == expected
    ex.run(s, out, 1.0)  # the small ones end
    out = s.schedule(2.0, ex)
    assert not out.admitted  # big still does not fit, and nobody passes it any more
    assert s.waiting[0] is big and len(s.waiting) == 3 - len(expected)


def test_idle_admission_happens_at_the_wake_time_itself():
    """Waking at `wake_time` admits, whatever the float rounding of idle_since + idle_admit_s."""
    m = manager(16)
    s = _wf(m, idle_admit_s=1.0)
    ex = ToyExecutor(m)
    t0 = 127.90400011551601  # (t0 + 1) - t0 < 1 in floats
    for x, base in (("a", 0), ("b", 100)):
        s.add(ToyRequest(x, toks(base, 20), max_new=1, last=False), t0)
    ex.run(s, s.schedule(t0, ex), t0)
    c = ToyRequest("c", toks(200, 20), max_new=1)
    s.add(c, t0)
    assert not s.schedule(t0, ex).admitted
    assert s.schedule(s.wake_time, ex).admitted == [c]


def _a_and_b_paused(policy: str):
    """a paused on a 1 s tool at 0 s, b on a 100 s tool at 2.5 s, under a workflow scheduler
    that demotes a session paused over 2 x its expected pause + 1 s. Returns the manager,
    the scheduler, the executor, a's request and the owner of each of their blocks."""
    m = manager(24, policy=policy)
    s = _wf(m, demote_factor=2.0, demote_min_s=1.0)
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, 20), max_new=1, last=False)
    s.add(a, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0, tool_s=1.0)
    b = ToyRequest("b", toks(100, 20), max_new=1, last=False)
    s.add(b, 2.5)
    ex.run(s, s.schedule(2.5, ex), 2.5, tool_s=100.0)
    owner = {blk: sid for sid in "ab" for blk in m.sessions[sid].block_ids}
    return m, s, ex, a, owner


def test_demotion_tells_the_policy_and_graph_evicts_the_demoted_session_first():
    """A demoted session's blocks are needed only after it is admitted again: the scheduler
    says so (`session_deferred`), and the graph policy then evicts them before those of a
    session still admitted; re-admission takes it back."""
    m, s, ex, a, owner = _a_and_b_paused("graph")
    # a is overdue (its tool returns any moment): graph keeps it over b, expected in 100 s
    assert owner[m.policy.eviction_order(3.0)[0]] == "b"
    c = ToyRequest("c", toks(200, 40), max_new=1)
    s.add(c, 3.0)  # does not fit beside a and b: a (paused 3 s > 2 x 1 s + 1 s) is demoted
    out = s.schedule(3.0, ex)
    assert out.admitted == [c] and "a" not in s.sessions
    order = [owner[blk] for blk in m.policy.eviction_order(3.0) if blk in owner]
    assert order[0] == "a"  # demoted: its blocks go first now
    ex.run(s, out, 3.0)  # c ends
    a2 = ToyRequest("a", a.prompt + a.out + [7], max_new=1, resumed=True)
    s.add(a2, 4.0)
    assert s.schedule(4.0, ex).admitted == [a2]  # a is admitted again
    assert "a" in s.sessions and "a" not in m.policy._deferred



def test_ttl_releases_a_demoted_sessions_blocks_until_its_tool_returns():
    """ttl (the default policy) acts on a demotion too: the demoted session's blocks go
    before an admitted paused session's, and are kept again once its tool returns."""
    m, s, ex, _, owner = _a_and_b_paused("ttl")

    def first_victim(now):
        return next(owner[blk] for blk in m.policy.eviction_order(now) if blk in owner)

    assert first_victim(3.0) == "b"  # ttl keeps a (its 1 s tool returns any moment)
    c = ToyRequest("c", toks(200, 40), max_new=1)
    s.add(c, 3.0)  # does not fit beside a and b: a (paused 3 s > 2 x 1 s + 1 s) is demoted
    out = s.schedule(3.0, ex)
    assert out.admitted == [c] and "a" not in s.sessions
    assert first_victim(3.0) == "a" and m.policy.session_value("a", 3.0)[0]  # released
    m.resume_hint("a", now=3.5)  # its tool returned: it is first in line again
    assert first_victim(3.5) == "b"


@settings(max_examples=100, deadline=None)
@given(k=st.integers(1, 4), n=st.integers(1, 60),
       weights=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=4, max_size=4),
       ages=st.lists(st.floats(0, 10), min_size=4, max_size=4))
def test_fair_share_admissions_stay_within_the_stated_bound(k, n, weights, ages):
    """FairShare's deviation bound, on admissions themselves: with a fixed backlogged set,
    each tenant's admissions minus its weighted share of all admissions lies in (-(k - 1), 1)
    (two tenants: less than one session either way)."""
    tenants = [f"t{i}" for i in range(k)]
    fs = FairShare(dict(zip(tenants, weights[:k], strict=True)))
    fs.backlog_changed(tenants)
    total = sum(fs.weight(t) for t in tenants)
    count = dict.fromkeys(tenants, 0)
    for i in range(1, n + 1):
        t = fs.next_tenant(lambda t: ages[tenants.index(t)])
        fs.charge(t)
        count[t] += 1
        for u in tenants:
            dev = count[u] - i * fs.weight(u) / total
            assert -max(k - 1, 1) < dev < 1, (u, dev)


def test_working_set_rule_shared_by_scheduler_and_gate():
    """The working-set pieces: an EMA after 1 / alpha observations, blocks rounded up, the
    demotion deadline, and shrink demoting paused sessions in the given order, keeping one."""
    g = GrowthTable(prior=10.0, alpha=0.5)
    assert g.mean("w") == 10.0
    g.observe("w", 4.0)
    assert g.mean("w") == 4.0  # the first observation replaces the prior
    g.observe("w", 8.0)
    g.observe("w", 16.0)
    assert g.mean("w") == 11.0  # EMA with weight 1/2 after 2 observations: 6 -> 11
    assert working_set_blocks(5, 1.0, 3.5, 4) == 3  # 8.5 tokens -> 3 blocks
    assert working_set_blocks(-3, 0.0, 9.0, 4) == 0
    assert demote_deadline(100.0, 5.0, 4.0, 10.0) == 130.0
    sessions = {"a": (5, True), "b": (5, True), "c": (5, False), "d": (5, True)}
    committed = [20]  # blocks; "c" is running (not paused)

    def demote(sid):
        committed[0] -= sessions.pop(sid)[0]

    out = shrink(sessions, ["d", "c", "b", "a"], lambda: committed[0] > 8, lambda s: s[1],
                 demote)
    assert out == ["d", "b", "a"] and list(sessions) == ["c"] and committed[0] == 5
    assert shrink({"a": (9, True)}, ["a"], lambda: True, lambda s: s[1], demote) == []
