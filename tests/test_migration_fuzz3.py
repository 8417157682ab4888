"""Session export / import between two managers with host tiers, mixed with offloads,
prefetches, transfers and steps on both sides, with good, stale and bad exports and salts.

`export_session` changes nothing on the exporter; an `import_session` that raises is a
KVSaga error and changes nothing on the importer but the attempt's hit counters (docs/api.md,
"Session migration"); one that succeeds opens the session paused with the export's context;
both managers' books hold after every call. The other state machines
(test_manager_stateful.py, test_offload_stateful.py, test_error_atomicity_stateful.py) never
call export or import."""

from __future__ import annotations

import dataclasses
import math

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvsaga import InvalidRequest, KVCacheManager, KVSagaError, KVSpec, OutOfBlocks
from kvsaga.migration import SessionExport
from kvsaga.policy import POLICIES
from tests.policy.helpers import build
from tests.test_error_atomicity_stateful import full_state

BS = 4
NUM_GPU, NUM_GPU_DST, NUM_HOST = 12, 8, 6
SESSIONS = ["a", "b", "c"]
SALTS = [None, "t1"]
tokens = st.lists(st.integers(0, 3), min_size=1, max_size=10)
some_now = st.one_of(st.none(), st.just(0.0), st.sampled_from([math.nan, "1"]))
spoils = st.one_of(st.none(), st.none(), st.none(), st.sampled_from([
    "not-an-export", "sid-int", "sid-empty", "sid-list", "sid-none", "root", "root-str",
    "tokens-short", "tokens-other", "tokens-bad", "tokens-float", "tokens-str", "hashes",
    "block-size", "block-shape", "block-shape-none", "dtype", "steps-neg", "steps-float",
    "steps-bool", "workflow-int"]))
salts = st.sampled_from(["own"] * 5 + [None, "t1", 7])


def _unhit(state):
    """A full_state with the hit counters, which a refused import may move, zeroed."""
    (stats, *rest), host = state
    stats = dataclasses.replace(stats, queried_tokens=0, hit_tokens=0, host_hit_tokens=0)
    return (stats, *rest), host


# Ways to spoil an export: each must be refused.
def _spoil(e: SessionExport, how: str):
    if how == "not-an-export":
        return {"session_id": e.session_id}
    changes = {
        "sid-int": {"session_id": 3}, "sid-empty": {"session_id": ""},
        "sid-list": {"session_id": ["a"]}, "sid-none": {"session_id": None},
        "root": {"root": b"\x00" * 32}, "root-str": {"root": "nope"},
        "tokens-short": {"token_ids": e.token_ids[:-1]},
        "tokens-other": {"token_ids": [(t + 1) % 4 for t in e.token_ids]},
        "tokens-bad": {"token_ids": [*e.token_ids[:-1], -1]},
        "tokens-float": {"token_ids": [*e.token_ids[:-1], 1.0]},
        "tokens-str": {"token_ids": "abcd" * e.num_blocks},
        "hashes": {"block_hashes": list(reversed(e.block_hashes)) + [b"x" * 32]},
        "block-size": {"block_size": BS * 2},
        "block-shape": {"block_shape": (1, 2, 3)},
        "block-shape-none": {"block_shape": None},
        "dtype": {"dtype": "float32"},
        "steps-neg": {"num_steps": -1}, "steps-float": {"num_steps": 1.5},
        "steps-bool": {"num_steps": True},
        "workflow-int": {"workflow": 5},
    }[how]
    return dataclasses.replace(e, **changes)


