"""An interrupt as the C++ pool's `release_many` returns is not read as its `blocks_cached`
hook raising (s54 pyloops F6, s55 ccut).

CPython checks for a pending signal as a C call returns: a signal that arrives during the
C++ pool's release (with LRU no Python runs in it at all) is raised in the caller exactly as
the call returned, the release whole and the policy told of the blocks it cached. Before,
the callers' handlers took every raise for the hook's (the policy told nothing) and dropped
those blocks unseen: freed behind the policy's back, LRU's queue still naming them ("victim
queue names block 5, which is not cached"). Now they read the pool's `calls` first
(`release_again`'s `calls`): a changed count is a release done and told, completed as
without the interrupt, which then propagates. The cut is delivered exactly there: at the
instruction after the release's call (tests/interrupts.py `Cut`, that one point). The Python
pool's release is a Python function: its return to a Python caller is no point.
"""

from __future__ import annotations

import contextlib
import dis

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga._core import cpp_available
from kvsaga.host_tier import HostTierOps
from kvsaga.manager_rollback import FailedWrites
from kvsaga.manager_signals import SessionSignals
from tests.interrupts import Cut
from tests.test_host_load_hook_raises import run_step
from tests.test_manager_hook_failure import books, make, paused
from tests.test_manager_release_entry_interrupt import CALLS
from tests.test_manager_release_entry_interrupt import _manager as _entry_manager

pytestmark = pytest.mark.skipif(not cpp_available(), reason="the C++ core is not built")


def _after_release(code, name: str = "release_many") -> int:
    """The offset of the instruction after `code`'s (one) `name(...)` call."""
    ins = [i for i in dis.get_instructions(code) if not i.opname.startswith("CACHE")]
    loads = [k for k, i in enumerate(ins) if i.argval == name
             and i.opname in ("LOAD_ATTR", "LOAD_METHOD")]
    assert len(loads) == 1, loads
    k = next(j for j in range(loads[0], len(ins)) if ins[j].opname == "CALL")
    return ins[k + 1].offset


def _cut_at(code, name: str) -> Cut:
    """A cut at that one point (whether or not the call ran a Python hook: a signal may
    arrive after the hook returned, before the C++ call does)."""
    cut = Cut(code, 0)
    cut.points = {_after_release(code, name)}
    return cut


def _cut_at_release(code) -> Cut:
    return _cut_at(code, "release_many")


def _check(m: KVCacheManager) -> None:
    m.check_integrity()
    policy = m.policy
    if hasattr(policy, "check_integrity"):
        policy.check_integrity()
    else:  # LRU: its queue is the CACHED blocks (was: it named blocks freed unseen)
        cached = [b for b in range(m.pool.num_blocks) if m.pool.state[b] == 2]
        assert sorted(policy._order) == cached


def _books(m: KVCacheManager):
    p = m.pool
    return (sorted(m.sessions), list(p.refcount), list(p.state), p.free_ids(), p.num_cached,
            sorted(m.index.items()),
            {sid: (s.state, list(s.block_ids), s.num_computed, s.tail)
             for sid, s in m.sessions.items()})


def _manager(policy: str) -> KVCacheManager:
    """The entry-interrupt tests' scenario on the C++ core: 'a' runs a step over 3 full
    blocks and a partial one, its first two shared with 'b'."""
    return _entry_manager(policy, core="cpp")


@pytest.mark.parametrize("policy", ["lru", "saga"])
@pytest.mark.parametrize("op", sorted(CALLS))
def test_release_table_cut_as_the_release_returns_completes_it(op, policy):
    m, twin = _manager(policy), _manager(policy)
    cut = _cut_at_release(SessionSignals._release_table.__code__)
    with cut, pytest.raises(KeyboardInterrupt):
        CALLS[op](m)
    assert cut.fired
    _check(m)
    CALLS[op](twin)
    assert _books(m) == _books(twin)  # was: the cached blocks dropped, the table cut
    st = m.begin_step("c", [1, 2, 3, 4, 5, 6, 9])  # the cache still serves 'a''s blocks
    assert st.num_cached_tokens == 6  # (was: its own third one dropped)
    _check(m)


BS = 4
X = list(range(500, 513))


