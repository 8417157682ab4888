"""An intrusive doubly linked queue over integer block ids.

Links live in two preallocated lists indexed by block id, so push, remove and pop are
O(1) and allocate no objects. Index `capacity` is the sentinel: `next[sentinel]` is the
head (oldest), `prev[sentinel]` the tail (newest). A block is linked iff
`prev[b] != -1`. The pool's free queue and the LRU policy's order are both one of these.
"""

from __future__ import annotations

from collections.abc import Iterator
from operator import length_hint


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
        if prv[block_id] != -1:
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
        two blocks (or after the loop) unlinks the batch again: nothing changed."""
        if not block_ids:
            return
        nxt, prv, s = self._next, self._prev, self._sentinel
        tail = start = prv[s]
        try:
            for b in block_ids:
                if prv[b] != -1:
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
            self._unpush(start, tail)
            raise
        done = self._unpush(start, tail)
        raise ValueError(f"block {b} appears twice" if b in done else
                         f"block {b} is already queued")

    def _unpush(self, start: int, tail: int) -> list[int]:
        """Unlink what `push_many` linked (`start`'s successors up to `tail`), the old tail
        `start` the tail again; returns those blocks."""
        nxt, prv, s = self._next, self._prev, self._sentinel
        done = []
        b = start
        while b != tail:
            b = nxt[b]
            done.append(b)
        for b in done:
            prv[b] = nxt[b] = -1
        nxt[start] = s
        prv[s] = start
        return done

    def remove_many(self, block_ids: list[int]) -> None:
        """Unlink linked blocks, none named twice (ValueError, nothing changed). The check is
        the unlink loop's own (`prev` -1: not linked, or unlinked earlier in this batch), and
        `next` is left as it was (an unlinked block's `next` means nothing) so that a refusal
        can relink what the loop had unlinked. An interrupt between two blocks (or after
        the loop) relinks them so, as does a bad id's IndexError or TypeError: nothing
        changed."""
        nxt, prv = self._next, self._prev
        it = iter(block_ids)
        try:
            for b in it:
                p = prv[b]
                if p == -1:
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
            self._unremove(block_ids, given)
            raise
        stop = len(block_ids) - length_hint(it) - 1
        self._unremove(block_ids, stop)
        bad = block_ids[stop]
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
        dancing links)."""
        nxt, prv = self._next, self._prev
        for b in reversed(block_ids[:stop]):
            n = nxt[b]
            p = prv[b] = prv[n]
            nxt[p] = b
            prv[n] = b

    def remove(self, block_id: int) -> None:
        """Unlink a linked block (ValueError for one not linked)."""
        nxt, prv = self._next, self._prev
        if prv[block_id] == -1:
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
        sentinel and leave a negative length)."""
        if not 0 <= count <= self._size:
            raise ValueError(f"pop_many({count}) on a queue of {self._size}")
        nxt, prv, s = self._next, self._prev, self._sentinel
        out = [0] * count
        b = nxt[s]
        i = -1
        try:  # (`next[sentinel]` still names the first: an interrupt relinks those unlinked)
            for i in range(count):
                out[i] = b
                n = nxt[b]
                prv[b] = -1
                nxt[b] = -1
                b = n
        except BaseException:
            self._unpop(out[: i + 1], b)
            raise
        nxt[s] = b
        prv[b] = s
        self._size -= count
        return out

    def _unpop(self, popped: list[int], b: int) -> None:
        """Relink the blocks `pop_many` unlinked, `popped`, before `b` (the first it left)."""
        nxt, prv = self._next, self._prev
        p = self._sentinel
        for x in popped:
            nxt[p] = x
            prv[x] = p
            p = x
        nxt[p] = b
        prv[b] = p
