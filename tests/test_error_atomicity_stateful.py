"""Every manager call, valid or not, in random order: a call that raises changes nothing
(the full state of both tiers, the sessions and the policy's eviction order are as before),
its error is a KVSaga error (InvalidRequest, UnknownSession, OutOfBlocks: never a TypeError
from deep inside), and the books hold after every call. tests/test_core_parity.py sends bad
input too, but compares the two cores only: both may change the same state on an error.
Runs every policy on the default core with a host tier, and the Python core under lru."""

from __future__ import annotations

import contextlib
import math

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvsaga import KVCacheManager, KVSagaError, KVSpec, OutOfBlocks
from kvsaga.policy import POLICIES
from tests.policy.helpers import build
from tests.stateful_reach import Reach, reach_case, resume_prompt, whole_steps
from tests.test_core_parity import snapshot

BS = 4
SESSIONS = [f"s{i}" for i in range(4)]
tokens = st.lists(st.integers(0, 3), min_size=1, max_size=14)
some_sid = st.sampled_from([*SESSIONS, "nobody", None, 3, ""])
# A time: mostly good (None reads the clock), sometimes bad.
some_now = st.one_of(st.none(), st.just(0.0), st.sampled_from(
    [math.nan, math.inf, -math.inf, "1", [1.0], True]))
some_salt = st.sampled_from([None, None, "t1", 7, b"x"])
some_hint = st.sampled_from([(None, None), ("grep", 1.0), ("t", -1.0), (3, None),
                             (None, math.nan), (None, "2")])


def full_state(m: KVCacheManager):
    host = None
    if m.host is not None:
        hp = m.host.pool
        host = (list(hp.refcount), list(hp.state), list(hp.block_hash),
                sorted(m.host.index.items()), list(m.host.order._next), m.host.has_plan,
                list(m.host._offloads), list(m.host._loads), list(m.host._pinned))
    return snapshot(m), host


