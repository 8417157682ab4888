"""The event-driven victim index gives exactly the order of a full scan of every key."""

from __future__ import annotations

import contextlib
import math
import random

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga import OutOfBlocks
from kvsaga.policy import POLICIES
from kvsaga.policy.groups import PLAIN, GroupedPolicy
from kvsaga.policy.search import GRID_RATIO, GRID_S, elapsed_grid
from tests.policy.helpers import assert_index_matches_scan, build, make, run_step, tokens
from tests.policy.test_properties import apply, op_lists

INDEXED = sorted(n for n, c in POLICIES.items() if getattr(c, "indexed", False))


def test_the_agent_aware_policies_are_indexed():
    assert {"ttl", "saga", "graph"} <= set(INDEXED)


def count_keyings(policy) -> list[str]:
    """The sessions the policy's Python keys from now on, in order (search.py `_rekey`
    calls `_timed_base` where a policy has one, else `_session_base`)."""
    keyed: list[str] = []
    name = "_timed_base" if hasattr(policy, "_timed_base") else "_session_base"
    keying = getattr(policy, name)
    setattr(policy, name, lambda sid, g, t: keyed.append(sid) or keying(sid, g, t))
    return keyed


@pytest.mark.parametrize("name", INDEXED)
@settings(max_examples=40, deadline=None)
@given(ops=op_lists, steps=st.lists(st.sampled_from([0.0, 4e-4, 3e-3, 0.05, 0.4, 7.0]),
                                    min_size=45, max_size=45),
       num_host_blocks=st.sampled_from([0, 4]))
def test_index_matches_a_brute_force_scan(name, ops, steps, num_host_blocks):
    # relearn_share=0: every key reads the current statistics, as the scan does.
    m = make(build(name, relearn_share=0.0), num_blocks=10, num_host_blocks=num_host_blocks)
    now = 0.0
    for (op, i, n, x), dt in zip(ops, steps, strict=False):
        with contextlib.suppress(OutOfBlocks):
            now = apply(m, op, i, n, x, now)
        now += dt
        assert_index_matches_scan(m, (n + x) % 5, now)


@pytest.mark.parametrize("name", INDEXED)
def test_stale_statistics_still_give_every_cached_block_once(name):
    # Default relearn_share: keys may read statistics a few events old, never lose a block.
    m = make(build(name), num_blocks=10)
    now = 0.0
    for k in range(60):
        sid = f"s{k % 4}"
        s = m.sessions.get(sid)
        with contextlib.suppress(OutOfBlocks):
            base = list(s.token_ids[: s.num_computed]) if s is not None else []
            m.begin_step(sid, (base + [k] * 3)[-20:], now=now)
            m.allocate_slots(sid, m.sessions[sid].num_computed * 0 + 3, now=now)
        if m.sessions[sid].is_running:
            m.finish_step(sid, now=now, tool=["a", "b"][k % 2])
        now += 0.3
        order = m.policy.eviction_order(now)
        assert sorted(order) == sorted(b for b in range(10) if m.is_cached(b))


@pytest.mark.parametrize("e", [0.0, 5e-4, 1e-3, 1.5e-3, 0.0123, 1.0, 7.77, 1234.5])
def test_elapsed_grid_brackets_the_time(e):
    lo, hi = elapsed_grid(e)
    assert lo <= e < hi
    if e >= GRID_S:
        assert hi == pytest.approx(lo * GRID_RATIO)
        k = math.log(lo / GRID_S) / math.log(GRID_RATIO)
        assert k == pytest.approx(round(k))


@given(st.one_of(st.floats(0.0, 1e30), st.integers(0, 400).map(
    lambda k: math.nextafter(GRID_S * GRID_RATIO**k, 0.0))))
@settings(max_examples=500, deadline=None)
def test_elapsed_grid_reads_the_same_points_as_computing_them(e):
    """The grid's points come from a table (no pow() per key) up to about 10^16 s and are
    computed past it: the same floats as GRID_S * GRID_RATIO**k, the rule keys were judged
    by before the table, just below a point included (where log() rounding steps back)."""
    lo, hi = elapsed_grid(e)
    if e < GRID_S:
        assert (lo, hi) == (0.0, GRID_S)
        return
    k = math.floor(math.log(e / GRID_S) / math.log(GRID_RATIO) + 1e-12)
    if GRID_S * GRID_RATIO**k > e:
        k -= 1
    assert (lo, hi) == (GRID_S * GRID_RATIO**k, GRID_S * GRID_RATIO ** (k + 1))


@pytest.mark.parametrize("name", INDEXED)
def test_a_deadline_rounded_onto_the_search_time_re_keys_once(name):
    # Times summed in 1 ms steps: the pause is a hair under one grid step old, yet its next
    # grid point, paused_at + GRID_S, rounds to the search time itself. The key is judged
    # at that time, so searching again at the same time must not re-key it again.
    paused_at, now = 0.06200000000000005, 0.06300000000000004
    assert now - paused_at < GRID_S and paused_at + GRID_S >= now
    policy = build(name)
    m = make(policy, num_blocks=8)
    run_step(m, "a", tokens(0, 8), now=paused_at, tool="search")
    policy.choose_victims(1, now)
    keyed = count_keyings(policy)
    for _ in range(3):
        policy.choose_victims(1, now)
    assert keyed == []