def _host_manager() -> KVCacheManager:
    """x's 3 full blocks offloaded to the host tier (GPU: y's and z's blocks), x paused."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 8, policy="lru", clock=lambda: 0.0,
                       core="cpp", num_host_blocks=6)
    for sid, tokens in [("x", X), ("y", list(range(700, 713))), ("z", list(range(900, 913))),
                        ("w", list(range(1100, 1113)))]:
        run_step(m, sid, tokens)
    assert len(m.host.run(list(m.sessions["x"].block_hashes), 0, 3)) >= 1
    return m


def test_prefetch_cut_as_its_closing_release_returns_keeps_the_loads():
    m, twin = _host_manager(), _host_manager()
    cut = _cut_at_release(HostTierOps.prefetch.__code__)
    with cut, pytest.raises(KeyboardInterrupt):
        m.prefetch("x")
    assert cut.fired
    _check(m)
    loads = twin.prefetch("x")
    assert loads >= 1
    assert _books(m) == _books(twin)  # was: the prefetched blocks dropped unseen
    m.take_transfers()
    assert m.begin_step("x", X + [1]).num_cached_tokens == 12
    _check(m)


def _resumable(core: str):
    """'other' and 's' (10 tokens) paused. Returns the manager, its policy, s's next prompt
    (its context and 2 new tokens) and the books."""
    m, policy = make(core)
    paused(m, "other", list(range(50, 57)))
    paused(m, "s", list(range(10)))
    return m, policy, [*m.sessions["s"].token_ids, 7, 8], books(m)


def test_unbegin_cut_as_its_release_returns_still_takes_the_step_back():
    """`begin_step`'s rollback after `step_started` raised (`_unbegin`), cut as its release of
    the hits returned: the step taken back whole, the interrupt raised (the hook's error its
    context). Was: read as the release's hook raising, the rollback stopped there: the
    session left RUNNING over released blocks."""
    m, policy, prompt, before = _resumable("cpp")
    policy.fail = "step_started"
    cut = _cut_at_release(FailedWrites._unbegin.__code__)
    with cut, pytest.raises(KeyboardInterrupt) as info:
        m.begin_step("s", prompt)
    assert cut.fired and "step_started failed" in repr(info.value.__context__)
    m.check_integrity()
    assert books(m) == before
    policy.fail = None
    assert m.begin_step("s", prompt).num_cached_tokens == 10
    m.check_integrity()


def _take_back_manager() -> KVCacheManager:
    """'a' wrote 4 blocks (8 tokens); 'b' hit its first 4 and allocated one more."""
    m, _ = make("cpp")
    m.begin_step("a", list(range(1, 9)))
    m.allocate_slots("a", 8)
    st = m.begin_step("b", list(range(1, 13)))
    assert st.num_cached_tokens == 8
    m.allocate_slots("b", 4)
    return m


def _take_back_cut(m: KVCacheManager) -> None:
    """`discard_writes({"a": 4})` on a `_take_back_manager()` manager, cut as its second
    release (the loop's second: 'b''s) returns: the interrupt raised, the books sound."""
    cut = _cut_at_release(FailedWrites._take_back.__code__)
    cut.k = 1
    with cut, pytest.raises(KeyboardInterrupt):
        m.discard_writes({"a": 4})
    assert cut.fired
    _check(m)


def test_take_back_cut_as_a_release_returns_keeps_what_it_cached():
    """`discard_writes` (`_take_back`): 'b' took 'a''s block that the failed pass wrote as
    a hit, so it goes back before it, its later (hashed) block released, CACHED and told.
    Its release (the loop's second; the first, 'a''s, caches nothing) cut as the C++ call
    returned: what it cached stays
    (the policy was told), the rest of the take-back done, the interrupt raised at the end.
    Was: read as its hook raising, that block dropped unseen (LRU's queue naming it)."""
    m, twin = _take_back_manager(), _take_back_manager()
    _take_back_cut(m)
    twin.discard_writes({"a": 4})
    assert _books(m) == _books(twin)


@pytest.mark.parametrize("core,where", [("cpp", "_full_block_hits"), ("cpp", "_reuse_tail"),
                                        ("python", "_referenced")])
def test_a_resume_cut_once_its_hits_are_taken_holds_no_reference(core, where):
    """`begin_step` of a paused session: its hits taken (`_full_block_hits`), then an
    interrupt as the C++ pool's acquire_many returned (the Python pool's: at each point of
    its reference loop after the tell, which finishes and raises). Was: `begin_step`'s
    take-back, told the hits held no reference, left them ACTIVE in no table ("refcount 1
    but 0 running tables hold it"); now they are let go first, the books as before. The
    same for the retained tail's (`_reuse_tail`): now among the references taken back."""
    from kvsaga.manager import KVCacheManager as M
    from kvsaga.pool import BlockPool

    code = getattr(BlockPool if core == "python" else M, where).__code__
    fired = k = 0
    while True:
        m, _, prompt, before = _resumable(core)
        cut = (_cut_at(code, "acquire_many") if core == "cpp"
               else Cut(code, k, c_returns_only=True))
        with cut, contextlib.suppress(KeyboardInterrupt):
            m.begin_step("s", prompt)
        m.check_integrity()
        if cut.fired:
            fired += 1
            assert books(m) == before
            assert m.begin_step("s", prompt).num_cached_tokens == 10  # a retry
            m.check_integrity()
        if core == "cpp" or not cut.fired:
            break
        k += 1
    assert fired