class ErrorAtomicityMachine(Reach, RuleBasedStateMachine):
    policy = "lru"
    core = None
    host_blocks = 6

    def __init__(self):
        super().__init__()
        self.now = 0.0
        self.m = KVCacheManager(
            KVSpec(1, 1, 4, block_size=BS), 12, clock=lambda: self.now,
            policy=build(self.policy), num_host_blocks=self.host_blocks, core=self.core,
            max_model_len=48,
        )
        self.calls = self.errors = 0

    def call(self, fn):
        """Run fn(); if it raises, nothing may have changed. True if it returned."""
        before = full_state(self.m)
        self.calls += 1
        try:
            fn()
        except KVSagaError as e:
            self.errors += 1
            after = full_state(self.m)
            assert after == before, "a call that raised changed the state"
            if isinstance(e, OutOfBlocks):
                self.note_out_of_blocks()
            return False
        # any other exception propagates: the test fails with it
        return True

    @rule(steps=whole_steps(SESSIONS, most=6))
    def run_steps(self, steps):
        for sid, extra, keep in steps:
            self.whole_step(sid, extra, keep)

    def whole_step(self, sid, extra, keep):
        """One valid step as an engine runs it: begin on the session's own context, allocate
        every pending token, then finish on a tool (or, with `keep`, stay running). Paused
        caches build up, so the pool fills and later calls evict or are refused. Time passes
        between steps (a tool runs), so time-based policies let paused caches go too."""
        self.now += 20.0
        s = self.m.sessions.get(sid)
        if s is not None and s.is_running:
            self.call(lambda: self.m.preempt(sid))
        context = [] if s is None else s.token_ids[: s.num_computed]
        prompt = resume_prompt(context, extra, 44)
        if not self.call(lambda: self.m.begin_step(sid, prompt)):
            return
        s = self.m.sessions[sid]
        pending = len(s.token_ids) - s.num_computed
        if not self.call(lambda: self.m.allocate_slots(sid, pending)):
            self.call(lambda: self.m.preempt(sid))
        elif not keep:
            self.call(lambda: self.m.finish_step(sid, tool="t", expected_s=1.0))

    def running(self):
        return sorted(s for s, x in self.m.sessions.items() if x.is_running)

    @rule(sid=st.one_of(st.sampled_from(SESSIONS), some_sid), prompt=tokens, salt=some_salt,
          reuse=st.booleans(), now=some_now, bad=st.sampled_from([None] * 6 + [-1, "x", 2**40]))
    def begin(self, sid, prompt, salt, reuse, now, bad):
        s = self.m.sessions.get(sid) if isinstance(sid, str) else None
        if reuse and s is not None:
            prompt = resume_prompt(s.token_ids[: s.num_computed], prompt, 44)
        prompt = prompt[-44:] if bad is None else [*prompt, bad]
        self.call(lambda: self.m.begin_step(sid, prompt, now=now, salt=salt))

    @rule(sid=some_sid, new=tokens)
    def append(self, sid, new):
        self.call(lambda: self.m.append_tokens(sid, new))

    @rule(sid=some_sid, n=st.one_of(st.integers(-1, 20), st.sampled_from([None, 2.0])),
          now=some_now)
    def allocate(self, sid, n, now):
        self.call(lambda: self.m.allocate_slots(sid, n, now=now))

    @precondition(lambda self: self.running())
    @rule(data=st.data(), now=some_now)
    def decode(self, data, now):
        sids = data.draw(st.lists(st.sampled_from(self.running()), min_size=1, max_size=4))
        toks = data.draw(st.lists(st.integers(0, 3), min_size=len(sids), max_size=len(sids)))
        self.call(lambda: self.m.decode_step(list(sids), toks, now=now))

    @rule(sid=some_sid, hint=some_hint, last=st.booleans(), now=some_now)
    def finish(self, sid, hint, last, now):
        self.call(lambda: self.m.finish_step(sid, now=now, tool=hint[0], expected_s=hint[1],
                                             last_step=last))

    @rule(sid=some_sid, hint=some_hint, now=some_now)
    def pause_hint(self, sid, hint, now):
        self.call(lambda: self.m.pause_hint(sid, now=now, tool=hint[0], expected_s=hint[1]))

    @rule(sid=some_sid, now=some_now)
    def resume_hint(self, sid, now):
        self.call(lambda: self.m.resume_hint(sid, now=now))

    @rule(sid=some_sid, now=some_now, most=st.sampled_from([None, 0, 1, -1, "2"]))
    def prefetch(self, sid, now, most):
        self.call(lambda: self.m.prefetch(sid, now=now, max_blocks=most))

    @rule(sid=some_sid, now=some_now)
    def preempt(self, sid, now):
        self.call(lambda: self.m.preempt(sid, now=now))

    @rule(sid=some_sid, now=some_now)
    def end(self, sid, now):
        self.call(lambda: self.m.end_session(sid, now=now))

    @rule(sid=some_sid, n=st.sampled_from([1, 5, 0, -2, "3"]))
    def reads(self, sid, n):
        # Calls that change nothing, valid or not.
        before = full_state(self.m)
        for fn in (lambda: self.m.num_blocks_needed(sid, n),
                   lambda: self.m.can_allocate(sid, n), lambda: self.m.block_table(sid),
                   lambda: self.m.lookup(sid, [1, 2, 3, 4, 5])):
            with contextlib.suppress(KVSagaError):
                fn()
            assert full_state(self.m) == before, "a read changed the state"

    @rule()
    def transfers(self):
        self.m.take_transfers()

    @rule(dt=st.one_of(st.floats(0, 5), st.sampled_from([math.nan, -math.inf])))
    def tick(self, dt):
        if math.isfinite(dt):
            self.now += dt
        self.call(lambda: self.m.tick(self.now + dt if not math.isfinite(dt) else self.now))

    @invariant()
    def books(self):
        self.m.check_integrity()
        st_ = self.m.stats()
        assert st_.num_free_blocks + st_.num_used_blocks + st_.num_evictable_blocks == 12
        check = getattr(self.m.policy, "check_integrity", None)
        if check is not None:
            check()


# Each TestCase fails unless its examples evicted and were refused, and with a host tier
# copied out and loaded (tests/stateful_reach.py).
TestErrorAtomicity = reach_case(
    ErrorAtomicityMachine, settings(max_examples=60, stateful_step_count=40, deadline=None),
    host=True)


def _machine(policy: str, core: str | None, host_blocks: int):
    cls = type(f"ErrorAtomicity_{policy}_{core}_{host_blocks}", (ErrorAtomicityMachine,),
               {"policy": policy, "core": core, "host_blocks": host_blocks})
    return reach_case(cls, settings(max_examples=25, stateful_step_count=40, deadline=None),
                      host=host_blocks > 0)


TestErrorAtomicity_python = _machine("lru", "python", 6)
TestErrorAtomicity_no_host = _machine("lru", None, 0)
for _name in POLICIES:
    if _name != "lru":
        globals()[f"TestErrorAtomicity_{_name.replace('-', '_')}"] = _machine(_name, None, 6)
