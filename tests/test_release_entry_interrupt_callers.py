"""An interrupt at the pure-Python pool's release entry (before any of its code: nothing
released) at every caller that drops references: each releases again, then the interrupt
propagates, the books as after the same call uncut (session 55 pyint; s54 pyloops
"remaining": only the manager's `_release_table` did so).

CPython checks for a pending signal at a Python function's entry (findings s54 pyloops). The
callers took any raise of the release for "released, its `blocks_cached` hook raised" and
left the references held by no one: `_take_back` (discard_writes, drop_transfer), `_unbegin`
(a begin_step whose policy hook raised: the step stayed open), prefetch's closing release and
`_take_run`'s (a load whose eviction raised), and the host tier's `copy_outs` and `unpin`.
The host tier's pool is always the Python pool: those two are real on either core.
"""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager
from kvsaga._core import cpp_available
from kvsaga.host_tier import HostTier
from kvsaga.pool import BlockPool
from kvsaga.session import SessionState
from tests.interrupts import Cut
from tests.test_manager_release_entry_interrupt import _EntryCut
from tests.test_manager_release_hook_raises import a_offloaded, consistent, manager


def _books(m: KVCacheManager):
    p = m.pool
    out = (list(p.refcount), list(p.state), p.free_ids(), p.num_cached,
           sorted(m.index.items()), list(m.block_owner),
           {sid: (s.state, list(s.block_ids), s.num_computed, s.tail, s.num_steps)
            for sid, s in m.sessions.items()})
    if m.host is not None:
        h = m.host.pool
        out += (list(h.refcount), list(h.state), h.free_ids(), list(m.host.order),
                list(m.host._pinned))
    return out


def _discard_setup():
    m, p = manager("lru", "python", num_blocks=12)
    m.begin_step("a", list(range(8)))
    m.allocate_slots("a", 8)
    m.finish_step("a")
    m.begin_step("a", list(range(17)))
    m.allocate_slots("a", 9)
    return m, p


def _drop_setup():
    m, p = a_offloaded("lru", "python")
    m.begin_step("a", list(range(20)))  # a host hit: a load
    m.allocate_slots("a", 8)
    m.plan = m.take_transfers()
    return m, p


def _unbegin_setup():
    m, p = manager("lru", "python", num_blocks=12)
    m.begin_step("a", list(range(8)))
    m.allocate_slots("a", 8)
    m.finish_step("a")

    def step_started(s, now):
        raise RuntimeError("step_started failed")

    p.step_started = step_started
    return m, p


def _take_run_setup():
    m, p = a_offloaded("lru", "python")

    def choose_victims(*a, **k):
        raise RuntimeError("choose_victims failed")

    p.choose_victims = choose_victims
    return m, p


