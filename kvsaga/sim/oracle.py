"""`TraceOracle`: the future of a trace replay, for the offline policies (`belady`,
`oracle-ttl`).

It implements `kvsaga.policy.FutureOracle.next_use(session_id, block_hash, position, now)`:
the earliest time >= `now` at which a step will read the block, or inf. The simulator tells
it what happens (`released`, `started`, `preempted`, `finished`, `ended`), so it answers with
simulated times where they are known and with the trace's times where they are not:

- a session's own block (`session_id` given, or a plain block whose hash only that live
  session's context holds): needed `now` while the session is waiting or running (a
  preempted step is requeued); while it is paused, at its next step's ready time (the step
  finished at f, so f + tool_s: known from the moment it pauses). Its next prompt extends its
  context, so it contains every block of it. inf once the session has ended.
- a block of a shared prefix (plain, by content hash): the earliest of `now` if a session of
  its prefix group (same tenant and prefix) is waiting, the ready time of any paused session
  of the group, and the trace's `arrival_s` of the group's next session not yet arrived.
  Every step of a session reads every full block of its prefix.
- anything else (a dead session's blocks, unhashed tails of ended sessions): inf.

Stability (the contract): paused ready times and arrivals are fixed, and `now` answers pass
as soon as time moves, so an answer holds while `now` stays below it. The one exception is a
*running* session of a prefix group that does not hold the cached prefix block (its chain
broke at an earlier block, so it computed its own unindexed copy): its next use of the block
is unknown until it pauses, so it is left out of the group's answer until then.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections.abc import Sequence

from kvsaga.prefix import BlockHasher, root_hash
from kvsaga.sim.tokens import TokenSynthesizer
from kvsaga.sim.trace import Session

_WAITING, _RUNNING, _PAUSED, _ENDED = 0, 1, 2, 3

GroupKey = tuple[str | None, str, int]  # (tenant, prefix group, prefix tokens)


def _key(s: Session) -> GroupKey:
    return (s.tenant, s.shared_prefix.group, s.shared_prefix.tokens)


class TraceOracle:
    """Knows the trace and follows the replay (see the module docstring).

    Args:
        sessions: the trace being replayed.
        block_size: tokens per KV block (the manager's).
        synth: the token synthesizer the simulator uses (the prefix ids must match).
    """

    def __init__(self, sessions: Sequence[Session], block_size: int,
                 synth: TokenSynthesizer | None = None) -> None:
        self.block_size = block_size
        synth = synth if synth is not None else TokenSynthesizer()
        self._sessions = {s.id: s for s in sessions}
        self._state: dict[str, int] = {}
        self._ready: dict[str, float] = {}
        self._arrivals: dict[GroupKey, list[float]] = {}
        self._waiting: dict[GroupKey, int] = {}
        self._paused: dict[GroupKey, list[tuple[float, str]]] = {}  # lazy min-heap
        self._prefix: dict[bytes, list[GroupKey]] = {}
        self._own: dict[bytes, str] = {}
        self._own_hashes: dict[str, list[bytes]] = {}
        hasher = BlockHasher(block_size)
        for s in sessions:
            key = _key(s)
            self._arrivals.setdefault(key, []).append(s.arrival_s)
            if key in self._waiting:
                continue
            self._waiting[key] = 0
            self._paused[key] = []
            n = s.shared_prefix.tokens // block_size * block_size
            hashes: list[bytes] = []
            hasher.extend(hashes, root_hash(s.tenant),
                          synth.prefix_ids(s.shared_prefix.group, n).tolist())
            for h in hashes:
                self._prefix.setdefault(h, []).append(key)
        for times in self._arrivals.values():
            times.sort()

    # -- what the simulator reports --------------------------------------------------------
    def released(self, session_id: str) -> None:
        """A step of the session became ready (arrival, or its tool returned): it waits."""
        self._set(session_id, _WAITING)

    def started(self, session_id: str) -> None:
        """The session's step was admitted (`begin_step`)."""
        self._set(session_id, _RUNNING)

    def preempted(self, session_id: str) -> None:
        """The session's running step was preempted and requeued."""
        self._set(session_id, _WAITING)

    def finished(self, session_id: str, now: float, tool_s: float) -> None:
        """A step ended at `now`; the next one is ready at `now + tool_s`."""
        ready = now + tool_s
        self._set(session_id, _PAUSED)
        self._ready[session_id] = ready
        heapq.heappush(self._paused[_key(self._sessions[session_id])], (ready, session_id))

    def ended(self, session_id: str) -> None:
        """The session's last step ended."""
        self._set(session_id, _ENDED)
        self._ready.pop(session_id, None)
        own = self._own
        for h in self._own_hashes.pop(session_id, ()):
            if own.get(h) == session_id:
                del own[h]

    def note_hashes(self, session_id: str, hashes: Sequence[bytes]) -> None:
        """The session's context has these block hashes (a prefix of them may be noted
        already); lets a plain block of a live session be traced back to it."""
        mine = self._own_hashes.setdefault(session_id, [])
        own, prefix = self._own, self._prefix
        for h in hashes[len(mine):]:
            mine.append(h)
            if h not in prefix:
                own[h] = session_id

    def is_waiting(self, session_id: str) -> bool:
        """Whether the session's next step is released and waits for admission."""
        return self._state.get(session_id) == _WAITING

    def _set(self, session_id: str, state: int) -> None:
        key = _key(self._sessions[session_id])
        old = self._state.get(session_id)
        if old == _WAITING:
            self._waiting[key] -= 1
        if state == _WAITING:
            self._waiting[key] += 1
        self._state[session_id] = state

    # -- FutureOracle ----------------------------------------------------------------------
    def next_use(self, session_id: str | None, block_hash: bytes | None, position: int,
                 now: float) -> float:
        """The earliest time >= now at which a step reads the block; inf if none will.

        Args:
            session_id: the block's owner session, None for plain cache.
            block_hash: its content hash (None for a partial tail).
            position: its block index in its context (unused: every later step of a session
                reads its whole context).
            now: the current time.

        Returns:
            Seconds since the start of the trace, or math.inf.
        """
        if session_id is None:
            if block_hash is None:
                return math.inf
            session_id = self._own.get(block_hash)
            if session_id is None:
                return self._prefix_next(block_hash, now)
        # A shared-prefix block one session still owns is read by its group's next step too,
        # which may come before the owner's.
        return min(self._session_next(session_id, now), self._prefix_next(block_hash, now))

    def _prefix_next(self, block_hash: bytes | None, now: float) -> float:
        keys = self._prefix.get(block_hash) if block_hash is not None else None
        return min((self._group_next(k, now) for k in keys), default=math.inf) \
            if keys else math.inf

    def _session_next(self, session_id: str, now: float) -> float:
        state = self._state.get(session_id)
        if state == _PAUSED:
            return max(self._ready[session_id], now)
        if state in (_WAITING, _RUNNING):
            return now
        if state is None and session_id in self._sessions:  # not arrived yet
            return max(self._sessions[session_id].arrival_s, now)
        return math.inf

    def _group_next(self, key: GroupKey, now: float) -> float:
        if self._waiting[key]:
            return now
        best = math.inf
        heap = self._paused[key]
        while heap:
            ready, sid = heap[0]
            if self._state.get(sid) == _PAUSED and self._ready.get(sid) == ready:
                best = max(ready, now)
                break
            heapq.heappop(heap)  # that pause is over
        times = self._arrivals[key]
        i = bisect_left(times, now)
        if i < len(times):
            best = min(best, times[i])
        return best
