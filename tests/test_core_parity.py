"""The C++ core against the Python reference: the same calls on two managers, one per core,
with equal results (or equal errors) and equal full snapshots after every operation:
pool arrays and free-queue order, prefix index, block owners, sessions, stats and the
policy's eviction order. Runs for every registered policy, with and without a host tier."""

from __future__ import annotations

import dataclasses

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvsaga import KVCacheManager, KVSpec
from kvsaga._core import cpp_available
from kvsaga.policy import POLICIES
from tests.policy.helpers import build
from tests.stateful_reach import Reach, reach_case, resume_prompt, whole_steps

pytestmark = pytest.mark.skipif(not cpp_available(), reason="the C++ core is not built")

BS = 4
SESSIONS = [f"s{i}" for i in range(5)]
tokens = st.lists(st.integers(0, 3), min_size=1, max_size=14)
# Mostly valid, sometimes not: every error path must match too.
bad_token = st.sampled_from([-1, 2**32, "x", 1.5, None, True])
some_sid = st.sampled_from([*SESSIONS, "nobody", None, ["list"]])


def sessions_state(m: KVCacheManager) -> dict:
    """Every field of every session (its hint, step count and workflow too: a refused call
    must not leave a new pause hint behind), as plain values."""
    return {sid: dataclasses.astuple(s) for sid, s in m.sessions.items()}


def snapshot(m: KVCacheManager):
    pool = m.pool
    order = getattr(m.policy, "eviction_order", None)
    return (
        m.stats(),
        list(pool.refcount),
        list(pool.state),
        list(pool.generation),
        list(pool.block_hash),
        pool.free_ids(),
        sorted(m.index.items()),
        list(m.block_owner),
        list(m.block_position),
        sessions_state(m),
        order() if order is not None else None,
    )


def outcome(fn):
    """fn()'s result, or its error as (type, message)."""
    try:
        return ("ok", fn())
    except Exception as e:  # noqa: BLE001 - any error must match between cores
        return ("error", type(e).__name__, str(e))


class ParityMachine(Reach, RuleBasedStateMachine):
    policy = "lru"
    host_blocks = 0

    def __init__(self):
        super().__init__()
        self.now = 0.0
        self.ms = [
            KVCacheManager(
                KVSpec(1, 1, 4, block_size=BS), 12, clock=lambda: self.now,
                policy=build(self.policy), num_host_blocks=self.host_blocks, core=core,
                max_model_len=48,
            )
            for core in ("python", "cpp")
        ]

    def reach_manager(self):
        return self.ms[0]

    def both(self, call):
        """Apply `call(manager)` to both managers; results and errors must match."""
        py, cpp = (outcome(lambda m=m: call(m)) for m in self.ms)
        assert py == cpp
        if py[:2] == ("error", "OutOfBlocks"):
            self.note_out_of_blocks()
        return py

    def running(self):
        return sorted(s for s, x in self.ms[0].sessions.items() if x.is_running)

    @rule(sid=st.sampled_from(SESSIONS), prompt=tokens, salt=st.sampled_from([None, "t1"]),
          reuse=st.booleans())
    def begin(self, sid, prompt, salt, reuse):
        s = self.ms[0].sessions.get(sid)
        if reuse and s is not None:  # extend its own context
            prompt = resume_prompt(s.token_ids[: s.num_computed], prompt, 40)
        self.both(lambda m: m.begin_step(sid, prompt[-40:], now=self.now, salt=salt))

    @rule(steps=whole_steps(SESSIONS))
    def run_steps(self, steps):
        for sid, extra, keep in steps:
            self.whole_step(sid, extra, keep)

    def whole_step(self, sid, extra, keep):
        """One valid step as an engine runs it: begin on the session's own context, allocate
        every pending token, then finish on a tool (or, with `keep`, stay running). Paused
        caches build up, so the pool fills and later steps evict or are refused."""
        if sid in self.running():
            self.both(lambda m: m.preempt(sid, now=self.now))
        self.begin(sid, extra, None, True)
        s = self.ms[0].sessions.get(sid)
        if s is None or not s.is_running:
            return
        pending = len(s.token_ids) - s.num_computed
        if self.both(lambda m: m.allocate_slots(sid, pending, now=self.now))[0] != "ok":
            self.both(lambda m: m.preempt(sid, now=self.now))
        elif not keep:
            self.both(lambda m: m.finish_step(sid, now=self.now, tool="t", expected_s=1.0))

    @rule(sid=some_sid, new=tokens, bad=st.one_of(st.none(), bad_token))
    def append(self, sid, new, bad):
        if bad is not None:
            new = [*new, bad]
        self.both(lambda m: m.append_tokens(sid, new))

    @rule(sid=some_sid, n=st.one_of(st.integers(-1, 20), st.sampled_from([None, True, 2.0])),
          listed=st.sampled_from([True, False, True, False, 0, None, 1, "no"]))
    def allocate(self, sid, n, listed):
        self.both(lambda m: m.allocate_slots(sid, n, now=self.now, return_slots=listed))

    @precondition(lambda self: self.running())
    @rule(data=st.data())
    def decode(self, data):
        sids = data.draw(st.lists(st.sampled_from(self.running()), min_size=1, max_size=4))
        toks = data.draw(st.lists(st.integers(0, 3), min_size=len(sids), max_size=len(sids)))
        if data.draw(st.integers(0, 9)) == 0:  # sometimes a bad batch
            toks = data.draw(st.sampled_from([toks[:-1], [*toks[:-1], -5], "ab"]))
        self.both(lambda m: m.decode_step(list(sids), toks, now=self.now))

    @precondition(lambda self: self.running())
    @rule(data=st.data(), last=st.booleans())
    def finish(self, data, last):
        sid = data.draw(st.sampled_from(self.running()))
        self.both(lambda m: m.finish_step(sid, now=self.now, tool="t", expected_s=1.0,
                                          last_step=last))

    @precondition(lambda self: self.running())
    @rule(data=st.data())
    def preempt(self, data):
        sid = data.draw(st.sampled_from(self.running()))
        self.both(lambda m: m.preempt(sid, now=self.now))

    @rule(sid=some_sid)
    def end(self, sid):
        self.both(lambda m: m.end_session(sid, now=self.now))

    @rule(sid=st.sampled_from(SESSIONS))
    def resume_hint(self, sid):
        self.both(lambda m: m.resume_hint(sid, now=self.now))

    @rule(dt=st.floats(0, 5))
    def tick(self, dt):
        self.now += dt
        self.both(lambda m: m.tick(self.now))

    @invariant()
    def same_state(self):
        py, cpp = self.ms
        assert snapshot(py) == snapshot(cpp)
        cpp.check_integrity()


