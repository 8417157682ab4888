"""Session 50 mutation testing: `lookup_after` (kvsaga/manager_journal.py) at the edges the
random histories of tests/test_manager_journal.py do not reach: two trailing hits evicted
(an answer, not None), and `hashes` exactly the hits (or fewer) with a longer prompt."""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec

BS = 4


@pytest.fixture(params=["lru", "saga"])
def paused(request, core):
    """Session a computed 16 tokens (4 full blocks) and paused; its next prompt (20
    tokens) hits those 4 blocks. Returns (manager, that prompt, its lookup, its 5 hashes)."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 8, clock=lambda: 0.0,
                       core=core.name, policy=request.param)
    m.begin_step("a", list(range(16)))
    m.allocate_slots("a", 16)
    m.finish_step("a")
    prompt = [*range(16), 50, 51, 52, 53]
    found = m.lookup("a", prompt)
    assert found.gpu_hit_blocks == 4
    hashes: list[bytes] = []
    m.hasher.extend(hashes, m.session("a").root, prompt)
    assert len(hashes) == 5
    return m, prompt, found, hashes


def _evict_two(m):
    """w takes 6 of the 8 blocks: a's last two (positions 3 and 2) are evicted."""
    m.begin_step("w", [7] * 24)
    m.start_journal()
    m.allocate_slots("w", 24)
    evicted = m.journal()
    assert sorted(p for _, _, p in evicted) == [2, 3]
    return evicted


def test_two_trailing_hits_evicted_is_answered(paused):
    """The victims among the hits are exactly the last two: `found` less 2 hits, equal to
    a fresh lookup (not None: the rule compares the FIRST lost position with n - k)."""
    m, prompt, found, hashes = paused
    evicted = _evict_two(m)
    after = m.lookup_after("a", found, hashes, evicted)
    assert after is not None and after.gpu_hit_blocks == 2
    assert after == m.lookup("a", prompt)


def test_a_victim_among_hits_past_the_hashes_given_asks_lookup(paused):
    """Given fewer hashes than hits, a victim at a hit past them (position 3, hashes 0..2)
    cannot be matched: None (ask `lookup`), not an error."""
    m, _, found, hashes = paused
    evicted = _evict_two(m)
    assert m.lookup_after("a", found, hashes[:3], evicted) is None


def test_hashes_exactly_the_hits(paused):
    """No eviction. With `hashes` the 4 hits' only: a 20-token prompt (its first block past
    the hits would be its last, which lookup never counts) is `found` itself; a 24-token
    prompt's 5th full block is unknown, so None (ask `lookup`), not an error."""
    m, prompt, found, hashes = paused
    m.start_journal()
    assert m.journal() == []
    assert m.lookup_after("a", found, hashes[:4], []) is found
    longer = [*prompt, 60, 61, 62, 63]
    found24 = m.lookup("a", longer)
    assert found24.gpu_hit_blocks == 4
    assert m.lookup_after("a", found24, hashes[:4], []) is None
