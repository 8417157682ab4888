"""The prefill cap while steps decode (`decode_prefill_tokens`) and `readmit_charge` "room"
(kvsaga/scheduler/decode_stall.py): the cap holds for running prefills and admissions, only
while a step decodes, in the simulator's batch steps and decode runs alike; "room" admits a
demoted session's step on the pool's check alone ("room_queue": only while two or more
demoted steps wait); their values are checked; and the scheduler state machine runs with
them under every policy."""

from __future__ import annotations

import pytest

from kvsaga.errors import OutOfBlocks
from kvsaga.scheduler import WorkflowScheduler
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.helpers import big_demoted, manager, next_step, toks, wf
from tests.scheduler.readmit_common import assert_refused_and_off_by_default, assert_serve_takes


def _decoding_and_waiting(cap: int, when: str = "always", tenants=(None, None)):
    """Session a (8 tokens, 6 outputs) admitted and prefilled, so it decodes next; then
    session b (40 tokens) queues at 0.1. The prefill cap `cap` gated by `when`; a and b of
    `tenants`. Returns (scheduler, executor, a, b)."""
    m = manager(64)
    s = wf(m, decode_prefill_tokens=cap, decode_prefill_when=when)
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, 8), max_new=6, tenant=tenants[0])
    s.add(a, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    b = ToyRequest("b", toks(100, 40), max_new=1, tenant=tenants[1])
    s.add(b, 0.1)
    return s, ex, a, b


@pytest.mark.parametrize("cap,chunks", [(8, [8, 8]), (0, [40])])
def test_a_prefill_beside_a_decode_computes_at_most_the_cap_a_step(cap, chunks):
    s, ex, a, b = _decoding_and_waiting(cap)
    seen = []
    for t in (0.1, 0.2):
        out = s.schedule(t, ex)
        got = dict((r.session_id, n) for r, n in out.scheduled)
        assert got["a"] == 1  # the decode goes on
        if "b" in got:
            seen.append(got["b"])
        ex.run(s, out, t)
    assert seen == chunks  # admitted with the cap's chunk, then granted the cap again
    s.manager.check_integrity()


def test_nothing_decoding_takes_the_whole_budget():
    m = manager(64)
    s = wf(m, decode_prefill_tokens=8, decode_prefill_when="always")
    ex = ToyExecutor(m)
    b = ToyRequest("b", toks(100, 40), max_new=1)
    s.add(b, 0.0)
    out = s.schedule(0.0, ex)
    assert [(r.session_id, n) for r, n in out.scheduled] == [("b", 40)]
    assert s._prefill_left is None  # nothing carried over to the next step


def test_values_and_defaults():
    kw = WorkflowScheduler.__init__.__kwdefaults__
    assert kw["decode_prefill_tokens"] == 128
    assert kw["readmit_charge"] == "room_returns_queue_demoted"
    with pytest.raises(ValueError, match="decode_prefill_tokens"):
        wf(manager(16), decode_prefill_tokens=-1)
    with pytest.raises(ValueError, match="decode_prefill_tokens"):
        wf(manager(16), decode_prefill_tokens=1.5)
    assert wf(manager(16), readmit_charge="room").readmit_charge == "room"
    assert wf(manager(16), readmit_charge="room_queue").readmit_charge == "room_queue"


def test_room_queue_is_named_refused_values_name_it_and_serve_takes_it():
    assert_refused_and_off_by_default("room_queues")
    assert_serve_takes("room_queue", "roomy")


def test_gate_values():
    kw = WorkflowScheduler.__init__.__kwdefaults__
    assert kw["decode_prefill_when"] is None  # the default gate, off with the cap
    assert wf(manager(16)).decode_prefill_when == "demoted_queue"
    assert wf(manager(16)).decode_prefill_tokens == 128
    assert wf(manager(16), decode_prefill_tokens=8).decode_prefill_when == "demoted_queue"
    off = wf(manager(16), decode_prefill_tokens=0)  # the cap off: no gate to refuse
    assert off.decode_prefill_tokens == 0 and off.decode_prefill_when == "always"
    for when in ("demoted", "demoted_queue", "recompute"):
        assert wf(manager(16), decode_prefill_tokens=8,
                  decode_prefill_when=when).decode_prefill_when == when
    with pytest.raises(ValueError, match="decode_prefill_when must be one of 'always', "
                                         "'demoted', 'demoted_queue', 'recompute', got 'busy'"):
        wf(manager(16), decode_prefill_tokens=8, decode_prefill_when="busy")
    with pytest.raises(ValueError, match="decode_prefill_when 'demoted' gates the prefill "
                                         "cap, which is off"):
        wf(manager(16), decode_prefill_tokens=0, decode_prefill_when="demoted")


@pytest.mark.parametrize("when,demoted,capped", [
    ("demoted", 0, False), ("demoted", 1, True), ("demoted_queue", 1, False),
    ("demoted_queue", 2, True)])
def test_the_demoted_gates_cap_only_while_demoted_steps_wait(when, demoted, capped):
    """a decodes and b (40 tokens, new) waits, with `demoted` demoted sessions' steps
    (later steps of sessions no longer admitted, 12 tokens each) waiting to be admitted
    again. "demoted" caps the step's prompt tokens (8) while one or more wait,
    "demoted_queue" while two or more do; else the prefills go whole, as without the cap."""
    s, ex, a, _ = _decoding_and_waiting(8, when)
    m = s.manager
    for k in range(demoted):
        s.add(ToyRequest(f"d{k}", toks(300 + 50 * k, 12), max_new=1, resumed=True,
                         arrival=0.1), 0.1)
    assert s._cap_open() is capped
    out = s.schedule(0.1, ex)
    assert dict((r.session_id, n) for r, n in out.scheduled)["a"] == 1
    prompt = sum(n for r, n in out.scheduled if r is not a)
    assert prompt == (8 if capped else 40 + 12 * demoted)
    m.check_integrity()


def _r_paused():
    """r (40 tokens) admitted under the "recompute" gate (a cap of 8, overcommit 8) on a
    32-block pool, run a step and paused. Returns (manager, scheduler, executor, r)."""
    m = manager(32)
    s = wf(m, decode_prefill_tokens=8, decode_prefill_when="recompute", overcommit=8.0)
    ex = ToyExecutor(m)
    r = ToyRequest("r", toks(0, 40), max_new=1, last=False)
    s.add(r, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    return m, s, ex, r


def _recomputing():
    """r ran a 40-token step and paused; f's prefill evicted part of r's blocks; a (8
    tokens, 12 outputs) is admitted and decodes next. Returns (manager, scheduler, executor,
    r's next step r2: its context, then 30 new tokens; not queued yet), with the executor's
    `begin` noting in `cached` the tokens r2's step found cached at each (re)admission."""
    m, s, ex, r = _r_paused()
    f = ToyRequest("f", toks(500, 100), max_new=1)
    s.add(f, 0.1)
    for t in (0.1, 0.2):
        ex.run(s, s.schedule(t, ex), t)
    assert f.out and not s.running
    a = ToyRequest("a", toks(900, 8), max_new=12)
    s.add(a, 1.0)
    ex.run(s, s.schedule(1.0, ex), 1.0)
    r2 = next_step(r, toks(700, 30), 1.1)
    begin, ex.cached = ex.begin, []

    def on_begin(req, now):
        start = begin(req, now)
        if req is r2:
            ex.cached.append(start.num_cached_tokens)
        return start
    ex.begin = on_begin
    return m, s, ex, r2


def test_the_recompute_gate_caps_only_recomputed_context():
    """While a decodes, r's next step (its lost tokens, then 30 new ones) and a new session
    b (40 tokens) are admitted: "recompute" caps r's chunks at 8 until its lost tokens are
    computed again, then lets the rest go whole, and leaves b's first-time prefill whole."""
    m, s, ex, r2 = _recomputing()
    found = m.lookup("r", r2.token_ids)
    lost = s._to_recompute(r2, found)
    assert 8 < lost < 41 and lost == m.num_computed_tokens("r") - found.num_cached_tokens
    b = ToyRequest("b", toks(200, 40), max_new=1)
    s.add(r2, 1.1)
    s.add(b, 1.1)
    computed = m.num_computed_tokens("r")
    chunks: dict[str, list[int]] = {"r": [], "b": []}
    for k in range(8):
        t = 1.1 + 0.1 * k
        out = s.schedule(t, ex)
        assert dict((q.session_id, n) for q, n in out.scheduled)["a"] == 1  # a decodes on
        for q, n in out.scheduled:
            if q.session_id in chunks:
                chunks[q.session_id].append(n)
        ex.run(s, out, t)
    assert chunks["b"] == [40]  # first-time prefill: whole
    # Chunks of 8 until the tokens lost at admission (at least those lost before: a's
    # decodes may evict more) are computed again, then the rest in one chunk.
    at_admission = computed - ex.cached[0]  # computed before, not found at admission
    assert len(ex.cached) == 1 and at_admission >= lost
    *capped, rest = chunks["r"]
    assert capped == [8] * -(-at_admission // 8) and rest > 8
    assert r2.out and m.num_computed_tokens("r") == len(r2.prompt)
    assert not s._recompute  # nothing kept once the recomputation is done
    m.check_integrity()


def test_a_recomputing_step_preempted_is_capped_again_on_its_retry():
    """r's next step is admitted recomputing (its first chunk capped at 8), then preempted
    (as `_allocate` does when the pool runs short). Its retry still has the context its
    session computed before r2 to recompute, past what it finds cached now: chunks of 8
    until that is done, then the rest whole (not: nothing counted, as the preemption cut
    the session's computed tokens back to the attempt's)."""
    m, s, ex, r2 = _recomputing()
    computed = m.num_computed_tokens("r")
    s.add(r2, 1.1)
    out = s.schedule(1.1, ex)
    assert r2 in out.admitted and dict((q.session_id, n) for q, n in out.scheduled)["r"] == 8
    assert s._recompute[id(r2)][1] == computed - ex.cached[0] - 8 > 8
    ex.run(s, out, 1.1)
    allocate = ex.allocate

    def short(req, n, now):  # the pool runs short for a's decode: r2, the newest, goes
        if req.session_id == "a" and ("preempt", "r") not in ex.log:
            raise OutOfBlocks(1, 0)
        allocate(req, n, now)
    ex.allocate = short
    out = s.schedule(1.2, ex)
    assert out.preempted == [r2] and [q for q, _ in out.scheduled] == [s.running[0]]
    ex.run(s, out, 1.2)
    assert id(r2) not in s._recompute  # a waiting retry is judged by its lookup
    chunks = []
    for k in range(3, 11):
        t = 1.0 + 0.1 * k
        out = s.schedule(t, ex)
        chunks += [n for q, n in out.scheduled if q is r2]
        ex.run(s, out, t)
    assert len(ex.cached) == 2 and ex.cached[1] < computed
    *capped, rest = chunks
    assert capped == [8] * -(-(computed - ex.cached[1]) // 8) and rest > 8
    assert r2.out and m.num_computed_tokens("r") == len(r2.prompt) and not s._recompute
    m.check_integrity()


def _queue_demoted(s, k, t):
    """Queue demoted session d{k}'s step (4 tokens; its session not admitted here)."""
    s.add(ToyRequest(f"d{k}", toks(900 + 10 * k, 4), max_new=1, resumed=True, arrival=t), t)


@pytest.mark.parametrize("charge,queued,admitted", [
    ("room", 0, True), ("uncached", 0, False), ("uncached", 1, False),
    ("room_queue", 0, False), ("room_queue", 1, True)])
def test_room_admits_a_demoted_step_the_working_sets_refuse(charge, queued, admitted):
    """big's next step arrives (`big_demoted`), with `queued` other demoted sessions' steps
    queued behind it. Its uncached part and growth do not fit the gate beside the two
    admitted working sets, but its whole prompt fits the pool with nothing running: "room"
    admits it, "uncached" keeps it waiting, "room_queue" admits it only while another
    demoted step waits too (two or more in all)."""
    m, s, ex, big2 = big_demoted(charge)
    s.add(big2, 2.0)
    for k in range(queued):
        _queue_demoted(s, k, 2.0 + 0.01 * (k + 1))
    assert s._readmits_on_room() is (charge == "room" or (charge == "room_queue"
                                                            and queued > 0))
    out = s.schedule(2.0, ex)
    assert (big2 in out.admitted) is admitted
    assert ("big" in s.sessions) is admitted and ("big" in s._deferred) is not admitted
    m.check_integrity()


def test_demoted_waiting_refuses_a_count_below_one():
    """`_demoted_waiting` counts demoted steps against `need`; fewer than one (or not an
    int) is refused by name, and the queues are left as they were."""
    m, s, _, big2 = big_demoted("room_queue")
    s.add(big2, 2.0)
    assert s._demoted_waiting(1) and not s._demoted_waiting(2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="need must be an int >= 1"):
            s._demoted_waiting(bad)
    assert [r for q in s._pending.values() for r in q] == [big2]
    m.check_integrity()


def test_room_queue_tells_the_rooms_it_admits_on():
    """The room deficits told to a policy read the same rule: under "room_queue" a waiting
    demoted step's deficit is the pool's alone while two or more such steps wait, else the
    larger of the gate's and the pool's; a paused demoted session's counts its own step as
    queued."""
    _, room, _, _ = big_demoted("room")
    m, s, _, big2 = big_demoted("room_queue")
    pool = room.paused_room_deficit("big", 0)
    gate = s.paused_room_deficit("big", 0)
    assert gate > pool  # nothing queued: its step alone would wait, the gate's charge
    _queue_demoted(s, 0, 1.5)
    assert s.paused_room_deficit("big", 0) == pool  # with d0 queued: the pool's alone
    room.add(big2, 2.0)
    pool = room.room_deficit(big2, 0)
    alone = ToyRequest("big", big2.prompt, max_new=1, last=False, resumed=True, arrival=2.0,
                       workflow="w")
    _, s1, _, _ = big_demoted("room_queue")
    s1.add(alone, 2.0)
    assert s1.room_deficit(alone, 0) > pool  # alone in the queue: the gate's charge counts
    s.add(big2, 2.0)
    assert s.room_deficit(big2, 0) == pool  # d0 and big2 wait: the pool's alone
    m.check_integrity()


def test_the_simulator_keeps_the_cap_in_every_batch_step():
    """A small pressured simulation: every batch step that decodes computes at most the
    cap's prompt tokens (decode runs included: they admit through `admit_waiting` alone)."""
    from kvsaga.sim.simulator import SimConfig, Simulator
    from kvsaga.sim.workloads import WORKLOADS
    sessions = WORKLOADS["bfcl"].generate(12, 102, scale=0.3)
    cfg = SimConfig(preset="a100-llama3-8b", num_gpu_blocks=400, scheduler="workflow",
                    scheduler_params={"decode_prefill_tokens": 64, "decode_prefill_when": "always",
                                      "readmit_charge": "room"})
    sim = Simulator(sessions, cfg)
    execute, steps = sim._execute, []

    def on_execute(prefill, decode):
        steps.append((sum(n for _, n in prefill), len(decode)))
        return execute(prefill, decode)
    sim._execute = on_execute
    sim.run()
    assert steps and all(p <= 64 for p, d in steps if d)
    assert any(p > 64 for p, d in steps if not d)  # alone, a prefill takes the budget


globals().update(machines("decode_stall", {**DEMOTING, "decode_prefill_tokens": 4,
                                           "decode_prefill_when": "always",
                                           "readmit_charge": "room"}))
globals().update(machines("decode_stall_room_queue", {**DEMOTING, "decode_prefill_tokens": 4,
                                                      "readmit_charge": "room_queue"}))
for _when in ("demoted", "demoted_queue", "recompute"):
    globals().update(machines(f"decode_stall_{_when}", {
        **DEMOTING, "decode_prefill_tokens": 4, "decode_prefill_when": _when}))


def test_a_capped_prefill_bills_its_tenant_only_the_tokens_it_computes():
    """Agent Fair Share of compute (on by default) counts a competing step's prefill tokens
    as its tenant's service: with the cap on, tenant y's prefill (40 tokens beside tenant
    x's decode) is served exactly the tokens it computed, 8 a step, not the share it was
    allowed before the cap cut it."""
    s, ex, a, b = _decoding_and_waiting(8, tenants=("x", "y"))
    assert s.share_step_tokens  # the default: 2+ tenants compete for compute
    computed = {"x": 0, "y": 0}
    for k in range(1, 6):
        out = s.schedule(0.1 * k, ex)
        for r, n in out.scheduled:
            assert n == 1 or (r is b and n == 8)  # the decode goes on; the cap holds
            if n > 1:  # prefill tokens (decodes are not counted: `ComputeShares._serve`)
                computed[r.tenant] += n
        ex.run(s, out, 0.1 * k)
    assert computed == {"x": 0, "y": 40}
    assert {t: s._served.get(t, 0) for t in computed} == computed
    s.manager.check_integrity()


def test_a_refusal_with_nothing_to_recompute_lapses_once_its_hits_are_evicted():
    """"recompute": r's next step was asked about (as a refused admission asks) with its
    session's context all cached: nothing to recompute, its first chunk uncapped. Decode
    allocations of another session then evict r's cached blocks: the step would recompute
    now, its first chunk capped and needing fewer blocks, so the refusal no longer stands
    (`_refusal_kept`), whatever the classes after it say."""
    m, s, ex, r = _r_paused()
    r2 = next_step(r, toks(700, 30), 1.0)
    found = m.lookup("r", r2.token_ids)
    s._chunk_limit(r2, 64)  # asked as an admission attempt asks
    assert s._asked_recompute[id(r2)] == (r2, 0) and s._to_recompute(r2, found) == 0
    assert s._refusal_kept([(r2, found, 64, None)])  # nothing changed: it stands
    m.begin_step("a", toks(900, 8), now=1.0)
    m.allocate_slots("a", 8, now=1.0)
    now, k = 1.0, 0
    while m.lookup("r", r2.token_ids).num_cached_tokens == found.num_cached_tokens:
        now, k = now + 0.01, k + 1
        m.append_tokens("a", [2000 + k])
        m.allocate_slots("a", 1, now=now)  # a's decodes, a block every 4 tokens
    after = m.lookup("r", r2.token_ids)
    assert s._to_recompute(r2, after) > 0
    assert not s._refusal_kept([(r2, after, 64, None)])
    m.check_integrity()
