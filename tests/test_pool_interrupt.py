"""An interrupt inside the pure-Python BlockPool's loops (KVSAGA_CORE=python) leaves the
operation either not done or done whole, as the C++ pool's single call would.

Before (lane s53 interrupt, "remaining"): `allocate` cut after its pop lost the popped blocks
(FREE, out of the free queue) or left some ACTIVE with no holder; `release_many` cut between
two blocks released a prefix (the rest leaked once the manager took the release as done),
left blocks FREE outside the free queue or CACHED uncounted; `acquire_many`, `hold_many` and
`evict_many`, cut after telling the observer, left the pool's blocks CACHED that the observer
no longer had (or half changed). Now:

- allocate: nothing changed (the caller cannot get the ids).
- acquire_many, hold_many, evict_many: a cut after the tell finishes the transition (as the
  C++ call interrupted at its return); one before it changes nothing.
- release_many: the release finished, the observer told nothing: what the C++ pool leaves
  when its `blocks_cached` hook is interrupted at its entry, which every caller handles (the
  manager drops those blocks unseen); a cut in its checks of the ids (before `_releasing`
  names the call, review s54 diffpyloops LOW-2) changes nothing, as one at its entry.

Each interrupt point (tests/interrupts.py, `c_returns_only`: CPython does not check on a
Python function's return) of the method and the helpers it calls is cut in turn, then a
second interrupt at each point of the undo or completion the first one runs. The books
(refcounts, states, generations, hashes, free queue order, counts, reuse timing, holds, the
observer's LRU order) are compared with an uncut twin's.
"""

from __future__ import annotations

import pytest

from kvsaga.block_queue import BlockQueue
from kvsaga.pool import BlockPool
from tests.interrupts import Cut, Cuts, rearm

N = 12


class _PerBlock:
    """An LRU observer without the batch hooks (the pool calls `per_block`'s undoing loop)."""

    def __init__(self, q: BlockQueue) -> None:
        self.block_cached, self.block_uncached = q.push, q.remove


class _Batch(_PerBlock):
    def __init__(self, q: BlockQueue) -> None:
        super().__init__(q)
        self.blocks_cached, self.blocks_uncached = q.push_many, q.remove_many


class _Refusing(_PerBlock):
    """The twin of a release whose `blocks_cached` raised at its entry (told nothing)."""

    def __init__(self, q: BlockQueue) -> None:
        super().__init__(q)
        self.blocks_uncached = q.remove_many

    def blocks_cached(self, block_ids):
        raise KeyboardInterrupt


def _pool(kind: str, pool_cls=BlockPool):
    """0, 1, 2 CACHED (in that order); 3, 4 ACTIVE twice, hashed; 5 held (hashed); 6, 7
    ACTIVE unhashed; 8-11 FREE. The clock moves between the steps."""
    p = pool_cls(N)
    q = BlockQueue(N)
    p.observer = (_Batch if kind == "batch" else _PerBlock)(q)
    ids = p.allocate(8)
    for b in ids[:6]:
        p.block_hash[b] = bytes([b])
    p.clock = 1.0
    p.release_many([0, 1, 2, 5])
    p.clock = 2.0
    p.acquire_many([3, 4])
    p.hold_many([5])
    p.clock = 3.0
    return p, q


def _books(p: BlockPool, q: BlockQueue):
    cached = [b for b in range(N) if p.state[b] == 2]
    return (list(p.refcount), list(p.state), list(p.generation), list(p.block_hash),
            p.free_ids(), p.num_cached, p.reused_s, [p._cached_at[b] for b in cached],
            sorted(p._held), list(q))


_RELEASED = (3, 5, 6, 4, 3, 7)

# name: (call, outcomes allowed, functions cut first, undo/completion functions cut second),
# the functions by name ("Q." for the queue's; missing ones skipped: the old code's tests run)
OPS = {
    "allocate": (lambda p: p.allocate(3), {"nothing"},
                 ["allocate", "Q.pop_many"], ["_unallocate", "Q.unpop_many", "Q._unpop"]),
    "release_many": (lambda p: p.release_many(list(_RELEASED)), {"untold", "nothing"},
                     ["release_many", "_release_loop", "Q.push_many"],
                     ["_released", "_release_loop", "Q.push_many"]),
    "acquire_many": (lambda p: p.acquire_many([0, 3, 1, 6, 0]), {"nothing", "whole"},
                     ["acquire_many", "_reclaimable", "_reference", "_referenced",
                      "_hit_or_hold"],
                     ["_referenced", "_hit_or_hold"]),
    "hold_many": (lambda p: p.hold_many([0, 3, 1]), {"nothing", "whole"},
                  ["hold_many", "_reference", "_referenced", "_hit_or_hold"],
                  ["_referenced", "_hit_or_hold"]),
    "evict_many": (lambda p: p.evict_many([2, 0, 1]), {"nothing", "whole"},
                   ["evict_many", "evict_many.<listcomp>", "_evicted", "Q.push_many"],
                   ["_evicted", "Q.push_many"]),
}


