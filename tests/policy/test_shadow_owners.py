"""A shadow cache's block owners follow the real manager's: at `end_session` it disowns the
blocks that left the session's table while the session still owned them (an abandoned
branch after its prompt diverged), as the manager does (`_left_owned`). They kept the ended
session's id, and a new session of the same id took them for its own in the shadow
expert's groups, skewing `adaptive`'s evidence."""

from __future__ import annotations

import contextlib
import random
from collections import Counter

from kvsaga import OutOfBlocks
from kvsaga.policy import AdaptivePolicy
from kvsaga.policy.shadow import _FREE, ShadowCache
from kvsaga.pool import FREE

from .helpers import make, tokens


def _step(m, sid, toks, now, **finish):
    st = m.begin_step(sid, toks, now=now)
    m.allocate_slots(sid, len(toks) - st.num_cached_tokens, now=now)
    m.finish_step(sid, now=now, **finish)


def _owned(view, blocks, sid):
    return [b for b in blocks if view.is_cached(b) and view.block_owner[b] == sid]


def test_an_abandoned_branch_is_disowned_in_the_shadow_at_end_session():
    p = AdaptivePolicy()
    m = make(p, num_blocks=32)
    assert p._shadows
    _step(m, "A", tokens(0, 16), 0.0, tool="t")  # A: 4 full blocks
    _step(m, "A", tokens(0, 8) + tokens(500, 9), 1.0, tool="t")  # diverges after 2
    for sh in p._shadows:
        assert len(_owned(sh, range(32), "A")) >= 2  # the branch: still A's, as in m
    assert len(_owned(m, range(32), "A")) >= 2
    m.end_session("A", now=2.0)
    assert _owned(m, range(32), "A") == []
    for sh in p._shadows:
        assert _owned(sh, range(32), "A") == []  # was: the abandoned branch's 2 blocks
    # A new session of the same id hits the old branch (tokens 0..15): in each shadow
    # expert, as in the real one, they are plain cache, not the new A's group.
    _step(m, "A", tokens(0, 17), 3.0, tool="t")
    real = p.experts[0].policy
    for sh in p._shadows[:1]:  # (the real expert 0 and its shadow rank alike here)
        assert len(sh.policy.groups.get("A", [])) == len(real.groups.get("A", []))
        assert len(sh.policy.plain) == len(real.plain)
    for sh in p._shadows:
        sh.check_integrity()


def _hashed_owners(view, state, free) -> Counter:
    """(owner, hash) of each held hashed block (`state[b] != free`), as a multiset (the
    two pools' block ids differ)."""
    return Counter((view.block_owner[b], view.block_hash[b]) for b in range(len(state))
                   if state[b] != free and view.block_hash[b] is not None)


def _event(m, rng: random.Random, now: float) -> None:
    """A random event: steps that keep all, half or none of their context (a diverged
    prompt abandons a branch), finishes, preemptions, ends."""
    running = sorted(k for k, v in m.sessions.items() if v.is_running)
    op = rng.choice(["begin"] * 4 + ["finish"] * 3 + ["preempt", "end", "end"])
    if op == "begin":
        sid = f"s{rng.randrange(5)}"
        s = m.sessions.get(sid)
        if s is not None and s.is_running:
            return
        old = list(s.token_ids[: s.num_computed]) if s is not None else []
        keep = rng.choice([len(old), len(old), len(old) // 2, 4 * (len(old) // 8), 0])
        prompt = (old[:keep] + [rng.randrange(40) for _ in range(rng.randrange(1, 14))])[-40:]
        st = m.begin_step(sid, prompt, now=now)
        m.allocate_slots(sid, len(prompt) - st.num_cached_tokens, now=now)
    elif op == "finish" and running:
        m.finish_step(rng.choice(running), now=now, tool=rng.choice([None, "grep", "test"]))
    elif op == "preempt" and running:
        m.preempt(rng.choice(running), now=now)
    elif op == "end" and m.sessions:
        m.end_session(rng.choice(sorted(m.sessions)), now=now)


def _walk(seed: int, num_blocks: int, check_equal: bool) -> None:
    rng = random.Random(seed)
    p = AdaptivePolicy(experts=("graph",)) if check_equal else AdaptivePolicy()
    m = make(p, num_blocks=num_blocks)
    now = 0.0
    for _ in range(200):
        with contextlib.suppress(OutOfBlocks):
            _event(m, rng, now)
        now += rng.choice([0.0, 0.01, 0.5, 3.0])
        m.check_integrity()
        if check_equal:  # the pool never evicts: the shadow holds what the real pool does
            sh = p._shadows[0]
            assert m.stats().num_evicted_blocks == 0
            assert _hashed_owners(sh, sh._state, _FREE) == \
                _hashed_owners(m, m.pool.state, FREE)
        live = set(m.sessions)
        for sh in p._shadows:
            assert isinstance(sh, ShadowCache)
            sh.check_integrity()
            # No held block of the shadow keeps an ended session's id.
            stale = {sh.block_owner[b] for b in range(num_blocks)
                     if sh._state[b] != _FREE and sh.block_owner[b] is not None} - live
            assert not stale, f"shadow blocks owned by ended sessions {stale}"


def test_random_steps_leave_no_shadow_block_owned_by_an_ended_session():
    for seed in range(6):
        _walk(seed, num_blocks=16, check_equal=False)  # tight: evictions all the time


def test_random_steps_give_the_shadow_the_real_managers_owners():
    for seed in range(6):
        _walk(seed, num_blocks=1000, check_equal=True)  # room for everything
