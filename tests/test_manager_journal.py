"""The eviction journal (kvsaga/manager_journal.py): `journal` names every victim since
`start_journal` or says it cannot, and `lookup_after` answers what `lookup` answers now,
or nothing, over random histories on both cores."""

import random

import pytest

from kvsaga import KVCacheManager, KVSpec, OutOfBlocks
from kvsaga.policy.saga import SagaPolicy
from kvsaga.prefix import root_hash

BS = 4


def _hashes(m, sid, tokens):
    s = m.sessions.get(sid)
    out: list[bytes] = []
    m.hasher.extend(out, root_hash(None) if s is None else s.root, tokens,
                    (len(tokens) - 1) // BS)
    return out


def _begin(m, sid, prompt):
    try:
        st = m.begin_step(sid, prompt)
        m.allocate_slots(sid, len(prompt) - st.num_cached_tokens)
    except OutOfBlocks:
        m.preempt(sid)
        return False
    return True


@pytest.mark.parametrize("policy", ["lru", "saga", "ttl", "graph"])
@pytest.mark.parametrize("seed", range(4))
def test_lookup_after_is_lookup_now(core, policy, seed):
    """Sessions sharing a prefix over a small pool; at random moments the paused ones'
    next prompts are looked up and a journal started, one session decodes (its blocks
    evict others'), and every answer `lookup_after` gives equals a fresh `lookup`. Both
    kinds of answer occur: unchanged, and less the hits whose blocks were evicted."""
    rng = random.Random(seed)
    m = KVCacheManager(KVSpec(2, 2, 8, block_size=BS), 24, clock=lambda: 0.0,
                       core=core.name, policy=policy)
    shared = list(range(500, 508))
    ctx = {sid: shared + [rng.randrange(100) for _ in range(5)] for sid in "abcd"}
    kinds = {"same": 0, "shrunk": 0}
    for _ in range(80):
        sid = rng.choice("abcd")
        s = m.sessions.get(sid)
        if s is None or s.state.name != "RUNNING":
            prompt = ctx[sid] + [rng.randrange(100) for _ in range(rng.randrange(1, 9))]
            if _begin(m, sid, prompt):
                ctx[sid] = prompt
            continue
        if rng.random() < 0.3:
            m.finish_step(sid)
            continue
        probes = {}
        for p, tokens in ctx.items():
            ps = m.sessions.get(p)
            if p != sid and (ps is None or ps.state.name != "RUNNING"):
                prompt = tokens + [7, 8]
                probes[p] = (prompt, m.lookup(p, prompt), _hashes(m, p, prompt))
        m.start_journal()
        for _ in range(rng.randrange(1, 12)):  # decode: a block every BS tokens
            tok = rng.randrange(100)
            m.append_tokens(sid, [tok])
            try:
                m.allocate_slots(sid, 1)
            except OutOfBlocks:
                m.preempt(sid)
                break
            ctx[sid] = ctx[sid] + [tok]
        evicted = m.journal()
        if m.sessions[sid].state.name != "RUNNING":
            assert evicted is None  # a preemption is not an eviction
            continue
        assert evicted is not None
        for p, (prompt, found, hashes) in probes.items():
            after = m.lookup_after(p, found, hashes, evicted)
            if after is not None:
                assert after == m.lookup(p, prompt)
                kinds["same" if after is found else "shrunk"] += 1
        m.check_integrity()
    m.stop_journal()
    assert m.journal() is None
    assert kinds["same"] and kinds["shrunk"]


def test_journal_is_none_after_any_other_change():
    """A step begun or finished, or no journal started: the journal cannot tell."""
    m = KVCacheManager(KVSpec(2, 2, 8, block_size=BS), 8, clock=lambda: 0.0, policy="saga")
    assert m.journal() is None
    m.start_journal()
    assert m.journal() == []
    assert _begin(m, "a", list(range(10)))
    assert m.journal() is None
    m.start_journal()
    m.finish_step("a")
    assert m.journal() is None


def test_an_ended_journal_is_dropped(core, monkeypatch):
    """A journal another change has ended (`journal()` None) is dropped at the next
    eviction. Until session 45 it stayed kept: it grew by an entry at every later eviction
    (1998 entries over 2000 steps) and kept `_evict` off the C++ core's runs path."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 8, clock=lambda: 0.0,
                       core=core.name, policy="saga")
    asked_runs: list[bool] = []
    choose = SagaPolicy.choose_victims

    def spy(self, num_blocks, now, runs=False):
        asked_runs.append(runs)
        return choose(self, num_blocks, now, runs)

    monkeypatch.setattr(SagaPolicy, "choose_victims", spy)
    m.start_journal()
    for i in range(20):
        sid = f"s{i}"
        st = m.begin_step(sid, [i * 100 + j for j in range(16)])  # a change: ends it
        m.allocate_slots(sid, 16 - st.num_cached_tokens)  # evicts older sessions' blocks
        m.finish_step(sid)
        assert m.journal() is None
    assert m.stats().num_evicted_blocks >= 16 * 4 and asked_runs
    assert m._journal is None  # no record left to grow
    # The C++ core's runs path (asked for runs) at every eviction; the Python core's list.
    assert set(asked_runs) == {m._hot is not None}
    m.start_journal()  # a journal started again records again
    m.begin_step("t", [7] * 16)
    m.start_journal()
    m.allocate_slots("t", 16)
    assert len(m.journal()) == 4
    m.check_integrity()


def test_lookup_after_refuses_when_fewer_hits_meet_the_sessions_tail(core):
    """Session b's prompt hits 3 blocks (its own 2, then a's third, past b's retained
    tail); evicting a's third block leaves 2 hits, which end where b's tail starts:
    `lookup` now counts the tail, which `lookup_after` cannot tell (it answered 2 hits and
    no tail)."""
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=2), 6, core=core.name, policy="lru")
    m.begin_step("a", [0, 2, 1, 1, 2, 0])
    m.allocate_slots("a", 6)
    m.finish_step("a")
    m.begin_step("b", [0, 2, 1, 1, 2])
    m.allocate_slots("b", 1)
    m.finish_step("b")  # hits a's first 2 blocks; tail [2]
    prompt = [0, 2, 1, 1, 2, 0, 0]
    m.begin_step("w", [7] * 6)
    found = m.lookup("b", prompt)
    assert (found.gpu_hit_blocks, found.tail_tokens) == (3, 0)
    m.start_journal()
    m.allocate_slots("w", 6)  # evicts a's third block, the LRU head
    evicted = m.journal()
    assert evicted is not None and [p for _, _, p in evicted] == [2]
    hashes: list[bytes] = []
    m.hasher.extend(hashes, m.session("b").root, prompt)
    now = m.lookup("b", prompt)
    assert (now.gpu_hit_blocks, now.tail_tokens) == (2, 1)
    after = m.lookup_after("b", found, hashes, evicted)
    assert after is None or after == now  # was 2 hits and no tail: 4 tokens for 5