def _fns(names: list[str]) -> list:
    """The code objects named (those that exist)."""
    out = []
    for name in names:
        name, _, inner = name.partition(".<")
        cls = BlockQueue if name.startswith("Q.") else BlockPool
        fn = getattr(cls, name.removeprefix("Q."), None)
        if fn is None:
            continue
        code = fn.__code__
        if inner:
            code = next(c for c in code.co_consts if getattr(c, "co_name", "") == "<" + inner)
        out.append(code)
    return out


# What an interrupt's handler runs (re-traced for the second cut: `rearm`).
UNDOS = [(BlockPool, n) for n in ("_unallocate", "_released", "_referenced", "_evicted")] + [
    (BlockQueue, n) for n in ("unpop_many", "_unpop", "_unpush", "_unremove", "push_many")]


def _code(fn):
    return getattr(fn, "__code__", fn)


def _expected(name: str, kind: str):
    """The books before, after an uncut call, and (a release) after one whose
    `blocks_cached` raised at its entry: the release whole, the observer told nothing."""
    call = OPS[name][0]
    before = _books(*_pool(kind))
    p, q = _pool(kind)
    call(p)
    out = {"nothing": before, "whole": _books(p, q)}
    if name == "release_many":
        p, q = _pool(kind)
        p.observer = _Refusing(q)
        with pytest.raises(KeyboardInterrupt):
            call(p)
        out["untold"] = _books(p, q)
    return out


def _outcome(name, kind, p, q, expected) -> str:
    p.check_integrity()
    books = _books(p, q)
    got = [o for o, b in expected.items() if b == books]
    assert got, f"{name}: neither nothing nor whole: {books}"
    outcome = got[0]
    assert outcome in OPS[name][1], (name, outcome)
    if name == "release_many":  # nothing only when cut in its checks (as at its entry):
        began = p._releasing == list(_RELEASED)  # `_releasing` not set, for the manager
        assert began == (outcome == "untold"), (outcome, p._releasing)
    if outcome == "nothing":  # a retry goes through
        OPS[name][0](p)
        p.check_integrity()
        assert _books(p, q) == expected["whole"]
    return outcome


def _points(fn, call, kind) -> int:
    p, _ = _pool(kind)
    with Cut(_code(fn), -1, c_returns_only=True) as probe:
        call(p)
    return probe.hits


@pytest.mark.parametrize("kind", ["batch", "per_block"])
@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("exc", [KeyboardInterrupt, TimeoutError])
def test_an_interrupt_at_each_point_leaves_nothing_or_the_whole_operation(name, kind, exc):
    call, _, firsts, _ = OPS[name]
    firsts = _fns(firsts)
    expected = _expected(name, kind)
    cuts = 0
    for fn in firsts:
        for k in range(_points(fn, call, kind)):
            p, q = _pool(kind)
            with Cut(_code(fn), k, exc, c_returns_only=True) as cut, pytest.raises(exc):
                call(p)
            assert cut.fired
            _outcome(name, kind, p, q, expected)
            cuts += 1
    assert cuts >= 4


def _cut_pairs(name: str, kind: str):
    """Each (function of the op, a cut point in it, another of the undos and completions it
    may run): where a first interrupt cuts, and which function a second one cuts."""
    call, _, firsts, seconds = OPS[name]
    seconds = _fns(seconds)
    for fn in _fns(firsts):
        for j in range(_points(fn, call, kind)):
            for undo in seconds:
                if undo is not fn:
                    yield fn, j, undo


