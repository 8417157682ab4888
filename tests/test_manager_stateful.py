"""Random sequences of engine calls against the manager, checking every invariant."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvsaga import KVCacheManager, KVSpec, OutOfBlocks
from kvsaga.policy import POLICIES
from kvsaga.scheduler import SCHEDULERS, make_scheduler
from tests.policy.helpers import build
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.stateful_reach import Reach, reach_case, whole_steps

BS = 4
SESSIONS = [f"s{i}" for i in range(6)]
# A small alphabet makes prefix hits and shared blocks common.
tokens = st.lists(st.integers(0, 3), min_size=1, max_size=14)


class ManagerMachine(Reach, RuleBasedStateMachine):
    policy = "lru"  # subclasses below run every registered policy
    core = None  # KVSAGA_CORE's default (cpp when built); subclasses below run "python" too

    def __init__(self):
        super().__init__()
        self.m = KVCacheManager(
            KVSpec(1, 1, 4, block_size=BS), 12, clock=lambda: 0.0, policy=build(self.policy),
            core=self.core,
        )
        self.now = 0.0
        self.context: dict[str, list[int]] = {}  # what each open session's context is

    def running(self):
        return [s for s, x in self.m.sessions.items() if x.is_running]

    def snapshot(self):
        return (
            self.m.stats(),
            {s: (list(x.block_ids), x.num_computed, len(x.token_ids)) for s, x in
             self.m.sessions.items()},
            list(self.m.pool.refcount),
        )

    @rule(sid=st.sampled_from(SESSIONS), extra=tokens, prefix=st.sampled_from([0, 4, 8]),
          salt=st.sampled_from([None, "t1"]))
    def begin(self, sid, extra, prefix, salt):
        s = self.m.sessions.get(sid)
        if s is not None and s.is_running:
            return
        base = self.context.get(sid, [7] * prefix)  # sessions extend their own context
        prompt = base + extra
        if len(prompt) > 40:
            prompt = prompt[-40:]
        if s is not None:
            salt = None
        before = self.snapshot()
        lk = self.m.lookup(sid, prompt, salt=salt)
        assert self.snapshot() == before, "lookup changed state"
        fits = lk.blocks_to_admit(len(prompt)) <= self.m.pool.num_available
        st_ = self.m.begin_step(sid, prompt, now=self.now, salt=salt)
        if fits:  # then every host hit finds a GPU block, as lookup assumes
            assert st_.num_cached_tokens == lk.num_cached_tokens
        assert 0 <= st_.num_cached_tokens < len(prompt)
        assert st_.num_cached_tokens >= len(st_.block_ids) * BS - BS
        self.context[sid] = prompt

    @precondition(lambda self: self.running())
    @rule(data=st.data(), frac=st.floats(0.1, 1.0))
    def allocate(self, data, frac):
        sid = data.draw(st.sampled_from(self.running()))
        s = self.m.sessions[sid]
        pending = len(s.token_ids) - s.num_computed
        if pending == 0:
            if len(s.token_ids) >= 40:  # a context near the pool's size: it stops growing
                return
            self.m.append_tokens(sid, [data.draw(st.integers(0, 3))])
            pending = 1
        n = max(1, int(pending * frac))
        before = self.snapshot()
        try:
            slots = self.m.allocate_slots(sid, n, now=self.now)
        except OutOfBlocks:
            assert self.snapshot() == before, "a failed allocation changed state"
            self.note_out_of_blocks()
            return
        assert len(slots) == n and len(set(slots)) == n
        self.after_allocate()
        table = self.m.block_table(sid)
        for slot in slots:
            assert slot // BS in table
        self.context[sid] = list(s.token_ids)

    @rule(steps=whole_steps(SESSIONS, 32))
    def run_steps(self, steps):
        for sid, extra, keep in steps:
            self.whole_step(sid, extra, keep)

    def whole_step(self, sid, extra, keep):
        """One step as an engine runs it: begin, allocate every pending token, then finish
        on a tool (or, with `keep`, stay running). Paused caches build up, so the pool fills
        and later steps evict or are refused."""
        s = self.m.sessions.get(sid)
        if s is not None and s.is_running:
            self.m.preempt(sid, now=self.now)
        self.begin(sid, extra, 4, None)
        s = self.m.sessions[sid]
        before = self.snapshot()
        try:
            self.m.allocate_slots(sid, len(s.token_ids) - s.num_computed, now=self.now)
        except OutOfBlocks:
            assert self.snapshot() == before, "a failed allocation changed state"
            self.note_out_of_blocks()
            self.m.preempt(sid, now=self.now)
            return
        self.context[sid] = list(s.token_ids)
        self.after_allocate()
        if not keep:
            self.m.finish_step(sid, now=self.now, tool="grep", expected_s=1.0)

    def after_allocate(self):
        """What the engine does after an allocation, before anything else: nothing to model
        here (OffloadMachine runs the copies and the forward pass)."""

    @precondition(lambda self: self.running())
    @rule(data=st.data(), tool=st.sampled_from([None, "grep", "test"]),
          last=st.booleans())
    def finish(self, data, tool, last):
        sid = data.draw(st.sampled_from(self.running()))
        s = self.m.sessions[sid]
        self.context[sid] = list(s.token_ids[: s.num_computed]) or [1]
        self.m.finish_step(sid, now=self.now, tool=tool, expected_s=1.0, last_step=last)
        if last:
            del self.context[sid]

    @precondition(lambda self: self.running())
    @rule(data=st.data())
    def preempt(self, data):
        sid = data.draw(st.sampled_from(self.running()))
        self.m.preempt(sid, now=self.now)

    @precondition(lambda self: self.m.sessions)
    @rule(data=st.data())
    def end(self, data):
        sid = data.draw(st.sampled_from(sorted(self.m.sessions)))
        self.m.end_session(sid, now=self.now)
        self.context.pop(sid, None)

    @rule(dt=st.floats(0, 5))
    def tick(self, dt):
        self.now += dt
        self.m.tick(self.now)

    @invariant()
    def integrity(self):
        self.m.check_integrity()
        st_ = self.m.stats()
        assert st_.num_free_blocks + st_.num_used_blocks + st_.num_evictable_blocks == 12
        assert all(r >= 0 for r in self.m.pool.refcount)
        check = getattr(self.m.policy, "check_integrity", None)
        if check is not None:
            check()  # the policy tracks exactly the CACHED blocks


# Each TestCase fails unless its examples evicted and were refused (tests/stateful_reach.py).
TestManagerStateful = reach_case(
    ManagerMachine, settings(max_examples=150, stateful_step_count=40, deadline=None), host=False)


def _machine_for(name: str, core: str | None = None):
    cls = type(f"ManagerMachine_{name}_{core}", (ManagerMachine,), {"policy": name, "core": core})
    return reach_case(
        cls, settings(max_examples=40, stateful_step_count=40, deadline=None), host=False)


for _name in POLICIES:
    if _name != "lru":
        globals()[f"TestManagerStateful_{_name.replace('-', '_')}"] = _machine_for(_name)
    # The Python reference core, for every policy (tests/test_core_parity.py compares them).
    globals()[f"TestManagerStateful_python_{_name.replace('-', '_')}"] = _machine_for(
        _name, "python"
    )


class SchedulerMachine(RuleBasedStateMachine):
    """Random arrivals, resumes and batch steps through a core scheduler over the manager:
    admission, preemption and chunked prefill keep every invariant, for every scheduler and
    every policy."""

    scheduler = "fcfs"
    policy = "lru"
    params: dict = {}  # the scheduler's own parameters

    def __init__(self):
        super().__init__()
        self.m = KVCacheManager(
            KVSpec(1, 1, 4, block_size=BS), 12, clock=lambda: 0.0, policy=build(self.policy)
        )
        self.s = make_scheduler(self.scheduler, self.m, max_num_seqs=3, max_num_batched_tokens=6,
                                **self.params)
        self.ex = ToyExecutor(self.m)
        self.now = 0.0
        self.paused: dict[str, ToyRequest] = {}  # sessions between steps: their last step
        self.live: set[str] = set()  # sessions with a queued or running step
        self.n = 0

    @rule(extra=tokens, tenant=st.sampled_from([None, "a", "b"]), last=st.booleans(),
          max_new=st.integers(1, 4))
    def arrive(self, extra, tenant, last, max_new):
        self.n += 1
        sid = f"n{self.n}"
        self.s.add(ToyRequest(sid, [7, 7, 7, 7] + extra, max_new, tenant=tenant, salt=tenant,
                              arrival=self.now, last=last), self.now)
        self.live.add(sid)

    @precondition(lambda self: self.paused)
    @rule(data=st.data(), extra=tokens, last=st.booleans())
    def resume(self, data, extra, last):
        sid = data.draw(st.sampled_from(sorted(self.paused)))
        prev = self.paused.pop(sid)
        prompt = (prev.prompt + prev.out + extra)[-40:]
        self.s.add(ToyRequest(sid, prompt, prev.max_new, tenant=prev.tenant, salt=prev.salt,
                              arrival=self.now, resumed=True, last=last), self.now)
        self.live.add(sid)

    @precondition(lambda self: self.s.has_work)
    @rule(dt=st.floats(0, 3))
    def step(self, dt):
        self.now += dt
        self.m.tick(self.now)
        out = self.s.schedule(self.now, self.ex)
        assert out.scheduled or not self.s.running, "running requests but nothing scheduled"
        for req in self.ex.run(self.s, out, self.now):
            self.live.discard(req.session_id)
            if not req.last:
                self.paused[req.session_id] = req

    @invariant()
    def consistent(self):
        self.m.check_integrity()
        running = {r.session_id for r in self.s.running}
        waiting = [r.session_id for r in self.s.waiting]
        assert len(running) == len(self.s.running) and not running & set(waiting)
        assert len(set(waiting)) == len(waiting) and running | set(waiting) == self.live
        for sid, x in self.m.sessions.items():
            assert x.is_running == (sid in running)
        assert self.s.num_waiting == len(waiting) and len(running) <= 3
        deficits = getattr(self.s, "deficits", {})
        assert all(-1 < d < max(len(deficits) - 1, 1) for d in deficits.values())


def _scheduler_machine_for(scheduler: str, policy: str, params: dict | None = None):
    cls = type(f"SchedulerMachine_{scheduler}_{policy}", (SchedulerMachine,),
               {"scheduler": scheduler, "policy": policy, "params": params or {}})
    cls.TestCase.settings = settings(max_examples=25, stateful_step_count=40, deadline=None)
    return cls.TestCase


for _sched in SCHEDULERS:
    for _name in POLICIES:
        globals()[f"TestSchedulerStateful_{_sched}_{_name.replace('-', '_')}"] = (
            _scheduler_machine_for(_sched, _name))
# workflow's predicted admission order (kvsaga/scheduler/admission_order.py), with an AEG
# policy (its prior) and without one
for _name in ("lru", "ttl"):
    globals()[f"TestSchedulerStateful_workflow_predicted_{_name}"] = _scheduler_machine_for(
        "workflow", _name, {"admission_order": "predicted", "aging_s": 2.0})
