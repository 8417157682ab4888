"""Offline oracles, for evaluation only: `belady` and `oracle-ttl`.

Both need the future, which only a trace replay knows: they take a `FutureOracle` that the
simulator implements from its trace. Neither is meant for a real server.

- `belady`: evict the block whose next use is farthest in the future; blocks never used
  again first; within a context the tail before the head (ties broken by deeper position).
  Belady's rule is optimal for unit-cost, independent pages; KV blocks are neither (a block
  is useless without its prefix, and costs grow with position), so it is a strong reference,
  not an exact optimum.
- `oracle-ttl`: the `ttl` rule with a perfect predictor: a paused session's blocks are kept
  iff its true resume time falls within its break-even TTL.
"""

from __future__ import annotations

import heapq
import math
import numbers
from typing import Protocol, runtime_checkable

from kvsaga.policy.aeg import ExecutionGraph
from kvsaga.policy.base import Action
from kvsaga.policy.cost import CostModel
from kvsaga.policy.groups import DEAD, OWNED, PLAIN, GroupedPolicy, SessionView
from kvsaga.policy.search import Stream
from kvsaga.policy.ttl import TTLPolicy


@runtime_checkable
class FutureOracle(Protocol):
    """Knows when each cached block will next be read.

    `next_use` returns the earliest time >= `now` at which a step will read the block, or
    `math.inf` when none will: a real number (an int or float; not a bool, not NaN: the
    policy refuses anything else with a TypeError or ValueError naming the block). The
    block is named by what the policy knows of it: its owner session (None for plain cache:
    shared, or left by an ended session), its content hash (None for a session's partial
    tail) and its position in its context.

    Stability contract (the policy caches answers for plain blocks): the answer for a block
    must not change while `now` stays below it, unless the block is cached again.
    """

    def next_use(
        self, session_id: str | None, block_hash: bytes | None, position: int, now: float
    ) -> float: ...


def _check_oracle(oracle: object, name: str) -> FutureOracle:
    if oracle is None or not callable(getattr(oracle, "next_use", None)):
        raise ValueError(f"policy {name!r} needs a FutureOracle (oracle=...), got {oracle!r}")
    return oracle  # type: ignore[return-value]


def _real(nu: object, sid: str | None, block: int, position: int) -> float:
    """An oracle's answer `nu` for `block` that is not a float (or is NaN), checked: a real
    number (not a bool, not NaN) as a float; anything else raises naming the block. Every
    site that asks the oracle checks its answer so (`type(nu) is float and nu == nu`
    passes the usual one at once) before it records anything: an answer kept unchecked
    (the str "5" say) failed only at a later search, part way through it (review s50
    diff-hooks, finding 4)."""
    if isinstance(nu, bool) or not isinstance(nu, numbers.Real):
        raise TypeError(f"oracle next_use for block {block} (session {sid!r}, position "
                        f"{position}) answered {nu!r}, not a real number")
    nu = float(nu)
    if nu != nu:
        raise ValueError(f"oracle next_use for block {block} (session {sid!r}, position "
                         f"{position}) answered NaN")
    return nu