# Each TestCase fails unless its examples evicted and were refused, and with a host tier
# copied out and loaded (tests/stateful_reach.py).
TestParity = reach_case(
    ParityMachine, settings(max_examples=100, stateful_step_count=40, deadline=None), host=False)


def _machine(name: str, host_blocks: int):
    cls = type(f"Parity_{name}_{host_blocks}", (ParityMachine,),
               {"policy": name, "host_blocks": host_blocks})
    # (the host tier's examples refuse and load less often: more of them)
    examples = 40 if host_blocks else 25
    return reach_case(cls, settings(max_examples=examples, stateful_step_count=40, deadline=None),
                      host=host_blocks > 0)


TestParityHost = _machine("lru", 6)
for _name in POLICIES:
    if _name != "lru":
        globals()[f"TestParity_{_name.replace('-', '_')}"] = _machine(_name, 0)


@pytest.mark.parametrize("seed", range(4))
def test_session_hits_are_the_index_walk(seed):
    """`ManagerCore.session_hits` (and `prefix_hits` given the table) read a paused
    session's hits off its block table, then probe the index: the same blocks as the
    index's walk alone, whatever was evicted, reused or shared since its last step."""
    import random

    rng = random.Random(seed)
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 12, core="cpp", clock=lambda: 0.0)
    ctx: dict[str, list[int]] = {}
    read_off_tables = 0
    for k in range(300):
        sid = rng.choice(SESSIONS)
        old = ctx.get(sid, []) if rng.random() < 0.8 else []
        prompt = (old + [rng.randrange(3) for _ in range(rng.randrange(1, 9))])[-40:]
        s = m.sessions.get(sid)
        if s is not None:
            limit = (len(prompt) - 1) // BS
            want = m.index.longest_prefix(s.block_hashes, limit)
            got = m._hot.session_hits(s.block_ids, s.block_hashes, limit)
            assert got == want
            assert m._hot.prefix_hits(s.block_hashes, limit, s.block_ids) == \
                m._hot.prefix_hits(s.block_hashes, limit)
            read_off_tables += bool(got) and got[0] == (s.block_ids or [None])[0]
        try:
            start = m.begin_step(sid, prompt, now=float(k))
            m.allocate_slots(sid, len(prompt) - start.num_cached_tokens, now=float(k))
        except Exception:  # noqa: BLE001 - a full pool: the step is not taken
            if sid in m.sessions and m.sessions[sid].is_running:
                m.preempt(sid)
            continue
        m.append_tokens(sid, [rng.randrange(3)])
        if rng.random() < 0.1:
            m.end_session(sid)
            ctx.pop(sid, None)
        else:
            m.finish_step(sid, now=float(k))
            ctx[sid] = list(m.sessions[sid].token_ids)
        m.check_integrity()
    assert read_off_tables > 10