# name: (setup, the call, the error the uncut call raises or None)
CASES = {
    "discard_writes": (_discard_setup, lambda m: m.discard_writes({"a": 8}), None),
    "drop_transfer": (_drop_setup, lambda m: m.drop_transfer(m.plan), None),
    "unbegin": (_unbegin_setup, lambda m: m.begin_step("a", list(range(12))), RuntimeError),
    "prefetch": (lambda: a_offloaded("lru", "python"), lambda m: m.prefetch("a"), None),
    "take_run": (_take_run_setup, lambda m: m.prefetch("a"), RuntimeError),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_release_cut_at_its_entry_releases_then_raises(name):
    setup, call, error = CASES[name]
    twin, _ = setup()
    if error is None:
        call(twin)
    else:
        with pytest.raises(error):
            call(twin)
    m, p = setup()
    cut = _EntryCut(m.pool)
    m.pool.release_many = cut
    with pytest.raises(KeyboardInterrupt):
        call(m)
    assert cut.calls >= 2  # cut at its entry, then released
    del m.pool.release_many
    consistent(m, p)  # was: references held by no one ("refcount 1 but 0 running tables")
    assert _books(m) == _books(twin)
    if name == "unbegin":  # the step taken back (was: left open, the policy never told)
        assert m.sessions["a"].state is SessionState.PAUSED


def _host() -> tuple[HostTier, int, int]:
    """A host tier with two CACHED copies (hb0 older than hb1)."""
    h = HostTier(4)
    ids = h.pool.allocate(2)
    for hb, key in zip(ids, (b"x", b"y"), strict=True):
        h.pool.block_hash[hb] = key
        h.index.insert(key, hb)
    h.pool.release_many(ids)
    return h, ids[0], ids[1]


def _host_books(h: HostTier):
    return (list(h.pool.refcount), list(h.pool.state), h.pool.free_ids(), list(h.order),
            list(h._pinned), h.num_kept, h.num_offloaded)


def _copy_outs(h, hb0, hb1):
    h.copy_outs([(7, b"z")], [hb0])  # hb0 kept (used: most recent), one copy planned


def _unpin(h, hb0, hb1):
    h.pin([hb0, hb1])
    h.unpin([hb0, hb1])


HOST = {"copy_outs": _copy_outs, "unpin": _unpin}


@pytest.mark.parametrize("name", sorted(HOST))
def test_a_host_release_cut_at_its_entry_releases_then_raises(name):
    twin, *ids = _host()
    HOST[name](twin, *ids)
    h, *ids = _host()
    cut = _EntryCut(h.pool)
    h.pool.release_many = cut
    with pytest.raises(KeyboardInterrupt):
        HOST[name](h, *ids)
    assert cut.calls == 2
    del h.pool.release_many
    h.check_integrity()  # was: "host refcounts differ from the pending plan's pins"
    books = _host_books(h)
    if name == "copy_outs":  # the interrupt came before num_kept was counted
        books = books[:5] + (books[5] + 1,) + books[6:]
    assert books == _host_books(twin)


@pytest.mark.parametrize("name", sorted(HOST))
def test_a_host_release_cut_inside_queues_what_it_cached(name):
    """A cut inside the release (its loop) finishes it, the order's hook untold (the pool's
    contract); the host tier then queues those blocks itself, as the hook would have. Before:
    CACHED host blocks missing from the order ('len(order) == num_cached' failed), never
    evictable again."""
    twin, *ids = _host()
    HOST[name](twin, *ids)
    h, *ids = _host()
    with Cut(BlockPool._release_loop.__code__, 0, c_returns_only=True) as cut, \
            pytest.raises(KeyboardInterrupt):
        HOST[name](h, *ids)
    assert cut.fired
    h.check_integrity()
    books = _host_books(h)
    if name == "copy_outs":
        books = books[:5] + (books[5] + 1,) + books[6:]
    assert books == _host_books(twin)


def _unbegin_raising(core: str, policy: str):
    """Paused a (2 blocks); its resume's `step_started` raises, so `_unbegin` releases the
    hits (a raising `blocks_cached` while `p.fail` is set)."""
    m, p = manager(policy, core, num_blocks=12)
    m.begin_step("a", list(range(8)))
    m.allocate_slots("a", 8)
    m.finish_step("a")
    real = p.step_started

    def step_started(s, now):
        if p.fail_start:
            raise RuntimeError("step_started failed")
        return real(s, now)

    p.step_started, p.fail_start = step_started, True
    return m, p


def _resumes(m: KVCacheManager, p) -> None:
    p.fail = p.fail_start = False
    consistent(m, p)
    start = m.begin_step("a", list(range(12)))
    m.allocate_slots("a", 12 - start.num_cached_tokens)
    m.finish_step("a")
    consistent(m, p)


@pytest.mark.parametrize("policy", ["lru", "saga"])
@pytest.mark.parametrize("core", ["python", *(["cpp"] if cpp_available() else [])])
def test_a_take_back_whose_release_hook_raises_completes(core, policy):
    """The take-back's release raising in `blocks_cached` (a second failing hook) skipped
    the rest of `_unbegin`: the session stayed RUNNING on a table it held no reference on
    ("block 0: refcount 0 but 1 running tables hold it"), both cores. Now the take-back
    completes and the blocks that release cached, unseen by the policy, are dropped."""
    m, p = _unbegin_raising(core, policy)
    p.fail = True
    with pytest.raises(RuntimeError, match="blocks_cached failed") as info:
        m.begin_step("a", list(range(12)))
    assert "step_started failed" in repr(info.value.__context__)
    a = m.sessions["a"]
    assert a.state is SessionState.PAUSED
    assert a.block_ids == [] and a.num_computed == 0  # its blocks dropped unseen
    _resumes(m, p)


def test_a_take_back_whose_release_is_cut_inside_completes():
    """Python core: a cut inside the take-back's release finishes it, untold (the pool's
    contract): the same path as a raising hook."""
    m, p = _unbegin_raising("python", "lru")
    with Cut(BlockPool._release_loop.__code__, 0, c_returns_only=True) as cut, \
            pytest.raises(KeyboardInterrupt):
        m.begin_step("a", list(range(12)))
    assert cut.fired
    assert m.sessions["a"].state is SessionState.PAUSED
    _resumes(m, p)
