"""The connector's retention bookkeeping (kvsaga/integrations/vllm/retention.py) against a
fake of vLLM's block pool, no vLLM needed: across random retains, session ends and releases
under pressure, every block's reference count is its requests' plus one per retaining
session, no session holds a block twice, `_shared` is exactly the retained blocks a request
references too, and once every session is released the pool is as the requests left it."""

from __future__ import annotations

import pytest

# The vLLM environment (tests/integrations/vllm/run.sh) collects tests/integrations too and
# has no hypothesis; these need no vLLM and run in the main suite.
pytest.importorskip("hypothesis", reason="run by the main suite; the vLLM env lacks hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kvsaga.integrations.vllm.demoted import KeptDemoted  # noqa: E402
from kvsaga.integrations.vllm.hints import StepInfo  # noqa: E402
from kvsaga.integrations.vllm.ledger import BlockLedger  # noqa: E402
from kvsaga.integrations.vllm.retention import Retention  # noqa: E402
from kvsaga.integrations.vllm.retention_stats import RetentionStats  # noqa: E402
from kvsaga.policy import make_policy  # noqa: E402
from kvsaga.session import PauseHint  # noqa: E402

NUM_BLOCKS = 10  # block 0 is the null block
SIDS = ("a", "b", "c")


class FakeBlock:
    def __init__(self, block_id: int) -> None:
        self.block_id, self.ref_cnt = block_id, 0
        self.is_null = block_id == 0
        self.block_hash = None if self.is_null else block_id


class FakePool:
    """vLLM's BlockPool as retention uses it: reference counts changed by touch/free."""

    def __init__(self) -> None:
        self.num_gpu_blocks = NUM_BLOCKS
        self.blocks = [FakeBlock(b) for b in range(NUM_BLOCKS)]

    def touch(self, blocks) -> None:
        for blk in blocks:
            blk.ref_cnt += 1

    def free_blocks(self, blocks) -> None:
        for blk in blocks:
            assert blk.ref_cnt > 0, f"block {blk.block_id} freed below zero"
            blk.ref_cnt -= 1

    def get_num_free_blocks(self) -> int:
        return sum(1 for blk in self.blocks[1:] if blk.ref_cnt == 0)


class Holder(Retention):
    """Retention with the tables the connector sets up (connector.py's __init__ and
    bind_gpu_block_pool)."""

    def __init__(self, pool: FakePool) -> None:
        self.pool, self.policy = pool, make_policy("lru")
        self.holds: dict[str, list[int]] = {}
        self._holders: dict[int, list[str]] = {}
        self._shared: set[int] = set()
        self._sessions: dict = {}
        self._demoted = KeptDemoted()
        self.stats = RetentionStats()
        self._watch_refs(pool)
        self.ledger = BlockLedger(self.policy, NUM_BLOCKS, 16, self._usage)


def check(h: Holder, requests: list[int]) -> None:
    """The books: references are requests' plus retaining sessions', nothing twice."""
    for sid, held in h.holds.items():
        assert len(set(held)) == len(held), f"{sid} holds a block twice: {held}"
        for b in held:
            assert sid in h._holders[b]
    for b, holders in h._holders.items():
        assert len(set(holders)) == len(holders), f"block {b} held twice: {holders}"
        assert all(b in h.holds[s] for s in holders)
        # the policy sees a block two sessions retain as plain cache, one as that session's
        # (also once a block shared by two goes back to one holder)
        assert h.ledger.block_owner[b] == (None if len(holders) > 1 else holders[0])
    for b in range(1, NUM_BLOCKS):
        assert h.ledger.is_cached(b) == (b in h._holders), b
    for blk in h.pool.blocks[1:]:
        retained = len(h._holders.get(blk.block_id, ()))
        assert blk.ref_cnt == requests[blk.block_id] + retained, blk.block_id
    assert h._shared == {b for b in h._holders if requests[b]}


op = st.one_of(
    st.tuples(st.just("retain"), st.sampled_from(SIDS),
              st.lists(st.integers(1, NUM_BLOCKS - 1), max_size=5, unique=True)),
    st.tuples(st.just("request"), st.integers(1, NUM_BLOCKS - 1), st.booleans()),
    st.tuples(st.just("end"), st.sampled_from(SIDS), st.none()),
    st.tuples(st.just("pressure"), st.integers(1, NUM_BLOCKS - 1), st.none()),
    # `keep_demoted`: the gate demoted the session, its blocks kept and released first (their
    # release was counted in references dropped, not blocks freed, until review s51)
    st.tuples(st.just("demote"), st.sampled_from(SIDS), st.none()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=40))
def test_retention_holds_each_block_once_and_loses_none(ops):
    pool = FakePool()
    h = Holder(pool)
    requests = [0] * NUM_BLOCKS  # references vLLM's requests hold, per block
    for kind, x, y in ops:
        if kind == "retain":
            h._retain(StepInfo(x, "wf", PauseHint(tool="t", expected_s=1.0)), y)
        elif kind == "request":
            if y:
                pool.touch([pool.blocks[x]])
                requests[x] += 1
            elif requests[x]:
                pool.free_blocks([pool.blocks[x]])
                requests[x] -= 1
        elif kind == "end":
            h._release_session(x)
        elif kind == "demote":
            if x in h.holds:
                h._demoted.keep(x)
        else:
            before = {sid: list(held) for sid, held in h.holds.items()}
            free = pool.get_num_free_blocks()
            freed = h._release_until(x, 0.0, "pressure")
            assert pool.get_num_free_blocks() <= max(x, free)  # no more than asked for
            assert freed == pool.get_num_free_blocks() - free  # counted: what was freed
            for sid, old in before.items():
                new = h.holds.get(sid, [])
                assert new == old[:len(new)], f"{sid}: {old} -> {new}, not tails first"
                # A block a request references too is released only past a victim (which
                # none references): alone, dropping it would free nothing. (On vLLM a
                # request that holds it holds the blocks before it too: it stays.)
                for i, b in enumerate(old[len(new):], len(new)):
                    assert not requests[b] or any(not requests[c] for c in old[:i]), (sid, b)
        check(h, requests)
    for sid in list(h.holds):
        h._release_session(sid)
    check(h, requests)
    assert not h._holders and not h._shared and not len(h._demoted)
    assert [blk.ref_cnt for blk in pool.blocks[1:]] == requests[1:]


def _retained(pool: FakePool, holds: dict[str, list[int]]) -> Holder:
    """A Holder (policy `lru`) retaining `holds` (session -> its blocks, head first), each
    session's blocks cached in that order."""
    h = Holder(pool)
    for sid, blocks in holds.items():
        h._retain(StepInfo(sid, "wf", PauseHint(tool="t", expected_s=1.0)), blocks)
    return h


def test_a_release_under_lru_takes_tails_first():
    """lru names a session's oldest blocks, its head: released, they left its tail retained
    past a hole no prefix lookup crosses (never hit again, yet pinned). The victims' later
    blocks go first, and exactly as many as vLLM needs."""
    pool = FakePool()
    h = _retained(pool, {"s": [1, 2, 3, 4, 5, 6]})
    assert pool.get_num_free_blocks() == 3
    assert h._release_until(7, 0.0, "admit") == 4
    assert h.holds == {"s": [1, 2]} and pool.get_num_free_blocks() == 7
    assert h.stats.by_reason == {"admit": 4} and h.stats.released_blocks == 4
    check(h, [0] * NUM_BLOCKS)


def test_a_shared_victim_takes_every_holders_tail_first():
    """Block 1 is two sessions' (their common prefix): each gives back its blocks after it
    before their references on it go, and no more than vLLM needs."""
    pool = FakePool()
    h = _retained(pool, {"a": [1, 2], "b": [1, 3, 4]})
    free = pool.get_num_free_blocks()
    assert h._release_tail(1, free + 3) == 3
    assert h.holds == {"a": [1], "b": [1]}
    assert h._release_tail(1, free + 9) == 1
    assert h.holds == {} and pool.get_num_free_blocks() == free + 4
    check(h, [0] * NUM_BLOCKS)


def test_a_retain_with_no_full_block_leaves_the_hold_alone():
    """A request aborted in its first prefill chunk (less than a block: none hashed) retained
    nothing, in place of the context another request of its step had just retained."""
    pool = FakePool()
    h = _retained(pool, {"s": [1, 2]})
    pool.blocks[5].block_hash = None
    h._retain(StepInfo("s", "wf", PauseHint(tool="t", expected_s=1.0)), [5])
    assert h.holds == {"s": [1, 2]}
    assert [blk.ref_cnt for blk in pool.blocks[1:4]] == [1, 1, 0]
    check(h, [0] * NUM_BLOCKS)


def test_a_tail_block_a_request_uses_is_given_up_but_not_counted_as_freed():
    """vLLM keeps duplicate cached blocks of one hash, so a request can use a session's
    block 3 through another copy of blocks 1-2. Released past the victim, its retention goes
    (no lookup crosses the victim's hole) but frees nothing: it was counted as released (3
    for the 2 blocks freed)."""
    pool = FakePool()
    h = _retained(pool, {"s": [1, 2, 3, 4]})
    pool.touch([pool.blocks[3]])  # a running request's reference (not on blocks 1, 2)
    free = pool.get_num_free_blocks()
    assert h._release_until(free + 2, 0.0, "admit") == 2
    assert pool.get_num_free_blocks() == free + 2 and h.holds == {"s": [1]}
    assert h.stats.by_reason == {"admit": 2} and h.stats.released_blocks == 2
    check(h, [0, 0, 0, 1] + [0] * (NUM_BLOCKS - 4))


def test_a_kept_demoted_session_keeps_a_prefix_when_its_tail_is_in_use():
    """Review s51 (vconn LOW-7), hypothesis's example: a kept demoted session's tail is in a
    request's use, its head is not. The kept sessions' release skipped the tail and dropped
    the head: a hold of [5], past a hole no prefix lookup crosses. The release gives up the
    tail's retention with the head (tails first), as the policy's release does."""
    pool = FakePool()
    h = _retained(pool, {"b": [1, 5]})
    h._demoted.keep("b")
    pool.touch([pool.blocks[5]])  # a running request's reference (another copy of block 1)
    requests = [0] * NUM_BLOCKS
    requests[5] = 1
    free = pool.get_num_free_blocks()
    assert h._demoted_only() == 1  # block 1: the gate counts it as room
    assert h._release_until(free + 1, 0.0, "admit") == 1
    assert h.holds == {} and pool.get_num_free_blocks() == free + 1
    # Freed by the kept sessions' release, which gives up the tail's retention (it frees
    # nothing: the request keeps the block) to free the head the gate counted as room. It
    # stopped at the tail ({"admit": 1}): the policy's release took the block, here the
    # same one, and with an admitted session retaining too, that session's (review s51,
    # diffvconn LOW-1; test_kept_demoted_room_is_what_their_release_frees).
    assert h.stats.by_reason == {"demoted": 1}
    check(h, requests)


def test_kept_demoted_sessions_sharing_a_block_count_it_freed_once():
    """Block 1 is two kept demoted sessions' common prefix: their release frees 3 blocks and
    says 3 (it said 4, the references dropped: review s51, vconn LOW-4)."""
    pool = FakePool()
    h = _retained(pool, {"a": [1, 2], "b": [1, 3]})
    h._demoted.keep("a")
    h._demoted.keep("b")
    free = pool.get_num_free_blocks()
    assert h._release_until(free + 3, 0.0, "admit") == 3
    assert pool.get_num_free_blocks() == free + 3 and h.holds == {}
    assert h.stats.by_reason == {"demoted": 3} and h.stats.released_blocks == 3
    check(h, [0] * NUM_BLOCKS)


def test_a_kept_demoted_session_with_nothing_freeable_keeps_its_whole_hold():
    """Neither block of the kept session would free (block 1 is an admitted session's too,
    block 2 a request's): its release drops nothing, and the gate counts no room for it."""
    pool = FakePool()
    h = _retained(pool, {"a": [1], "b": [1, 2]})
    h._demoted.keep("b")
    pool.touch([pool.blocks[2]])
    requests = [0] * NUM_BLOCKS
    requests[2] = 1
    assert h._demoted_only() == 0
    freed = h._demoted.release(pool.blocks, h._holders, pool.get_num_free_blocks, NUM_BLOCKS,
                               h.holds, h._drop, h._release_session)
    assert freed == 0 and h.holds == {"a": [1], "b": [1, 2]} and "b" in h._demoted
    check(h, requests)


contexts = st.dictionaries(
    st.sampled_from(SIDS),
    st.lists(st.integers(1, NUM_BLOCKS - 1), min_size=1, max_size=5, unique=True),
    min_size=1)


@settings(max_examples=300, deadline=None)
@given(contexts, st.lists(st.integers(1, NUM_BLOCKS - 1), max_size=4),
       st.sets(st.sampled_from(SIDS), min_size=1))
def test_kept_demoted_room_is_what_their_release_frees(holds, in_use, kept):
    """Review s51 (diffvconn LOW-1). The gate adds kept demoted sessions' room
    (`_demoted_only`) to vLLM's free blocks: memory their release, first under any need,
    frees. Contexts share blocks (common prefixes) and requests use some (vLLM's duplicate
    cached blocks of one hash: a later block reached through another copy of the blocks
    before it). Asked for exactly that room, the release frees it alone (the policy took
    the rest from sessions still admitted: the kept release stopped at a tail in use) and
    leaves every hold a prefix of its context; asked for more, it frees that room and no
    more."""
    pool = FakePool()
    h = _retained(pool, holds)
    requests = [0] * NUM_BLOCKS
    for b in in_use:
        pool.touch([pool.blocks[b]])
        requests[b] += 1
    for sid in kept:
        h._demoted.keep(sid)
    admitted = {sid: list(held) for sid, held in h.holds.items() if sid not in kept}
    room = h._demoted_only()
    free = pool.get_num_free_blocks()
    assert h._release_until(free + room, 0.0, "admit") == room
    assert pool.get_num_free_blocks() == free + room
    assert h.stats.by_reason == ({"demoted": room} if room else {}), (holds, in_use, kept)
    assert {sid: h.holds[sid] for sid in admitted} == admitted
    for sid, held in h.holds.items():
        assert held == holds[sid][:len(held)], f"{sid}: {holds[sid]} -> {held}, a hole"
    check(h, requests)
    assert h._demoted_only() == 0  # all of it freed
    freed = h._demoted.release(pool.blocks, h._holders, pool.get_num_free_blocks, NUM_BLOCKS,
                               h.holds, h._drop, h._release_session)
    assert freed == 0 and pool.get_num_free_blocks() == free + room
    check(h, requests)
