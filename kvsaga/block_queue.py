"""An intrusive doubly linked queue over integer block ids.

Links live in two preallocated lists indexed by block id, so push, remove and pop are
O(1) and allocate no objects. Index `capacity` is the sentinel: `next[sentinel]` is the
head (oldest), `prev[sentinel]` the tail (newest). A block is linked iff
`prev[b] != -1`. The pool's free queue and the LRU policy's order are both one of these.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from operator import length_hint

# How often an undo is restarted after further interrupts before its own error propagates
# (`until_done`): an undo raises nothing on its own for blocks its loop accepted.
_RESTARTS = 100


def until_done(undo, *args):
    """`undo(*args)`, restarted when an interrupt (or a signal handler's Exception) cuts it:
    every undo of this module and the pool's is idempotent (it decides by the blocks' own
    links and states what is left to do), so a rerun finishes it. After `_RESTARTS` reruns
    the last error propagates (a deterministic failure is not retried forever).

    A KeyboardInterrupt that cut it is raised once it is done, unless the error being
    handled (the caller's, which it raises next) is one: a Ctrl-C that lands in the undo
    of another error (a bad id, a signal handler's TimeoutError) is not lost (review s54
    diffpyloops LOW-4); that error is its context.

    Its own entry is an interrupt point too (CPython checks at every Python function's
    entry), where a second pending signal lands: the pool's handlers call it again in a
    `finally` (s55 pyint). That covers one more interrupt in a row, not all: every handler
    needs a call, and the jump back of a retry loop's `except` lies outside its `try`, so
    no finite nesting covers every run of interrupts. This queue's own handlers call
    `length_hint` or `until_done` unguarded: a second interrupt there is not covered."""
    ki = None
    for _ in range(_RESTARTS):
        try:
            done = undo(*args)
        except KeyboardInterrupt as e:
            if ki is None:
                ki = e
        except BaseException:
            pass
        else:
            break
    else:
        done = undo(*args)
    if ki is not None and not isinstance(sys.exc_info()[1], KeyboardInterrupt):
        raise ki
    return done


class BlockQueue:
    __slots__ = ("_next", "_prev", "_sentinel", "_size")

    def __init__(self, capacity: int) -> None:
        self._sentinel = capacity
        self._next = [-1] * (capacity + 1)
        self._prev = [-1] * (capacity + 1)
        self._next[capacity] = capacity
        self._prev[capacity] = capacity
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, block_id: int) -> bool:
        return self._prev[block_id] != -1

    def _out_of_range(self, block_id: object) -> IndexError:
        """The C++ queue's refusal of an id outside [0, capacity): a negative one indexes
        the link lists from their end (-1 is the sentinel), the capacity is the sentinel."""
        return IndexError(f"block id {block_id} out of range [0, {self._sentinel})")

    def __iter__(self) -> Iterator[int]:
        """Oldest to newest."""
        nxt, s = self._next, self._sentinel
        b = nxt[s]
        while b != s:
            yield b
            b = nxt[b]

    def push(self, block_id: int) -> None:
        """Append at the tail (newest). A linked block is a ValueError (as the C++ queue's:
        linked twice, it corrupted the order silently; review s49 gate3, finding 3)."""
        nxt, prv, s = self._next, self._prev, self._sentinel
        if prv[block_id] != -1 or block_id < 0:  # (the sentinel's `prev` is set)
            if not 0 <= block_id < s:
                raise self._out_of_range(block_id)
            raise ValueError(f"block {block_id} is already queued")
        tail = prv[s]
        nxt[tail] = block_id
        prv[block_id] = tail
        nxt[block_id] = s
        prv[s] = block_id
        self._size += 1

    def push_many(self, block_ids: list[int]) -> None:
        """Append blocks at the tail, in order. None may be linked, none named twice
        (ValueError, nothing changed). The check is the link loop's own: a block reached
        with `prev` set was linked before or earlier in this batch. An interrupt between
        two blocks (or after the loop) unlinks the batch again (restarted if a further one
        cuts that: `until_done`): nothing changed. An id outside [0, capacity) is an
        IndexError (as the C++ queue's), nothing changed."""
        if not block_ids:
            return
        nxt, prv, s = self._next, self._prev, self._sentinel
        tail = start = prv[s]
        try:
            for b in block_ids:
                if prv[b] != -1 or b < 0:  # (the sentinel's `prev` is set: refused too)
                    break
                nxt[tail] = b
                prv[b] = tail
                tail = b
            else:
                nxt[tail] = s
                prv[s] = tail
                self._size += len(block_ids)
                return
        except BaseException:
            until_done(self._unpush, start, tail)
            raise
        done = until_done(self._unpush, start, tail)
        if not 0 <= b < s:
            raise self._out_of_range(b)
        raise ValueError(f"block {b} appears twice" if b in done else
                         f"block {b} is already queued")

    def _unpush(self, start: int, tail: int) -> list[int]:
        """Unlink what `push_many` linked (`start`'s successors up to `tail`), the old tail
        `start` the tail again; returns those blocks. Idempotent: it clears only their
        `prev` (their `next` still chains them for a rerun's walk), and `start` back at the
        tail (its `next` the sentinel, the sentinel's `prev` it: the last two stores, which
        no call separates) means done."""
        nxt, prv, s = self._next, self._prev, self._sentinel
        if nxt[start] == s and prv[s] == start:
            return []
        done = []
        b = start
        while b != tail:
            b = nxt[b]
            done.append(b)
        for b in done:
            prv[b] = -1
        nxt[start] = s
        prv[s] = start
        return done

    def remove_many(self, block_ids: list[int]) -> None:
        """Unlink linked blocks, none named twice (ValueError, nothing changed). The check is
        the unlink loop's own (`prev` -1: not linked, or unlinked earlier in this batch), and
        `next` is left as it was (an unlinked block's `next` means nothing) so that a refusal
        can relink what the loop had unlinked. An interrupt between two blocks (or after
        the loop) relinks them so (restarted if a further one cuts that: `until_done`), as
        does a bad id's TypeError: nothing changed. An id outside [0, capacity) is an
        IndexError (as the C++ queue's), nothing changed: -1 indexed the sentinel, which the
        loop unlinked (the queue then looped forever), and -k another block."""
        nxt, prv, s = self._next, self._prev, self._sentinel
        it = iter(block_ids)
        try:
            for b in it:
                p = prv[b]
                if p == -1 or b < 0 or b == s:
                    break
                n = nxt[b]
                nxt[p] = n
                prv[n] = p
                prv[b] = -1
            else:
                self._size -= len(block_ids)
                return
        except BaseException:  # an interrupt, or a bad id (IndexError, TypeError)
            given = len(block_ids) - length_hint(it)
            if given and not self._unlinked(block_ids[given - 1]):
                given -= 1  # (the last block given was never unlinked: a bad id)
            until_done(self._unremove, block_ids, given)
            raise
        stop = len(block_ids) - length_hint(it) - 1
        until_done(self._unremove, block_ids, stop)
        bad = block_ids[stop]
        if not 0 <= bad < s:
            raise self._out_of_range(bad)
        raise ValueError(f"block {bad} appears twice" if bad in block_ids[:stop] else
                         f"block {bad} is not queued")

    def _unlinked(self, b: object) -> bool:
        """Whether `remove_many`'s loop unlinked `b`, the last block it was given before it
        raised (its undo decides by the block, not by the exception: a signal handler can
        raise an ordinary Exception, such as a SIGALRM timeout's TimeoutError). The loop's
        body makes no call, so an interrupt lands only between two blocks, the last
        unlinked; an exception inside it can only come from reading a bad id's `prev`
        (out of range, not an int), before anything changed."""
        try:
            return self._prev[b] == -1
        except Exception:
            return False

    def _unremove(self, block_ids: list[int], stop: int) -> None:
        """Relink, newest first, the blocks `remove_many` unlinked, `block_ids[:stop]` (each
        one's `next` is still its successor, whose `prev` is then its predecessor again:
        dancing links). Idempotent: a block already relinked (`prev` set: a rerun after an
        interrupt cut this) is skipped, and those are the newest ones, relinked first."""
        nxt, prv = self._next, self._prev
        for b in reversed(block_ids[:stop]):
            if prv[b] != -1:
                continue
            n = nxt[b]
            p = prv[b] = prv[n]
            nxt[p] = b
            prv[n] = b

    def remove(self, block_id: int) -> None:
        """Unlink a linked block (ValueError for one not linked)."""
        nxt, prv = self._next, self._prev
        if prv[block_id] == -1 or block_id < 0 or block_id == self._sentinel:
            if not 0 <= block_id < self._sentinel:
                raise self._out_of_range(block_id)
            raise ValueError(f"block {block_id} is not queued")
        p, n = prv[block_id], nxt[block_id]
        nxt[p] = n
        prv[n] = p
        prv[block_id] = -1
        nxt[block_id] = -1
        self._size -= 1

    def peek(self) -> int:
        """The head (oldest), or -1 when empty."""
        b = self._next[self._sentinel]
        return -1 if b == self._sentinel else b

    def head(self, count: int) -> list[int]:
        """The `count` oldest blocks (fewer if the queue is shorter), left linked."""
        nxt, s = self._next, self._sentinel
        out = []
        append = out.append
        b = nxt[s]
        for _ in range(min(count, self._size)):
            append(b)
            b = nxt[b]
        return out

    def pop(self) -> int:
        """Unlink and return the head. The queue must not be empty."""
        nxt, prv, s = self._next, self._prev, self._sentinel
        b = nxt[s]
        n = nxt[b]
        nxt[s] = n
        prv[n] = s
        prv[b] = -1
        nxt[b] = -1
        self._size -= 1
        return b

    def pop_many(self, count: int) -> list[int]:
        """Unlink and return the `count` oldest blocks. A count below 0 or above len(self)
        is a ValueError, nothing unlinked (the C++ queue's check: the walk would pass the
        sentinel and leave a negative length). The blocks' `next` links are left chaining
        them (an unlinked block's `next` means nothing), so that `unpop_many` can put them
        back."""
        if not 0 <= count <= self._size:
            raise ValueError(f"pop_many({count}) on a queue of {self._size}")
        nxt, prv, s = self._next, self._prev, self._sentinel
        out = [0] * count
        b = nxt[s]
        i = -1
        try:  # (`next[sentinel]` still names the first: an interrupt relinks those unlinked)
            for i in range(count):
                out[i] = b
                prv[b] = -1
                b = nxt[b]
        except BaseException:
            until_done(self._unpop, out[: i + 1], b)
            raise
        nxt[s] = b
        prv[b] = s
        self._size -= count
        return out

    def unpop_many(self, popped: list[int]) -> None:
        """Take back the last `pop_many`, which returned `popped`: relink them at the head,
        in order (before the block the last one's `next` still names: pop_many leaves
        the links). For an owner whose work after the pop was cut (the pool's `allocate`).
        Idempotent until it returns (the length is its last store)."""
        if popped:
            self._unpop(popped, self._next[popped[-1]])
            self._size += len(popped)

    def _unpop(self, popped: list[int], b: int) -> None:
        """Relink the blocks `pop_many` unlinked, `popped`, before `b` (the first it left).
        Idempotent (each store sets a link to its final value)."""
        nxt, prv = self._next, self._prev
        p = self._sentinel
        for x in popped:
            nxt[p] = x
            prv[x] = p
            p = x
        nxt[p] = b
        prv[b] = p
