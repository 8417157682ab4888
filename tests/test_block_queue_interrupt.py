"""An interrupt inside one of the pure-Python BlockQueue's loops changes nothing.

Before (lane s52 takeplan, "not fixed"): a KeyboardInterrupt between two blocks of
`push_many` left the batch half linked (its blocks marked queued, unreachable from the head,
the tail and the length unchanged), `remove_many` left a prefix unlinked with the length
unchanged, and `pop_many` left the head naming a block marked unqueued. Now each takes its
batch back in an exception handler (no cost on the normal path).

CPython raises a signal handler's exception (KeyboardInterrupt) only where its eval loop
checks for pending work: a function's entry, a loop's jump back, and the return of a call.
The tracer (tests/interrupts.py) raises at each such point of one method's frame in turn (at
the jump itself, or at the instruction after the call: the state is the same), with opcode
tracing, and each test checks the queue afterwards: the same blocks, order and length, each block's
membership, and a queue that still works.
"""

from __future__ import annotations

import pytest

from kvsaga.block_queue import BlockQueue
from tests.interrupts import Cut, Cuts, rearm

CAP = 12


def _queue(order: list[int]) -> BlockQueue:
    q = BlockQueue(CAP)
    for b in order:
        q.push(b)
    return q


def _walk(links: list[int], s: int) -> list[int]:
    """The blocks from the sentinel `s` along `links`, at most CAP + 1 (a broken queue may
    loop)."""
    out = []
    b = links[s]
    while b != s and len(out) <= CAP:
        out.append(b)
        b = links[b]
    return out


def _state(q: BlockQueue):
    """Oldest to newest, newest to oldest, the length, each block's membership."""
    s = q._sentinel
    return _walk(q._next, s), _walk(q._prev, s), len(q), [b in q for b in range(CAP)]


def _still_works(q: BlockQueue) -> None:
    """Every block can be queued, and the queue pops them back in order."""
    assert _walk(q._next, q._sentinel)[::-1] == _walk(q._prev, q._sentinel)
    missing = [b for b in range(CAP) if b not in q]
    q.push_many(missing)
    order = list(q)
    assert sorted(order) == list(range(CAP)) and len(q) == CAP
    assert q.pop_many(CAP) == order
    assert len(q) == 0 and list(q) == [] and q.peek() == -1


