"""Random sequences of engine calls against the manager, checking every invariant."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvsaga import KVCacheManager, KVSpec, OutOfBlocks
from kvsaga.policy import POLICIES
from tests.policy.helpers import build

BS = 4
SESSIONS = [f"s{i}" for i in range(6)]
# A small alphabet makes prefix hits and shared blocks common.
tokens = st.lists(st.integers(0, 3), min_size=1, max_size=14)


class ManagerMachine(RuleBasedStateMachine):
    policy = "lru"  # subclasses below run every registered policy

    def __init__(self):
        super().__init__()
        self.m = KVCacheManager(
            KVSpec(1, 1, 4, block_size=BS), 12, clock=lambda: 0.0, policy=build(self.policy)
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
        st_ = self.m.begin_step(sid, prompt, now=self.now, salt=salt)
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
            self.m.append_tokens(sid, [data.draw(st.integers(0, 3))])
            pending = 1
        n = max(1, int(pending * frac))
        before = self.snapshot()
        try:
            slots = self.m.allocate_slots(sid, n, now=self.now)
        except OutOfBlocks:
            assert self.snapshot() == before, "a failed allocation changed state"
            return
        assert len(slots) == n and len(set(slots)) == n
        table = self.m.block_table(sid)
        for slot in slots:
            assert slot // BS in table
        self.context[sid] = list(s.token_ids)

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


ManagerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestManagerStateful = ManagerMachine.TestCase


def _machine_for(name: str):
    cls = type(f"ManagerMachine_{name}", (ManagerMachine,), {"policy": name})
    cls.TestCase.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
    return cls.TestCase


for _name in POLICIES:
    if _name != "lru":
        globals()[f"TestManagerStateful_{_name.replace('-', '_')}"] = _machine_for(_name)