class MigrationMachine(RuleBasedStateMachine):
    policy = "lru"

    def __init__(self):
        super().__init__()
        self.now = 0.0
        # The importer is the smaller: an export may not fit it beside what it holds.
        self.src, self.dst = (
            KVCacheManager(KVSpec(1, 1, 4, block_size=BS), n, clock=lambda: self.now,
                           policy=build(self.policy), num_host_blocks=NUM_HOST,
                           max_model_len=40)
            for n in (NUM_GPU, NUM_GPU_DST))
        self.salt: dict[str, str | None] = {}  # each session's salt on the exporter
        self.exports: list[tuple[SessionExport, str | None]] = []

    # -- steps on either manager ------------------------------------------------------------
    def _step(self, m: KVCacheManager, sid: str, new: list[int], out: int, salt, tool):
        s = m.sessions.get(sid)
        if s is not None and s.is_running:
            m.finish_step(sid, now=self.now)
            return
        prompt = ((s.token_ids if s is not None else []) + new)[-30:]
        try:
            m.begin_step(sid, prompt, now=self.now, salt=salt)
        except KVSagaError:
            return
        try:
            n = len(prompt) - m.num_computed_tokens(sid)
            if n:
                m.allocate_slots(sid, n, now=self.now)
            for t in range(out):
                m.append_tokens(sid, [t % 4])
                m.allocate_slots(sid, 1, now=self.now)
        except OutOfBlocks:
            m.preempt(sid, now=self.now)
            return
        except KVSagaError:  # the context limit
            pass
        m.finish_step(sid, now=self.now, tool=tool, expected_s=None if tool is None else 2.0)

    @rule(sid=st.sampled_from(SESSIONS), new=tokens, out=st.integers(0, 5),
          salt=st.sampled_from(SALTS), tool=st.sampled_from([None, "grep"]))
    def src_step(self, sid, new, out, salt, tool):
        salt = self.salt.setdefault(sid, salt)
        self._step(self.src, sid, new, out, salt, tool)

    @rule(sid=st.sampled_from(["x", "y", *SESSIONS]), new=tokens, out=st.integers(0, 5),
          salt=st.sampled_from(SALTS))
    def dst_step(self, sid, new, out, salt):
        s = self.dst.sessions.get(sid)
        self._step(self.dst, sid, new, out, None if s is not None else salt, None)

    @rule(sid=st.sampled_from(["x", "y"]), new=st.lists(st.integers(0, 3), min_size=1,
                                                         max_size=36))
    def dst_hold(self, sid, new):
        """A step on the importer left running: its blocks are held, so an import may find
        too few (OutOfBlocks) after its prefix hits, host loads and evictions."""
        s = self.dst.sessions.get(sid)
        if s is not None and s.is_running:
            self.dst.finish_step(sid, now=self.now)
            return
        try:
            self.dst.begin_step(sid, new, now=self.now)
            self.dst.allocate_slots(sid, len(new) - self.dst.num_computed_tokens(sid),
                                    now=self.now)
        except OutOfBlocks:
            self.dst.preempt(sid, now=self.now)
        except KVSagaError:
            pass

    @rule(which=st.booleans(), sid=st.sampled_from(["x", "y", *SESSIONS]))
    def end(self, which, sid):
        m = self.src if which else self.dst
        if sid in m.sessions:
            m.end_session(sid, now=self.now)
            if which:
                self.salt.pop(sid, None)

    @rule(which=st.booleans(), sid=st.sampled_from(["x", "y", *SESSIONS]),
          most=st.sampled_from([None, 1, 2]))
    def prefetch(self, which, sid, most):
        m = self.src if which else self.dst
        if sid in m.sessions:
            m.prefetch(sid, now=self.now, max_blocks=most)

    @rule(which=st.booleans(), sid=st.sampled_from(["x", "y", *SESSIONS]))
    def resume_hint(self, which, sid):
        m = self.src if which else self.dst
        if sid in m.sessions:
            m.resume_hint(sid, now=self.now)

    @rule(which=st.booleans())
    def transfers(self, which):
        (self.src if which else self.dst).take_transfers()

    @rule(dt=st.floats(0, 5))
    def tick(self, dt):
        self.now += dt
        self.src.tick(self.now)
        self.dst.tick(self.now)

    # -- export / import ----------------------------------------------------------------------
    @rule(sid=st.sampled_from(["nobody", *SESSIONS]))
    def export(self, sid):
        before = full_state(self.src)
        try:
            plan = self.src.export_session(sid)
        except KVSagaError:
            pass
        else:
            e = plan.export
            assert e.num_tokens == e.num_blocks * BS and len(plan.sources) == e.num_blocks
            self.exports.append((e, self.salt.get(sid)))
        assert full_state(self.src) == before, "export changed the exporter"

    @precondition(lambda self: self.exports)
    @rule(data=st.data(), now=some_now, spoil=spoils, salt=salts)
    def import_(self, data, now, spoil, salt):
        self._import(*data.draw(st.sampled_from(self.exports)), now, spoil, salt)

    @precondition(lambda self: self.src.sessions)
    @rule(data=st.data(), now=some_now, spoil=spoils, salt=salts)
    def migrate(self, data, now, spoil, salt):
        """Export a session now and import it at once (an export fresh, not stale)."""
        sid = data.draw(st.sampled_from(sorted(self.src.sessions)))
        self.export(sid)
        if self.exports and self.exports[-1][0].session_id == sid:
            self._import(*self.exports[-1], now, spoil, salt)

    def _import(self, e, own, now, spoil, salt):
        if e.session_id in self.dst.sessions and not self.dst.sessions[e.session_id].is_running:
            self.dst.end_session(e.session_id, now=self.now)  # moved back: the old copy goes
        if spoil is not None and e.num_blocks:
            e = _spoil(e, spoil)
        salt = own if salt == "own" else salt
        before = full_state(self.dst)
        try:
            first, blocks = self.dst.import_session(e, salt=salt, now=now)
        except KVSagaError:
            assert _unhit(full_state(self.dst)) == _unhit(before), \
                "a refused import changed the importer"
            return
        # anything but a KVSaga error propagates and fails the test
        assert spoil is None or not e.num_blocks if isinstance(e, SessionExport) else False, \
            f"a spoiled export ({spoil}) was imported"
        if not e.num_blocks:
            assert (first, blocks) == (0, [])
            return
        s = self.dst.session(e.session_id)
        assert not s.is_running and s.token_ids == e.token_ids
        assert s.num_steps == e.num_steps
        assert 0 <= first <= e.num_blocks and len(blocks) == e.num_blocks - first
        assert len(set(blocks)) == len(blocks)
        for i, b in enumerate(blocks):  # each named block caches the exported content
            assert self.dst.pool.block_hash[b] in (e.block_hashes[first + i], None)

    # -- books ------------------------------------------------------------------------------
    @invariant()
    def books(self):
        for m, n in ((self.src, NUM_GPU), (self.dst, NUM_GPU_DST)):
            m.check_integrity()
            s = m.stats()
            assert s.num_free_blocks + s.num_used_blocks + s.num_evictable_blocks == n
            check = getattr(m.policy, "check_integrity", None)
            if check is not None:
                check()


MigrationMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None, derandomize=True)
TestMigration = MigrationMachine.TestCase


def _machine(policy: str):
    cls = type(f"Migration_{policy}", (MigrationMachine,), {"policy": policy})
    cls.TestCase.settings = settings(max_examples=15, stateful_step_count=40, deadline=None,
                                     derandomize=True)
    return cls.TestCase


for _name in POLICIES:
    if _name != "lru":
        globals()[f"TestMigration_{_name.replace('-', '_')}"] = _machine(_name)


def _manager(num_gpu: int, num_host: int) -> KVCacheManager:
    return KVCacheManager(KVSpec(1, 1, 4, block_size=BS), num_gpu, clock=lambda: 0.0,
                          num_host_blocks=num_host)


def _export(tokens: list[int]) -> SessionExport:
    src = _manager(12, 0)
    src.begin_step("a", tokens)
    src.allocate_slots("a", len(tokens))
    src.finish_step("a")
    return src.export_session("a").export


def test_import_out_of_blocks_leaves_shared_prefix_owners():
    """The importer's paused session "p" caches the export's first blocks and a running
    step holds most of the pool: the import does not fit. It used to open the session
    (begin_step took ownership of p's blocks), fail to allocate, and end it again, leaving
    p's blocks owned by nobody; now the room is checked first and nothing changes."""
    a = list(range(100, 113))  # 3 full blocks and one token
    e = _export(a)
    dst = _manager(5, 4)
    dst.begin_step("p", a)
    dst.allocate_slots("p", len(a))
    dst.finish_step("p", tool="t")
    dst.begin_step("q", list(range(200, 212)))
    dst.allocate_slots("q", 12)  # q holds 3 of the 5 blocks
    dst.take_transfers()
    before = full_state(dst)
    owners = list(dst.block_owner)
    assert owners.count("p") == 2
    try:
        dst.import_session(e)
    except OutOfBlocks as err:
        assert err.needed == 3 and err.available == 2
    else:
        raise AssertionError("the import fitted")
    assert list(dst.block_owner) == owners
    assert full_state(dst) == before
    dst.check_integrity()
    dst.finish_step("q")
    dst.end_session("q")
    first, blocks = dst.import_session(e)  # room now: it goes through
    assert dst.session("a").token_ids == e.token_ids and len(blocks) == 3 - first


@pytest.mark.parametrize("field,value,words", [
    ("session_id", ["a"], "session_id"),  # was TypeError: unhashable type: 'list'
    ("session_id", None, "session_id"),
    ("block_shape", None, "layout"),  # was TypeError: 'NoneType' object is not iterable
    ("block_shape", 5, "layout"),
    ("token_ids", None, "token_ids"),  # was TypeError from len()
    ("token_ids", "abcdabcdabcd", "token_ids"),
    ("block_hashes", None, "block_hashes"),
    ("block_hashes", ["x", "y", "z"], "block_hashes"),
])
def test_malformed_export_fields_are_invalid_requests(field, value, words):
    """A SessionExport comes from another process: any field may hold anything. Each bad
    one is an InvalidRequest naming it, and the importer is unchanged."""
    e = dataclasses.replace(_export(list(range(100, 113))), **{field: value})
    dst = _manager(8, 4)
    before = full_state(dst)
    with pytest.raises(InvalidRequest, match=words):
        dst.import_session(e)
    assert full_state(dst) == before