CASES = {
    "push_many": ([3, 7, 1], lambda q: q.push_many([5, 0, 9, 2])),
    "remove_many": ([3, 7, 1, 5, 0, 9, 2], lambda q: q.remove_many([7, 5, 9, 3])),
    "pop_many": ([3, 7, 1, 5, 0, 9, 2], lambda q: q.pop_many(5)),
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_an_interrupt_at_each_point_changes_nothing(method):
    start, call = CASES[method]
    code = getattr(BlockQueue, method).__code__
    with Cut(code, k=-1) as probe:  # counts the points one uninterrupted call reaches
        call(_queue(start))
    assert probe.hits >= 4  # a jump back per block, at least
    for k in range(probe.hits):
        q = _queue(start)
        before = _state(q)
        with Cut(code, k) as cut, pytest.raises(KeyboardInterrupt):
            call(q)
        assert cut.fired
        assert _state(q) == before, k  # was: the batch half linked / unlinked
        call(q)  # the call goes through on a retry
        _still_works(q)


def test_a_refused_batch_still_changes_nothing():
    """The ValueError paths (a block queued twice, not queued, named twice) as before."""
    q = _queue([3, 7, 1])
    before = _state(q)
    for bad in ([5, 0, 7], [5, 0, 5]):
        with pytest.raises(ValueError, match="already queued|appears twice"):
            q.push_many(bad)
        assert _state(q) == before
    for bad in ([3, 4], [3, 3]):
        with pytest.raises(ValueError, match="not queued|appears twice"):
            q.remove_many(bad)
        assert _state(q) == before
    _still_works(q)


@pytest.mark.parametrize("method", sorted(CASES))
def test_a_signal_handlers_ordinary_exception_changes_nothing(method):
    """A signal handler may raise an ordinary Exception (a SIGALRM timeout's TimeoutError)
    at the same points: the undo decides by the blocks' state, not the exception's type."""
    start, call = CASES[method]
    code = getattr(BlockQueue, method).__code__
    with Cut(code, k=-1) as probe:
        call(_queue(start))
    for k in range(probe.hits):
        q = _queue(start)
        before = _state(q)
        with Cut(code, k, TimeoutError) as cut, pytest.raises(TimeoutError):
            call(q)
        assert cut.fired
        assert _state(q) == before, k
        call(q)
        _still_works(q)


@pytest.mark.parametrize("bad", [99, CAP + 1, -CAP - 2, "x", None, 1.5])
@pytest.mark.parametrize("at", [0, 1, 3])
def test_a_bad_id_in_remove_many_changes_nothing(bad, at):
    """A block id out of range or not an int, after `at` valid ones: its IndexError or
    TypeError propagates and the queue is as it was. Before (review s53 diffinterrupt,
    LOW 2): the undo took the bad id for unlinked, raised again inside itself, and left the
    blocks before it unlinked with the length unchanged (q [0 1 2], remove_many([1, 99]):
    list [0, 2], len 3)."""
    q = _queue([3, 7, 1, 5, 0, 9, 2])
    before = _state(q)
    batch = [7, 5, 9, 3][:at] + [bad]
    with pytest.raises((IndexError, TypeError)) as err:
        q.remove_many(batch)
    assert err.value.__context__ is None  # raised once, not again inside the undo
    assert _state(q) == before
    q.remove_many(batch[:-1])  # the valid ones still go
    assert [b for b in before[0] if b not in batch] == list(q)
    _still_works(q)


@pytest.mark.parametrize("count", [-1, 8, CAP + 1, "2", 1.0])
def test_a_bad_count_in_pop_many_changes_nothing(count):
    """pop_many refuses a count out of range before it unlinks anything (its undo relinks
    by the walk's own position, which only an interrupt between two blocks can leave)."""
    q = _queue([3, 7, 1, 5, 0, 9, 2])
    before = _state(q)
    with pytest.raises((ValueError, TypeError)):
        q.pop_many(count)
    assert _state(q) == before
    _still_works(q)


UNDOS = {"push_many": "_unpush", "remove_many": "_unremove", "pop_many": "_unpop"}


@pytest.mark.parametrize("method", sorted(CASES))
def test_a_second_interrupt_inside_the_undo_still_changes_nothing(method, monkeypatch):
    """The undo a first interrupt runs, cut again at each of its points, is restarted
    (`until_done`: each undo is idempotent) and leaves the queue as it was. Before (lane
    s53 interrupt, "remaining"): `_unpush` cleared the links it walks (a rerun walked a cut
    chain), `_unremove` relinked a block twice (`prev[b] = b`), and nothing restarted
    them."""
    start, call = CASES[method]
    code = getattr(BlockQueue, method).__code__
    undo = getattr(BlockQueue, UNDOS[method]).__code__
    with Cut(code, k=-1) as probe:
        call(_queue(start))
    seconds = 0
    for j in range(probe.hits):
        k = 0
        while True:
            q = _queue(start)
            before = _state(q)
            first, second = Cut(code, j), Cut(undo, k)
            with monkeypatch.context() as mp:
                both = Cuts(first, second)
                rearm(mp, both, [(BlockQueue, UNDOS[method])])
                with both, pytest.raises(KeyboardInterrupt):
                    call(q)
            assert first.fired
            assert _state(q) == before, (j, k)
            call(q)
            _still_works(q)
            if not second.fired:
                break
            seconds += 1
            k += 1
    assert seconds >= probe.hits  # a second cut at least once per first


@pytest.mark.parametrize("bad", [-1, -2, -CAP - 1, CAP])
@pytest.mark.parametrize("at", [0, 2])
def test_an_id_outside_the_queue_is_refused_by_every_entry_point(bad, at):
    """An id in range of the link lists but not a block: negative (-1 is the sentinel's
    index, -k block CAP+1-k) or the sentinel's own, CAP. Each entry point refuses it with
    the C++ queue's IndexError, the queue as it was. Before: `remove_many([-1])` and
    `remove(-1)` unlinked the sentinel (the queue then looped forever), `remove_many([-2])`
    unlinked block CAP-1, `push_many([-CAP - 1])` linked block 0 under the name -CAP-1."""
    q = _queue(list(range(CAP - 1, -1, -1))[:-1])  # all but block 0, from CAP-1 down
    before = _state(q)
    queued = before[0]
    msg = f"block id {bad} out of range \\[0, {CAP}\\)"
    for call in (lambda: q.remove_many(queued[:at] + [bad]), lambda: q.remove(bad),
                 lambda: q.push_many([0][:at] + [bad]), lambda: q.push(bad)):
        with pytest.raises(IndexError, match=msg):
            call()
        assert _state(q) == before
    _still_works(q)


@pytest.mark.parametrize(("op", "undo", "ids"), [
    ("push_many", "_unpush", [5, 6, 5]),
    ("remove_many", "_unremove", [1, 2, 1]),
])
def test_a_ctrl_c_in_a_refusals_undo_reaches_the_caller(op, undo, ids, monkeypatch):
    """A refusal (a block named twice) takes its partial change back under `until_done`; a
    KeyboardInterrupt that cuts that undo is raised once it is done, not dropped for the
    ValueError (review s54 diffpyloops LOW-4), the queue as it was."""
    code = getattr(BlockQueue, undo).__code__
    fired = 0
    for k in range(8):
        q = _queue([0, 1, 2, 3])
        before = _state(q)
        cut = Cut(code, k, KeyboardInterrupt, c_returns_only=True)
        with monkeypatch.context() as mp:
            rearm(mp, Cuts(cut), [(BlockQueue, undo)])
            with pytest.raises((KeyboardInterrupt, ValueError)) as info:
                getattr(q, op)(list(ids))
        assert _state(q) == before
        _still_works(q)
        if not cut.fired:
            break
        assert isinstance(info.value, KeyboardInterrupt), k
        fired += 1
    assert fired >= 2
