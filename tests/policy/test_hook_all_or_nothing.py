"""A pool hook that raises has changed nothing (`kvsaga.pool.PoolObserver`), batch hooks
included: belady's `block_cached` whose oracle raises, a grouped policy's `blocks_cached`
raising part way through the batch (belady keys each plain block), and adaptive's fan-out of
a pool call to its member policies when a later member raises (review s50 hooks, item 1).
"""

from __future__ import annotations

import pytest

from kvsaga._core import cpp_available
from kvsaga.policy import AdaptivePolicy, BeladyPolicy
from kvsaga.session import SessionState
from tests.policy.helpers import FakeView, make

CORES = ["python", *(["cpp"] if cpp_available() else [])]
READS_NO_CORE = True  # the managers here name their core; belady runs on a FakeView


class Oracle:
    """Next use: 10 s after `now` for a session's blocks, position-keyed for plain ones;
    raises for plain blocks at position `bad` (an oracle bug, or a trace it cannot read)."""

    bad: int | None = None

    def next_use(self, session_id, block_hash, position, now):
        if session_id is None and position == self.bad:
            raise KeyError(f"no future for position {position}")
        return now + 10.0 if session_id is not None else now + position


def books(p: BeladyPolicy, view: FakeView) -> tuple:
    """What belady keeps of the cached blocks, and the order it would evict them in."""
    return ({sid: list(g) for sid, g in p.groups.items()}, list(p.plain), list(p.dead),
            p.choose_victims(len(view.cached), 1.0))


def belady_view() -> tuple[BeladyPolicy, FakeView, Oracle]:
    oracle = Oracle()
    p = BeladyPolicy(oracle=oracle)
    view = FakeView(16)
    p.bind(view)
    for b, owner, pos in ((0, None, 0), (1, None, 1), (2, "s", 3), (3, "s", 2)):
        view.cache(p, b, owner, pos)
    return p, view, oracle


def test_belady_block_cached_whose_oracle_raises_records_nothing():
    """Before the fix the block was filed as plain cache before the oracle was asked: a
    block the pool never had CACHED (the hook raised) sat in the plain queue."""
    p, view, oracle = belady_view()
    before = books(p, view)
    oracle.bad = 7
    with pytest.raises(KeyError, match="position 7"):
        view.cache(p, 9, None, 7)
    view.cached.discard(9)  # the hook raised: the block is not cached after all
    oracle.bad = None
    p.check_integrity()
    assert books(p, view) == before


@pytest.mark.parametrize("run", ["own_run", "plain"])
def test_belady_blocks_cached_raising_part_way_records_nothing(run):
    """A batch whose last plain block's oracle raises: the blocks before it (an own run of
    a live session, or plain blocks) stayed recorded before the fix."""
    p, view, oracle = belady_view()
    before = books(p, view)
    facts = ([(10, "t", 5), (11, "t", 4)] if run == "own_run"
             else [(10, None, 5), (11, None, 4)]) + [(12, None, 7)]
    for b, owner, pos in facts:
        view.block_owner[b], view.block_position[b] = owner, pos
        view.cached.add(b)
    oracle.bad = 7
    with pytest.raises(KeyError, match="position 7"):
        p.blocks_cached([10, 11, 12])
    view.cached.difference_update({10, 11, 12})
    oracle.bad = None
    p.check_integrity()
    assert books(p, view) == before
    view.cached.update({10, 11, 12})  # the same batch again goes through
    p.blocks_cached([10, 11, 12])
    p.check_integrity()
    assert sorted(b for g in p.groups.values() for b in g) == [2, 3] + (
        [10, 11] if run == "own_run" else [])


def raising_member(hook: str, per_block: bool) -> AdaptivePolicy:
    """Adaptive over lru then graph, whose pool call `hook` (batch, or its per-block form
    on its 2nd block) raises while `a.fail` is set: lru, told first, has done its part."""
    a = AdaptivePolicy(experts=("lru", "graph"))
    a.fail = False
    g = a.experts[1].policy
    if per_block:
        one = getattr(type(g), hook)
        calls = []

        def block_hook(b):
            if a.fail:
                calls.append(b)
                if len(calls) == 2:
                    raise RuntimeError(f"{hook} failed (a policy bug)")
            one(g, b)

        setattr(g, hook, block_hook)
        setattr(g, hook.replace("block_", "blocks_"), None)  # told block by block
    else:
        many = getattr(type(g), hook.replace("block_", "blocks_"))

        def batch_hook(ids):
            if a.fail:
                raise RuntimeError(f"{hook} failed (a policy bug)")
            many(g, ids)

        setattr(g, hook.replace("block_", "blocks_"), batch_hook)
    return a


def cached_ids(m) -> list[int]:
    return sorted(b for b in range(m.pool.num_blocks) if m.pool.state_name(b) == "cached")


def members_agree(m, a: AdaptivePolicy) -> None:
    """Each member orders exactly the pool's CACHED blocks."""
    m.check_integrity()
    assert sorted(a.experts[0].policy.eviction_order()) == cached_ids(m)
    a.check_integrity()


@pytest.mark.parametrize("per_block", [False, True], ids=["batch", "per_block"])
@pytest.mark.parametrize("core", CORES)
def test_adaptive_release_whose_later_member_raises_leaves_no_member_told(core, per_block):
    """graph's `blocks_cached` raises after lru queued the release's blocks. Before the fix
    lru kept them queued while the manager dropped them as unseen: lru listed FREE blocks
    (its next eviction named a block that is not cached)."""
    a = raising_member("block_cached", per_block)
    m = make(a, core=core)
    m.begin_step("a", list(range(12)), now=0.0)
    m.allocate_slots("a", 12, now=0.0)
    a.fail = True
    with pytest.raises(RuntimeError, match="block_cached failed"):
        m.finish_step("a", now=1.0)
    a.fail = False
    members_agree(m, a)
    assert m.sessions["a"].state is SessionState.PAUSED
    assert m.begin_step("a", list(range(13)), now=2.0).num_cached_tokens == 0
    m.allocate_slots("a", 13, now=2.0)
    m.finish_step("a", now=3.0)
    members_agree(m, a)


@pytest.mark.parametrize("per_block", [False, True], ids=["batch", "per_block"])
@pytest.mark.parametrize("core", CORES)
def test_adaptive_eviction_whose_later_member_raises_changes_no_member(core, per_block):
    """graph's `blocks_uncached` raises after lru unlinked the victims; the eviction
    changes nothing (the pool tells first). Before the fix lru had lost the victims the
    pool kept CACHED: lru's order held 0 of a's 3 blocks. (The undo queues them again at
    lru's newest end: their recency moves, item 3.)"""
    a = raising_member("block_uncached", per_block)
    m = make(a, num_blocks=4, core=core)
    m.begin_step("a", list(range(12)), now=0.0)
    m.allocate_slots("a", 12, now=0.0)
    m.finish_step("a", now=1.0)
    m.begin_step("b", list(range(100, 116)), now=2.0)
    before = cached_ids(m)
    a.fail = True
    with pytest.raises(RuntimeError, match="block_uncached failed"):
        m.allocate_slots("b", 16, now=2.0)  # 1 free block and 3 of a's evicted
    a.fail = False
    members_agree(m, a)
    assert cached_ids(m) == before == [0, 1, 2]
    m.allocate_slots("b", 16, now=2.0)
    m.end_session("b", now=3.0)
    members_agree(m, a)
