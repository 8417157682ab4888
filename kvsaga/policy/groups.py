"""Evictable blocks grouped by owner session: the base of the session-aware policies.

Every CACHED block of the GPU tier is in exactly one of three places:

- its owner session's group (`view.block_owner[b]` is a live session): a list of
  (-position, block), sorted, so the tail is the first entry and the head the last. That
  order makes the two hottest updates O(1): a step's release caches blocks tail first
  (appends), and a resume's hits reclaim them head first (pops);
- `dead`: private blocks of a session that has ended (FIFO, each session's tail first).
  Nobody is expected to reuse them, so every policy here evicts them first;
- `plain`: cache owned by no session (a prefix shared by several sessions, or anything
  hit again after its session ended), in LRU order.

A victim search merges one lazy stream per group (a session's blocks tail first, the dead
queue, the plain queue), each yielding (key, block); the lowest key goes first. A call costs
O(sessions + victims * log(sessions)) key computations, not O(blocks).

Invariants (checked by `check_integrity`):
- the tracked blocks are exactly the pool's CACHED blocks;
- a block sits in one place; groups are sorted and never empty.
The one ownership change the pool does not report is `end_session` turning a session's
blocks into plain cache: `session_ended` moves the session's group to `dead`, and the
blocks its release caches right after are routed there too.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from kvsaga.block_queue import BlockQueue
from kvsaga.policy.base import BlockView, EvictionPolicy
from kvsaga.policy.cost import CostModel, PrefillCost
from kvsaga.session import PauseHint

if TYPE_CHECKING:
    from kvsaga.session import Session

UNTRACKED, DEAD, PLAIN, OWNED = 0, 1, 2, 3

Stream = Iterator[tuple[Any, int]]


class SessionView:
    """What a policy remembers of a live session between hooks.

    `running` is True from `step_started` to `step_finished`; a running session with cached
    blocks was preempted (the manager tells policies nothing then) and is about to retry.
    `imminent` is True from `resume_hinted` (its tool returned) to its next step.
    """

    __slots__ = ("workflow", "tool", "paused_at", "hint", "running", "imminent")

    def __init__(self, workflow: str) -> None:
        self.workflow = workflow
        self.tool: str | None = None
        self.paused_at = 0.0
        self.hint = PauseHint()
        self.running = True
        self.imminent = False

    @property
    def needed_now(self) -> bool:
        """Its blocks will be read as soon as the scheduler gets to it."""
        return self.running or self.imminent


class GroupedPolicy(EvictionPolicy):
    """Tracks evictable blocks per owner session; subclasses give the keys.

    Subclasses define `_session_key`, `_plain_key` and `_dead_key` (or override the
    `_*_stream` methods for keys computed once per group), and may use `_prepare` to compute
    per-call constants. Lower keys are evicted first; keys of one policy must be comparable.

    Args:
        cost: prices rebuilding and reloading (default: `PrefillCost`).
    """

    name = "grouped"

    def __init__(self, cost: CostModel | None = None) -> None:
        super().__init__()
        self.cost: CostModel = cost if cost is not None else PrefillCost()
        self.views: dict[str, SessionView] = {}
        self.groups: dict[str, list[tuple[int, int]]] = {}  # sid -> [(-position, block)]
        self._now = 0.0
        self._ending: str | None = None

    def bind(self, view: BlockView) -> None:
        super().bind(view)
        n = view.num_gpu_blocks
        self.block_size = view.block_size
        self._where = bytearray(n)
        self._owner: list[str | None] = [None] * n
        self._pos = [0] * n
        self._cached_at = [0.0] * n
        self.plain = BlockQueue(n)
        self.dead = BlockQueue(n)
        self._block_costs: list[float] = []

    def _touch(self, now: float) -> None:
        # Any hook but the pool's own ends the release that follows an end_session.
        self._now = now
        self._ending = None

    # -- pool observer ------------------------------------------------------------------------
    def block_cached(self, block_id: int) -> None:
        v = self.view
        owner = v.block_owner[block_id]
        pos = v.block_position[block_id]
        self._pos[block_id] = pos
        self._cached_at[block_id] = self._now
        if owner is None:
            self.plain.push(block_id)
            self._where[block_id] = PLAIN
        elif owner == self._ending:
            self.dead.push(block_id)
            self._where[block_id] = DEAD
        else:
            key = (-pos, block_id)
            g = self.groups.get(owner)
            if g is None:
                self.groups[owner] = [key]
            elif g[-1] < key:
                g.append(key)  # the usual case: released tail first
            else:
                insort(g, key)
            self._owner[block_id] = owner
            self._where[block_id] = OWNED

    def block_uncached(self, block_id: int) -> None:
        w = self._where[block_id]
        if w == OWNED:
            sid = self._owner[block_id]
            g = self.groups[sid]
            key = (-self._pos[block_id], block_id)
            if g[-1] == key:
                g.pop()  # the usual case: hits reclaim a context head first
            else:
                del g[bisect_left(g, key)]
            if not g:
                del self.groups[sid]
            self._owner[block_id] = None
        elif w == PLAIN:
            self.plain.remove(block_id)
        elif w == DEAD:
            self.dead.remove(block_id)
        self._where[block_id] = UNTRACKED

    # -- session lifecycle --------------------------------------------------------------------
    def step_started(self, session: Session, now: float) -> None:
        self._touch(now)
        v = self.views.get(session.session_id)
        if v is None:
            v = self.views[session.session_id] = SessionView(session.workflow)
        v.running = True
        v.imminent = False

    def step_finished(self, session: Session, now: float, hint: PauseHint) -> None:
        self._touch(now)
        v = self.views.get(session.session_id)
        if v is None:
            v = self.views[session.session_id] = SessionView(session.workflow)
        v.running = False
        v.imminent = False
        v.tool = hint.tool
        v.hint = hint
        v.paused_at = now

    def pause_hinted(self, session: Session, now: float, hint: PauseHint) -> None:
        self._touch(now)
        v = self.views.get(session.session_id)
        if v is not None and not v.running:
            v.hint = hint
            if hint.tool is not None:
                v.tool = hint.tool

    def resume_hinted(self, session: Session, now: float) -> None:
        self._touch(now)
        v = self.views.get(session.session_id)
        if v is not None and not v.running:
            v.imminent = True

    def session_ended(self, session: Session, now: float) -> None:
        self._touch(now)
        sid = session.session_id
        self.views.pop(sid, None)
        for _, b in self.groups.pop(sid, []):  # tail first
            self.dead.push(b)
            self._where[b] = DEAD
            self._owner[b] = None
        self._ending = sid

    def tick(self, now: float) -> None:
        self._touch(now)

    # -- victims ------------------------------------------------------------------------------
    def choose_victims(self, num_blocks: int, now: float) -> list[int]:
        self._touch(now)
        if num_blocks <= 0:
            return []
        streams = self._streams(now)
        try:
            return [b for _, b in islice(heapq.merge(*streams), num_blocks)]
        finally:
            for s in streams:
                s.close()

    def eviction_order(self, now: float | None = None) -> list[int]:
        """Every evictable block, first victim first (for tests and debugging)."""
        now = self._now if now is None else now
        streams = self._streams(now)
        try:
            return [b for _, b in heapq.merge(*streams)]
        finally:
            for s in streams:
                s.close()

    def _streams(self, now: float) -> list[Stream]:
        self._prepare(now)
        out: list[Stream] = []
        if len(self.dead):
            out.append(self._dead_stream(now))
        if len(self.plain):
            out.append(self._plain_stream(now))
        for sid, g in self.groups.items():
            out.append(self._session_stream(sid, g, now))
        return out

    def _prepare(self, now: float) -> None:
        """Compute per-call constants before the streams are read."""

    def _dead_stream(self, now: float) -> Stream:
        for b in self.dead:
            yield self._dead_key(b, now), b

    def _plain_stream(self, now: float) -> Stream:
        for b in self.plain:
            yield self._plain_key(b, now), b

    def _session_stream(self, sid: str, group: list[tuple[int, int]], now: float) -> Stream:
        for neg_pos, b in group:  # tail first: the survivors stay a usable prefix
            yield self._session_key(sid, b, -neg_pos, now), b

    def _session_key(self, sid: str, block_id: int, position: int, now: float) -> Any:
        raise NotImplementedError

    def _plain_key(self, block_id: int, now: float) -> Any:
        raise NotImplementedError

    def _dead_key(self, block_id: int, now: float) -> Any:
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------------
    def usage(self) -> float:
        """Share of GPU blocks referenced by running steps (`CacheStats.usage`)."""
        return self.view.usage()

    def block_cost(self, position: int) -> float:
        """Seconds to rebuild the block at `position` of a context whose head survives."""
        memo = self._block_costs  # victim searches price the same positions over and over
        if position >= len(memo):
            bs, cost = self.block_size, self.cost
            memo.extend(cost.recompute_s(bs, p * bs) for p in range(len(memo), position + 1))
        return memo[position]

    def group_cost(self, group: list[tuple[int, int]]) -> float:
        """Seconds to rebuild a session's cached blocks (from its first cached position)."""
        bs = self.block_size
        return self.cost.recompute_s(len(group) * bs, -group[-1][0] * bs)

    def idle_s(self, sid: str, now: float) -> float:
        """Seconds a paused session has waited (0 when running or unknown)."""
        v = self.views.get(sid)
        return 0.0 if v is None or v.needed_now else max(now - v.paused_at, 0.0)

    def check_integrity(self) -> None:
        """Verify that the tracked blocks are exactly the pool's CACHED blocks."""
        view = self.view
        seen: dict[int, int] = {}
        for sid, g in self.groups.items():
            assert g, f"empty group for session {sid!r}"
            assert g == sorted(g), f"group of {sid!r} is not sorted tail first"
            for _, b in g:
                assert self._owner[b] == sid and self._where[b] == OWNED, f"block {b} misfiled"
                seen[b] = OWNED
        for where, q in ((PLAIN, self.plain), (DEAD, self.dead)):
            for b in q:
                assert b not in seen and self._where[b] == where, f"block {b} misfiled"
                seen[b] = where
        for b in range(view.num_gpu_blocks):
            cached = view.is_cached(b)
            assert cached == (b in seen), (
                f"block {b}: {'' if cached else 'not '}CACHED but "
                f"{'' if b in seen else 'un'}tracked"
            )
            assert (self._where[b] != UNTRACKED) == cached, f"block {b}: stale place"
