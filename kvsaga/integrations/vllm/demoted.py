"""The connector's `keep_demoted` bookkeeping: sessions the admission gate's shrink demoted
whose retained blocks stay until memory is needed.

Why keep them: a demoted session often comes back before anything needs its memory, and its
blocks are then prefix hits; why release them first: the gate no longer counts the session
among the admitted working sets, so its blocks are the cheapest room there is. Plain Python
over the connector's own tables (`holds`: session -> retained block ids, head first;
`holders`: block id -> sessions retaining it); the connector drops references itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any


class KeptDemoted:
    """Kept demoted sessions, the oldest demotion first."""

    def __init__(self) -> None:
        self._order: dict[str, None] = {}

    def __contains__(self, sid: object) -> bool:
        return sid in self._order

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def keep(self, sid: str) -> None:
        """The gate demoted `sid`, which holds retained blocks: keep them for now."""
        self._order[sid] = None

    def discard(self, sid: str) -> None:
        """`sid` is released, or admitted again (its blocks are its next step's hits: they go
        back to the policy's order, not first)."""
        self._order.pop(sid, None)

    def room(self, blocks: Sequence[Any], holds: Mapping[str, list[int]],
             holders: Mapping[int, list[str]], exclude: str | None = None) -> int:
        """Distinct retained blocks that kept demoted sessions (not `exclude`, a session
        being admitted) alone hold and no request references (`blocks`: vLLM's, by id): vLLM's
        room in all but name, since any need for memory releases them before anything else.
        A block two of them share counts once."""
        return len({b for sid in self._order if sid != exclude for b in holds.get(sid, ())
                    if self._frees(b, blocks, holders, exclude)})

    def _frees(self, b: int, blocks: Sequence[Any], holders: Mapping[int, list[str]],
               exclude: str | None = None) -> bool:
        """Whether block `b` is kept demoted sessions' alone (not `exclude`'s) and no request
        references it: dropping their references frees it."""
        return (blocks[b].ref_cnt == len(holders[b])
                and all(h in self._order and h != exclude for h in holders[b]))

    def release(self, blocks: Sequence[Any], holders: Mapping[int, list[str]],
                num_free: Callable[[], int], free_wanted: int, holds: dict[str, list[int]],
                drop: Callable[[int, str], None],
                release_session: Callable[[str], None]) -> int:
        """Give back kept sessions' blocks, the oldest demotion first and each session's tail
        first (`drop(block, sid)` one reference, `release_session(sid)` once it holds none),
        until `num_free()` reaches `free_wanted`. Only blocks whose release frees memory go
        (`_frees`): a block a request or a session not kept also holds stays retained, since
        dropping the reference would give up its retention and free nothing, and so do the
        blocks before it (each hold stays a prefix of its context). Returns how
        many blocks the drops freed: a block two kept sessions share is dropped twice and
        freed once (counted twice, the connector's `released_blocks` drifted from vLLM's
        pool: review s51, vconn LOW-4)."""
        released = 0
        for sid in list(self._order):
            if num_free() >= free_wanted:
                break
            mine = holds.get(sid, [])
            # Tail first, and only while the tail frees: past a tail kept in use, dropping a
            # block before it left a hole (vLLM's prefix lookup stops at it), the tail
            # retained for nothing (review s51, vconn LOW-7). The policy's release, which
            # gives such a tail up too, takes the session from there.
            while mine and num_free() < free_wanted and self._frees(mine[-1], blocks, holders):
                b = mine.pop()
                drop(b, sid)
                released += blocks[b].ref_cnt == 0
            if not mine:
                release_session(sid)  # (discards it)
        return released