@pytest.mark.parametrize("name", INDEXED)
def test_rekey_all_makes_the_next_search_re_key_every_session(name):
    """A full re-key (what relearning does) gives every session the key that the current
    statistics give (the scan's order), though Python keys only one session of each class
    of timed records whose statistics changed and the index re-keys the rest of it
    (search.py `_rekey_everyone`)."""
    policy = build(name, relearn_share=100.0)  # no relearning but `rekey_all`
    m = make(policy, num_blocks=24)
    for i, sid in enumerate("abcde"):
        run_step(m, sid, tokens(100 * i, 12), now=0.01 * i, tool="search")
    policy.choose_victims(1, 0.5)
    keyed = count_keyings(policy)
    policy.choose_victims(1, 0.5)
    assert keyed == []
    # Learning: "a" resumes after its pause on the tool the others wait on too, and pauses.
    run_step(m, "a", tokens(0, 16), now=0.6, tool="edit")
    policy.rekey_all()
    policy.choose_victims(1, 0.6)
    # a (its own state changed) and one of b-e (one class)
    assert len(policy.groups) == 5 and sorted(keyed)[0] == "a" and len(keyed) == 2
    assert policy.eviction_order(0.6) == policy.scan_order(0.6)


@pytest.mark.parametrize("name", INDEXED)
def test_integrity_refuses_a_stale_owned_mark_no_run_left(name):
    """Only blocks uncached in a run of their group may keep an OWNED mark (the property test
    above checks those pass): a free block marked OWNED any other way is a bookkeeping bug
    that check_integrity must name."""
    m = make(build(name), num_blocks=8)
    run_step(m, "a", tokens(0, 16), 0.0, tool="t", expected_s=5.0)  # 4 blocks, 4 free
    policy = m.policy
    policy.check_integrity()
    free = next(b for b in range(8) if not policy.view.is_cached(b))
    assert policy._owner[free] is None
    policy._where[free] = 3  # OWNED, with no run behind it
    with pytest.raises(AssertionError, match="stale place"):
        policy.check_integrity()



GROUPED = sorted(n for n, c in POLICIES.items() if issubclass(c, GroupedPolicy))


def _walk(m, rng: random.Random, now: float) -> None:
    """One step of a random session: its context extended, or cut back, or a new prompt
    sharing only a prefix; finished, preempted or ended."""
    sid = f"s{rng.randrange(4)}"
    s = m.sessions.get(sid)
    old = list(s.token_ids) if s is not None else [7] * 8
    keep = rng.choice([len(old), len(old), len(old) // 2, 8])
    prompt = (old[:keep] + [rng.randrange(50) for _ in range(rng.randrange(1, 12))])[-40:]
    with contextlib.suppress(OutOfBlocks):
        st = m.begin_step(sid, prompt, now=now, workflow="w")
        m.allocate_slots(sid, len(prompt) - st.num_cached_tokens, now=now)
    if not m.sessions[sid].is_running:
        return
    r = rng.random()
    if r < 0.1:
        m.preempt(sid, now=now)
    elif r < 0.2:
        m.end_session(sid, now=now)
    else:
        m.finish_step(sid, now=now, tool="t")


def _batched_and_single(name, batched_hook):
    """Two managers with the policy `name`; the second without `batched_hook`, so that the
    pool calls its per-block twin for each block instead."""
    batched = make(build(name), num_blocks=24)
    single = make(build(name), num_blocks=24)
    setattr(single.policy, batched_hook, None)
    single.pool.observer = single.policy
    return batched, single


def _walk_alike(batched, single, seed):
    """The same random walk through both; their groups and eviction orders stay equal."""
    for k in range(150):
        now = 0.25 * k
        for m in (batched, single):
            _walk(m, random.Random(seed * 1000 + k), now)
        batched.policy.check_integrity()
        assert batched.policy.groups == single.policy.groups
        assert batched.policy.eviction_order(now) == single.policy.eviction_order(now)


@pytest.mark.parametrize("name", GROUPED)
@pytest.mark.parametrize("seed", range(3))
def test_batched_blocks_cached_equals_block_by_block(name, seed):
    # The pool reports a release in one `blocks_cached` call; without it, block by block.
    batched, single = _batched_and_single(name, "blocks_cached")
    queued = []
    run = batched.policy._queue_run

    def counted(blocks, where, _run=run):
        queued.append((where, len(blocks)))
        _run(blocks, where)

    batched.policy._queue_run = counted
    _walk_alike(batched, single, seed)
    if name != "belady":  # belady keys each plain block itself: block by block
        assert any(w == PLAIN and k > 1 for w, k in queued), "no shared prefix released"


@pytest.mark.parametrize("name", GROUPED)
@pytest.mark.parametrize("seed", range(3))
def test_batched_blocks_uncached_equals_block_by_block(name, seed):
    # The pool reports a resume's hits and an eviction's victims in one `blocks_uncached`
    # call (a resume's own run leaves its group in one slice); without it, block by block.
    batched, single = _batched_and_single(name, "blocks_uncached")
    reclaimed = []
    head = batched.policy._reclaimed_head

    def counted(block_ids, _head=head):
        k = _head(block_ids)
        reclaimed.append(k)
        return k

    batched.policy._reclaimed_head = counted
    plain_runs = []
    plain_run = batched.policy._plain_run

    def counted_plain(block_ids, _run=plain_run):
        plain_runs.append(_run(block_ids))
        return plain_runs[-1]

    batched.policy._plain_run = counted_plain
    _walk_alike(batched, single, seed)
    assert any(plain_runs), "no shared prefix taken back in one call"
    assert any(reclaimed)  # resumes took their own runs in one slice