class BeladyPolicy(GroupedPolicy):
    """Farthest next use first (see the module docstring).

    Session blocks ask the oracle at each victim search, lazily, tail first. Plain and dead
    blocks (session_id None) sit in one max-heap of cached answers, refreshed when a block
    is cached again or when its answered time has passed. Every passed answer is refreshed
    before a search reads the heap (`_refresh`, from a min-heap of the answers' times): a
    refresh met only when its entry was popped could rank the block above entries already
    yielded, so the stream was out of order and two reads at the same time disagreed.

    Args:
        oracle: the future.
        cost: prices reloading versus recomputing for the offload decision.
    """

    name = "belady"
    needs_oracle = True

    def __init__(self, oracle: FutureOracle | None = None, cost: CostModel | None = None) -> None:
        super().__init__(cost)
        self.oracle = _check_oracle(oracle, self.name)

    def bind(self, view) -> None:
        super().bind(view)
        self._stamp = [0] * view.num_gpu_blocks
        # (-next_use, -position, block, stamp, asked_at): a max-heap on next use.
        self._heap: list[tuple[float, int, int, int, float]] = []
        # (max(next_use, asked_at), block, stamp) of the finite answers: a min-heap, so the
        # answers whose time has passed are found without a pass over `_heap`.
        self._expiry: list[tuple[float, int, int]] = []

    def _ask(self, sid: str | None, b: int, now: float) -> float:
        nu = self.oracle.next_use(sid, self.view.block_hash[b], self._pos[b], now)
        return nu if type(nu) is float and nu == nu else _real(nu, sid, b, self._pos[b])

    def _push(self, b: int, now: float, nu: float | None = None) -> None:
        """Key plain or dead block `b` by its next use `nu` (None: ask the oracle now)."""
        if nu is None:
            nu = self._ask(None, b, now)
        self._stamp[b] += 1
        heap, expiry = self._heap, self._expiry
        heapq.heappush(heap, (-nu, -self._pos[b], b, self._stamp[b], now))
        if not math.isinf(nu):
            # Keyed no earlier than `now`: an answer before the time it was asked (an oracle
            # outside its contract) is asked again only once time has moved on.
            heapq.heappush(expiry, (max(nu, now), b, self._stamp[b]))
        if len(heap) > 4 * (len(self.plain) + len(self.dead)) + 64:
            # Stale entries leave only when popped: drop them all once they dominate.
            stamp, where = self._stamp, self._where
            heap[:] = [e for e in heap if e[3] == stamp[e[2]] and where[e[2]] in (PLAIN, DEAD)]
            heapq.heapify(heap)
            expiry[:] = [e for e in expiry
                         if e[2] == stamp[e[1]] and where[e[1]] in (PLAIN, DEAD)]
            heapq.heapify(expiry)

    def _refresh(self, now: float) -> None:
        """Ask the oracle again for every plain or dead block whose answered use has passed
        unused (its answer is then >= `now`, so it is not asked again at `now`). Done whole
        before a search: the heap's order is then the order of the current answers."""
        expiry, stamp, where = self._expiry, self._stamp, self._where
        while expiry and expiry[0][0] < now:
            _, b, st = expiry[0]
            if st == stamp[b] and where[b] in (PLAIN, DEAD):
                # asked before the pop: an oracle that raises leaves the entry to ask again
                nu = self._ask(None, b, now)
                heapq.heappop(expiry)
                self._push(b, now, nu)
            else:
                heapq.heappop(expiry)

    def block_cached(self, block_id: int) -> None:
        # A plain or dead block (as `GroupedPolicy.block_cached` files it) is keyed by the
        # oracle, asked before anything is recorded: an oracle that raises (or answers no
        # real number: `_real`) leaves the block untold, as a raising pool hook must
        # (`PoolObserver`).
        v = self.view
        owner = v.block_owner[block_id]
        if owner is not None and owner != self._ending:
            super().block_cached(block_id)
            return
        pos = v.block_position[block_id]
        nu = self.oracle.next_use(None, v.block_hash[block_id], pos, self._now)
        if type(nu) is not float or nu != nu:
            nu = _real(nu, None, block_id, pos)
        super().block_cached(block_id)
        self._push(block_id, self._now, nu)

    def block_uncached(self, block_id: int) -> None:
        super().block_uncached(block_id)
        self._stamp[block_id] += 1  # its heap entry is stale now

    def session_ended(self, session, now: float) -> None:
        # Every block's answer first, then the move to `dead`: an oracle raising part way
        # leaves the group as it was, as a raising hook must (end_session keeps the
        # session). Before, the blocks after the raise were filed dead with no heap entry,
        # never named again (review s50 diff-hooks, finding 3).
        moved = list(self.groups.get(session.session_id, ()))
        answers = [self._ask(None, b, now) for b in moved]
        super().session_ended(session, now)
        for b, nu in zip(moved, answers, strict=True):
            self._push(b, now, nu)

    def _to_dead(self, sid: str, g: list[int], moved: list[int], now: float) -> None:
        # (as session_ended: every answer first, then the move; dead blocks sit in the heap)
        answers = [self._ask(None, b, now) for b in moved]
        super()._to_dead(sid, g, moved, now)
        for b, nu in zip(moved, answers, strict=True):
            self._push(b, now, nu)

    def _plain_stream(self, now: float) -> Stream:
        heap, stamp, where = self._heap, self._stamp, self._where
        taken: list[tuple[float, int, int, int, float]] = []
        try:
            while heap:
                neg_nu, neg_pos, b, st, asked = heapq.heappop(heap)
                if st != stamp[b] or where[b] not in (PLAIN, DEAD):
                    continue  # stale: dropped for good
                entry = (neg_nu, neg_pos, b, st, asked)
                taken.append(entry)
                yield (neg_nu, neg_pos), b
        finally:
            for entry in taken:  # victims turn stale once evicted; the rest stay queued
                heapq.heappush(heap, entry)

    def _dead_stream(self, now: float) -> Stream:
        return iter(())  # dead blocks are in the plain heap

    def _streams(self, now: float) -> list[Stream]:
        self._prepare(now)
        out: list[Stream] = []
        if len(self.dead) or len(self.plain):
            self._refresh(now)  # before any entry is read (see the class docstring)
            out.append(self._plain_stream(now))
        for sid, g in self.groups.items():
            out.append(self._session_stream(sid, g, now))
        return out

    def _session_stream(self, sid: str, group: list[int], now: float) -> Stream:
        pos = self._pos
        for b in group:  # one oracle question per block, asked lazily
            yield (-self._ask(sid, b, now), -pos[b]), b

    def action(self, block_id: int, now: float) -> Action:
        if not self.view.num_host_blocks:
            return Action.DISCARD
        sid = self._owner[block_id] if self._where[block_id] == OWNED else None
        if math.isinf(self._ask(sid, block_id, now)):
            return Action.DISCARD
        if self.cost.reload_s(1) >= self.block_cost(self._pos[block_id]):
            return Action.DISCARD
        return Action.OFFLOAD


class ClairvoyantTTLPolicy(TTLPolicy):
    """`ttl` whose pause predictions are the truth: keep a paused session's blocks iff it
    resumes within its break-even TTL (the offline side of the ski-rental bound).

    Args:
        oracle: the future (the session's tail block's next use is its resume).
        cost, base_ttl_s, max_usage: as `TTLPolicy`.
    """

    name = "oracle-ttl"
    needs_oracle = True
    indexed = False  # the truth moves with time: keys are computed at every search

    def __init__(
        self,
        oracle: FutureOracle | None = None,
        cost: CostModel | None = None,
        graph: ExecutionGraph | None = None,
        base_ttl_s: float = 60.0,
        max_usage: float = 0.95,
    ) -> None:
        super().__init__(cost, graph, base_ttl_s, max_usage)
        self.oracle = _check_oracle(oracle, self.name)

    def _resume_window(
        self,
        sid: str,
        view: SessionView,
        group: list[int],
        elapsed: float,
        window: float,
        now: float,
    ) -> tuple[float, float]:
        tail = group[0]
        nu = self.oracle.next_use(sid, self.view.block_hash[tail], self._pos[tail], now)
        if type(nu) is not float or nu != nu:
            nu = _real(nu, sid, tail, self._pos[tail])
        left = max(nu - now, 0.0)
        return (1.0, left) if left <= window else (0.0, window)