@pytest.mark.parametrize("kind", ["batch", "per_block"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_a_second_interrupt_in_the_undo_still_leaves_nothing_or_the_whole(
        name, kind, monkeypatch):
    """The first interrupt's undo (or completion) cut again at each of its points: it is
    restarted (`until_done`) and ends as if uncut."""
    call = OPS[name][0]
    expected = _expected(name, kind)
    seconds_cut = 0
    for fn, j, undo in _cut_pairs(name, kind):
        k = 0
        while True:
            p, q = _pool(kind)
            first = Cut(_code(fn), j, c_returns_only=True)
            second = Cut(_code(undo), k, c_returns_only=True)
            with monkeypatch.context() as mp:
                both = Cuts(first, second)
                rearm(mp, both, UNDOS)
                with both, pytest.raises(KeyboardInterrupt):
                    call(p)
            # (the second function may run before the first point, uncut: then its cut
            # is the first interrupt, a single cut)
            assert first.fired or second.fired
            _outcome(name, kind, p, q, expected)
            if not second.fired:
                break
            seconds_cut += first.fired
            k += 1
    assert seconds_cut >= 2, name


@pytest.mark.parametrize("name", sorted(OPS))
def test_the_uncut_outcomes_are_the_cpp_pools(name):
    """The reference: the C++ pool's books after the same call (uncut), and after a release
    whose `blocks_cached` raised at its entry."""
    core = pytest.importorskip("kvsaga._core")
    if not core.cpp_available():
        pytest.skip("the C++ core is not built")
    cpp_pool = core.get_core("cpp").BlockPool

    def shared(p, q):
        return (list(p.refcount), list(p.state), list(p.generation), list(p.block_hash),
                p.free_ids(), p.num_cached, p.reused_s, list(q))

    for refusing in ([False, True] if name == "release_many" else [False]):
        for pool_cls in (BlockPool, cpp_pool):
            p, q = _pool("batch", pool_cls)
            if refusing:
                p.observer = _Refusing(q)
                with pytest.raises(KeyboardInterrupt):
                    OPS[name][0](p)
            else:
                OPS[name][0](p)
            got = shared(p, q)
            if pool_cls is BlockPool:
                want = got
        assert got == want, refusing


class _CutAt(Cut):
    """A `Cut` (c_returns_only) that fires at each hit number in `ks`, counted over every
    frame of its code: a first interrupt in a function and a second in its own rerun."""

    def __init__(self, code, ks) -> None:
        super().__init__(code, -1, c_returns_only=True)
        self.ks, self.fired_at = set(ks), []

    def _local(self, frame, event, arg):
        if event == "opcode" and frame.f_lasti in self.points:
            if frame.f_lasti in self.returns:
                ran = id(frame) in self._ran_python
                self._ran_python.discard(id(frame))
                if ran:
                    return self._local
            self.hits += 1
            if self.hits - 1 in self.ks:
                self.fired_at.append(self.hits - 1)
                raise KeyboardInterrupt
        return self._local


@pytest.mark.parametrize("kind", ["batch", "per_block"])
@pytest.mark.parametrize("name", ["acquire_many", "hold_many"])
def test_a_second_interrupt_in_the_rerun_of_the_cut_completion(name, kind, monkeypatch):
    """`_reference` runs its changes as `_referenced` (session 54 pyfix: no inline copy), so
    a first cut lands in `_referenced` itself: a second at each point of its rerun (by
    `until_done`) still ends the transition whole."""
    call = OPS[name][0]
    code = _code(BlockPool._referenced)
    expected = _expected(name, kind)
    n = _points(code, call, kind)
    assert n >= 3
    both = 0
    for j in range(n):
        for k in range(j + 1, j + 1 + 4 * n):
            p, q = _pool(kind)
            cut = _CutAt(code, (j, k))
            with monkeypatch.context() as mp:
                rearm(mp, Cuts(cut), [(BlockPool, "_referenced")])
                with cut, pytest.raises(KeyboardInterrupt):
                    call(p)
            assert j in cut.fired_at
            assert _outcome(name, kind, p, q, expected) == "whole"
            if k not in cut.fired_at:
                break
            both += 1
    assert both >= n


@pytest.mark.parametrize("kind", ["batch", "per_block"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_a_ctrl_c_in_the_undo_of_another_error_reaches_the_caller(name, kind, monkeypatch):
    """A first interrupt that is not a KeyboardInterrupt (a signal handler's TimeoutError),
    then a KeyboardInterrupt at the first points of the undo or completion it runs: the
    Ctrl-C reaches the caller, the TimeoutError its context, the books nothing or whole.
    Before (review s54 diffpyloops LOW-4): `until_done` dropped it for the first error."""
    call = OPS[name][0]
    expected = _expected(name, kind)
    lost_before = 0
    for fn, j, undo in _cut_pairs(name, kind):
        for k in range(2):
            p, q = _pool(kind)
            first = Cut(_code(fn), j, TimeoutError, c_returns_only=True)
            second = Cut(_code(undo), k, KeyboardInterrupt, c_returns_only=True)
            with monkeypatch.context() as mp:
                both = Cuts(first, second)
                rearm(mp, both, UNDOS)
                with both, pytest.raises((TimeoutError, KeyboardInterrupt)) as info:
                    call(p)
            if second.fired:
                assert isinstance(info.value, KeyboardInterrupt), (fn, j, undo, k)
                if first.fired and isinstance(info.value.__context__, TimeoutError):
                    lost_before += 1
            _outcome(name, kind, p, q, expected)
    assert lost_before >= 2, name
