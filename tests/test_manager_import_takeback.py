"""An import whose policy hook raises is taken back (review s49): the imported session is
absent, the blocks it allocated are freed and unindexed, the policy's error is the one
raised, the exporter keeps its blocks, and a retry works. Split from
tests/test_manager_hook_failure.py, whose set-up (`make`, `paused`) it shares.
"""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.session import SessionState
from tests.policy_hooks import CachedFails
from tests.test_manager_hook_failure import BS, CORES, make, paused


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("shared", [True, False], ids=["all-hits", "allocated"])
def test_an_import_whose_pause_hook_raises_is_taken_back(core, shared):
    # Review s49: `plan_import` paused the imported session outside its take-back, so a
    # raising `step_finished` left it RUNNING on its blocks, owned by no request, and the
    # retry was refused ("already exists"). Now the import is taken back first: the session
    # is absent, and the blocks it allocated are freed and unindexed (nothing was written).
    from dataclasses import replace

    source, _ = make(core)
    paused(source, "a", list(range(12)))  # 3 full blocks
    export = replace(source.export_session("a").export, session_id="b")
    m, policy = (source, source.policy) if shared else make(core)

    def blocks_and_sessions():  # (the import's query stays counted in the stats)
        st = m.stats()
        return (st.num_free_blocks, st.num_used_blocks, st.num_evictable_blocks,
                sorted(m.index.items()), sorted(m.sessions))

    before = blocks_and_sessions()
    policy.fail = "step_finished"
    with pytest.raises(RuntimeError, match="step_finished failed"):
        m.import_session(export)
    m.check_integrity()
    assert "b" not in m.sessions  # before the fix: RUNNING, its 3 blocks referenced
    assert blocks_and_sessions() == before
    policy.fail = None
    first, blocks = m.import_session(export)  # before the fix: "already exists"
    assert (first, len(blocks)) == ((3, 0) if shared else (0, 3))
    assert m.sessions["b"].state is SessionState.PAUSED
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
def test_an_import_whose_release_hook_raises_keeps_its_error(core):
    # Review s49 gatediff finding 4: the pool's `blocks_cached` hook raised in finish_step's
    # release, after `step_finished` returned, so the session was PAUSED; the take-back's
    # `discard_writes` raised InvalidRequest "no open step" in place of the policy's error,
    # and `plan_import`'s blocks stayed indexed over bytes no one would write. Now the error
    # propagates, the blocks are unindexed and freed (the policy, never told they were
    # cached, is not told they left), the session is absent, and the retry works.
    from dataclasses import replace

    source, _ = make(core)
    paused(source, "a", list(range(12)))
    export = replace(source.export_session("a").export, session_id="b")
    policy = CachedFails()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, policy=policy, clock=lambda: 0.0,
                       core=core)
    policy.fail = True
    with pytest.raises(RuntimeError, match="blocks_cached failed") as e:
        m.import_session(export)
    assert e.value.__context__ is None
    policy.fail = False
    assert "b" not in m.sessions and list(m.index.items()) == []
    assert m.stats().num_free_blocks == 16
    m.check_integrity()
    first, blocks = m.import_session(export)
    assert (first, len(blocks)) == (0, 3) and m.sessions["b"].state is SessionState.PAUSED
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("name", ["lru", "saga"])
def test_a_taken_back_shared_import_gives_the_exporter_its_blocks_back(core, name):
    # Review s49 gatediff note: an all-hit import disowns the exporter's blocks (shared, as
    # any step's hits another session owns), and its take-back left them disowned for good:
    # `a` never owned them again, even once it resumed. Now they are a's again, and the
    # policy files them as before (its eviction order too).
    from dataclasses import replace

    from kvsaga.policy import make_policy

    p = make_policy(name)
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, policy=p, clock=lambda: 0.0,
                       core=core)
    paused(m, "a", list(range(12)))
    export = replace(m.export_session("a").export, session_id="b")
    owners, order = list(m.block_owner), p.eviction_order()
    assert owners[:3] == ["a"] * 3
    real = p.step_finished

    def step_finished(session, now, hint):
        if session.session_id == "b":
            raise RuntimeError("step_finished failed (a policy bug)")
        real(session, now, hint)

    p.step_finished = step_finished
    with pytest.raises(RuntimeError, match="step_finished failed"):
        m.import_session(export)
    assert m.block_owner == owners and p.eviction_order() == order  # before: [None] * 3
    m.check_integrity()
    if name == "saga":
        p.check_integrity()
