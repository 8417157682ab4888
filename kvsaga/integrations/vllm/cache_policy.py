"""KVSagaCachePolicy: agent-aware eviction for vLLM's CPU offload tier.

vLLM's `OffloadingConnector` copies KV blocks to CPU memory in chunks and, when that memory
is full, asks its `CachePolicy` which chunks to drop (built in: LRU, ARC). This policy hands
that choice to a kvsaga policy: a chunk belongs to the agent session whose request stored or
reused it (a chunk two sessions use is shared, plain cache), at its position in that context;
the request's `kv_transfer_params["kvsaga"]` hint says which tool the session now waits on,
for how long, or that it ended. Chunks of ended sessions go first, then (by the kvsaga
policy's rule) the least valuable paused contexts, tails before heads.

Enable it through the offloading connector's extra config, e.g.
`{"kv_connector": "OffloadingConnector", "kv_role": "kv_both", "kv_connector_extra_config":
{"cpu_bytes_to_use": ..., "eviction_policy": "KVSagaCachePolicy",
"cache_policy_module_path": "kvsaga.integrations.vllm.cache_policy"}}`.
`KVSagaCachePolicy` ranks with kvsaga's `ttl` policy; `KVSagaGraphCachePolicy` with `graph`.

A session's requests in flight together (vLLM's n > 1 children, concurrent steps) are one
step, from the first one's `touch` to the last one's finish (`_running`, by request id);
vLLM calls the policy for a request first at its first store miss, so a child that stores
nothing is seen at its finish only, and one first seen after its sibling ended the step (at
its finish, or at a store of its own output) adds no step (`_late`), nor joins or ends
the session's next step (or, its step the session's last, the reused id's new session;
review s55 vleft4). A request
that read and offered no chunk (aborted before it ran: vLLM tells the tier of every
finished request) is no step either, unless `last_step` (it still ends the session).
docs/integrations.md (CPU offload) says what that leaves.

A paused session none of whose chunks is left (all evicted, or none stored) is forgotten
(`session_forgotten`): a client that sends only its session id never says which step is the
last, and 20,000 such sessions kept 20,000 records here and in the kvsaga policy. Forgotten,
not ended: nothing says it was abandoned, so the kvsaga policy learns no abandonment from it
(ended while paused, it counted as one, lowering the resume odds its tool's paused sessions
are ranked by). A later step of the id starts again as a new session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from vllm.logger import init_logger
from vllm.v1.kv_offload.base import OffloadKey, ReqContext
from vllm.v1.kv_offload.cpu.policies.base import CachePolicy, ChunkStatus, order_request_keys

from kvsaga.integrations.vllm.hints import StepInfo, session_for, step_info
from kvsaga.integrations.vllm.ledger import BlockLedger
from kvsaga.policy import make_policy
from kvsaga.session import Session

logger = init_logger(__name__)

# Tokens per chunk, for the policy's rebuild cost; only the relative cost of positions matters.
CHUNK_TOKENS = 16
# Ended sessions remembered (their late chunks file as shared cache), most recent kept.
ENDED_TRACKED = 4096
# n > 1 requests remembered per session whose step ended (their late children add no
# step: `_late`), most recent kept.
PARENTS_KEPT = 4


class KVSagaCachePolicy(CachePolicy):
    """A vLLM `CachePolicy` whose evictions a kvsaga policy orders (see the module docstring).

    Args:
        cache_capacity: number of CPU chunks (chunk ids are 0 .. cache_capacity - 1).
    """

    policy_name = "ttl"  # explicit: KVSagaGraphCachePolicy is the graph one

    def __init__(self, cache_capacity: int) -> None:
        super().__init__(cache_capacity)
        # Seconds the policy judges pauses by; a replay on a simulated clock replaces it
        # (bench/vllm_offload_sim.py), as it does the connector's.
        self.clock: Callable[[], float] = time.monotonic
        self._reset()

    def _reset(self) -> None:
        self.chunks: dict[OffloadKey, ChunkStatus] = {}
        self._key_of: dict[int, OffloadKey] = {}  # chunk id -> key
        self._owner: dict[OffloadKey, tuple[str | None, int]] = {}  # key -> (session, position)
        self._owned: dict[str, int] = {}  # session -> its chunks (in `_owner`)
        self._sessions: dict[str, Session] = {}
        # session -> its requests (`ReqContext.req_id`) between their first `touch` and their
        # finish: one step of the session (vLLM's n > 1 children, or concurrent steps)
        self._running: dict[str, set[str]] = {}
        self._orphans: set[str] = set()  # requests in flight when their session ended
        # session -> the n > 1 requests (parent ids; PARENTS_KEPT latest) one of whose
        # children ended a step of it: whether that child (or a later one) ended the session,
        # for the ENDED_TRACKED latest sessions (their late children add no step: `_late`)
        self._step_parent: dict[str, dict[str, bool]] = {}
        self._ended: dict[str, None] = {}  # ended session ids, oldest first (a bounded set)
        self.policy = make_policy(self.policy_name)
        self.ledger = BlockLedger(self.policy, self.cache_capacity, CHUNK_TOKENS, self._usage)

    def _usage(self) -> float:
        """Share of chunks pinned by transfers in flight (the rest are evictable)."""
        return (len(self.chunks) - self.ledger.num_cached) / self.cache_capacity

    # -- CachePolicy --------------------------------------------------------------------------
    def get(self, key: OffloadKey) -> ChunkStatus | None:
        return self.chunks.get(key)

    def insert(self, key: OffloadKey, chunk: ChunkStatus) -> None:
        self.chunks[key] = chunk
        self._key_of[chunk.chunk_id] = key
        if chunk.ref_cnt == 0:
            self._track(key)

    def remove(self, key: OffloadKey) -> None:
        chunk = self.chunks.pop(key)
        del self._key_of[chunk.chunk_id]
        if self.ledger.is_cached(chunk.chunk_id):
            self.ledger.uncache(chunk.chunk_id)
        owner = self._owner.pop(key, (None, 0))[0]
        if owner is not None and self._disown(owner) == 0:
            self._forget_if_idle(owner)

    def touch(self, keys: Iterable[OffloadKey], req_context: ReqContext) -> None:
        """A request reads or offers these chunks: its session's step has begun (with the
        first of the session's requests in flight together: they are one step)."""
        info = self._info(req_context)
        rid = req_context.req_id
        if info is None or rid in self._orphans:
            return
        sid = info.session_id
        running = self._running.get(sid)
        if running is not None and rid in running:
            return  # (touched before)
        late = self._late(sid, rid)
        if late is not None:
            # Its sibling ended the step (or, `last_step`, the session) before its first store:
            # it adds no step (its chunks are filed at its finish), nor joins the session's
            # next step, nor starts the ended id again (or joins the reused id's new session).
            if late:
                self._orphans.add(rid)
            return
        # A step of an id whose session ended is a new session of that id.
        self._ended.pop(sid, None)
        if running is None:
            running = self._running[sid] = set()
            self.policy.step_started(session_for(self._sessions, info), self.clock())
        running.add(rid)

    def on_request_finished(
        self,
        key_groups: Sequence[Sequence[OffloadKey]],
        insertion_only_keys: set[OffloadKey],
        reused_keys: set[OffloadKey],
        req_context: ReqContext,
    ) -> None:
        """File the request's chunks under its session, then pause or end the session (with
        the last of its requests in flight together; a `last_step` one ends it at once, and
        the others are of no session from then on)."""
        info = self._info(req_context)
        keys = order_request_keys(key_groups, req_context)
        rid = req_context.req_id
        running = None if info is None else self._running.get(info.session_id)
        # (one that joined its step is none: `touch` lets no late child join)
        late = (None if info is None or (running is not None and rid in running)
                else self._late(info.session_id, rid))
        orphan = rid in self._orphans or bool(late)  # (late: its session ended)
        self._orphans.discard(rid)
        sid = (None if info is None or orphan or info.session_id in self._ended
               else info.session_id)
        for pos, key in enumerate(keys):
            if key not in self.chunks:  # never stored (no room, below the store threshold,
                continue  # a failed store) or evicted since: nothing to file
            owner = self._owner.get(key, (sid, pos))[0]
            new_owner = sid if owner == sid else None  # two sessions' chunk is shared cache
            self._file(key, new_owner, pos)
        if info is None or sid is None:
            return
        if running is None and not keys and not info.hint.last_step:
            # It neither read nor offered a chunk: aborted before it ran (vLLM tells the
            # tier of every finished request), or a context under one chunk, which owns
            # nothing here. No step: a step of its own moved the session's pause to the
            # abort, and the client's resend was learned as a pause of the hinted tool as
            # short as the resend gap (review s54 vleft3).
            return
        if late is not None and (sid in self._sessions or sid not in self._owned):
            return  # (its chunks are the session's; its step ended)
        # (a late child whose session was forgotten, filing chunks under it now: a step of
        # its own, as a later step of a forgotten id, gives them a session to be kept for)
        now = self.clock()
        session = session_for(self._sessions, info)
        if running is not None:
            running.discard(rid)
        elif keys:  # none touched: a step of its own (it read chunks the tier held, and
            self.policy.step_started(session, now)  # stored none)
        # (else a last_step request that read and offered nothing, aborted before it ran:
        # the session ends with no step, as the retention connector ends it; review s54
        # diffvleft3 LOW-1)
        if info.hint.last_step:
            self._orphans.update(self._running.pop(sid, ()))
            self._end_step(sid, rid, True)  # (its request's later children are orphans)
            self.policy.session_ended(session, now)
            self._ended[sid] = None
            if len(self._ended) > ENDED_TRACKED:
                del self._ended[next(iter(self._ended))]
            for key, (owner, pos) in list(self._owner.items()):
                if owner == sid:
                    self._owner[key] = (None, pos)
            self._owned.pop(sid, None)
            self._sessions.pop(sid, None)
        elif running:
            return  # others of its step still run: the step finishes with the last
        else:
            self._running.pop(sid, None)
            self._end_step(sid, rid, False)
            self.policy.step_finished(session, now, info.hint)
            self._forget_if_idle(sid)  # (its step stored nothing, or it was evicted since)

    def evict(
        self, n: int, protected: set[OffloadKey]
    ) -> list[tuple[OffloadKey, ChunkStatus]] | None:
        if n == 0:
            return []
        key_of = self._key_of
        victims = [
            key_of[c]
            for c in self.policy.choose_victims(n + len(protected), self.clock())
            if key_of[c] not in protected
        ][:n]
        if len(victims) < n:
            return None  # atomic: nothing changed
        out = []
        for key in victims:
            chunk = self.chunks[key]
            self.remove(key)
            out.append((key, chunk))
        return out

    def clear(self) -> None:
        self._reset()

    def mark_evictable(self, key: OffloadKey) -> None:
        self._track(key)

    def mark_non_evictable(self, key: OffloadKey) -> None:
        self.ledger.uncache(self.chunks[key].chunk_id)

    # -- bookkeeping --------------------------------------------------------------------------
    def _info(self, req_context: ReqContext) -> StepInfo | None:
        try:
            return step_info(req_context.kv_transfer_params)
        except ValueError as e:  # a malformed hint must not fail vLLM's request: plain cache
            logger.warning("kvsaga: ignoring request %s's hint: %s", req_context.req_id, e)
            return None

    def _end_step(self, sid: str, rid: str, session_ended: bool) -> None:
        """Request `rid` ended session `sid`'s step (`session_ended`: the session): remember
        its n > 1 request, if it is a child of one, for `_late` (PARENTS_KEPT a session,
        ENDED_TRACKED sessions); a session's end ends the steps of those remembered too."""
        parent = _parent(rid)
        parents = self._step_parent.pop(sid, None)  # (re-inserted last: oldest first)
        if parents is None:
            if parent is None:
                return
            parents = {}
        if session_ended:
            parents = dict.fromkeys(parents, True)
        if parent is not None:
            parents.pop(parent, None)
            parents[parent] = session_ended
            if len(parents) > PARENTS_KEPT:
                del parents[next(iter(parents))]
        self._step_parent[sid] = parents
        if len(self._step_parent) > ENDED_TRACKED:
            del self._step_parent[next(iter(self._step_parent))]

    def _late(self, sid: str, rid: str) -> bool | None:
        """Whether request `rid` of session `sid`, not in a step of it, is a late child:
        another child of its n > 1 request ended a step of the session (False), or that
        step or a later one ended the session (True); None if not. A child that stores no
        chunk of its own (vLLM offloads prompts only by default, and the children share
        theirs) never reaches `touch`, and one whose first store of its own comes after its
        sibling finished reaches it late, perhaps after the session's next step began (or
        the reused id's new session); either way its step ended with the first child to
        finish, and the later ones neither add a step (each was a step of its own: n steps,
        and pauses as short as the gaps between the children's finishes) nor join or end
        another (review s55 vleft4: one joined the next step, which then ended with it, or
        ended the reused id's new session). Its chunks are filed under the session all the
        same (as shared cache if the session ended)."""
        parent = _parent(rid)
        return None if parent is None else self._step_parent.get(sid, {}).get(parent)

    def _track(self, key: OffloadKey) -> None:
        owner, pos = self._owner.get(key, (None, 0))
        self.ledger.cache(self.chunks[key].chunk_id, owner, pos)

    def _file(self, key: OffloadKey, owner: str | None, pos: int) -> None:
        """Record a chunk's owner and position (re-filing it if it is evictable now)."""
        old = self._owner.get(key)
        if old == (owner, pos):
            return
        self._owner[key] = (owner, pos)
        if owner is not None:
            self._owned[owner] = self._owned.get(owner, 0) + 1
        if old is not None and old[0] is not None and self._disown(old[0]) == 0:
            self._forget_if_idle(old[0])  # its last chunk is shared cache now
        chunk = self.chunks.get(key)
        if chunk is not None and self.ledger.is_cached(chunk.chunk_id):
            self.ledger.refile(chunk.chunk_id, owner, pos)

    def _disown(self, sid: str) -> int:
        """One chunk of `sid` is no longer its; returns how many it has left."""
        n = self._owned.get(sid, 0) - 1
        if n > 0:
            self._owned[sid] = n
        else:
            self._owned.pop(sid, None)
        return max(n, 0)

    def _forget_if_idle(self, sid: str) -> None:
        """Forget paused session `sid` (its record and the kvsaga policy's) if none of its
        chunks is left (see the module docstring)."""
        if sid in self._owned or sid in self._running:
            return
        session = self._sessions.pop(sid, None)
        if session is not None:  # not seen to end: no abandonment to learn
            self.policy.session_forgotten(session, self.clock())


def _parent(req_id: str) -> str | None:
    """The request whose n > 1 child `req_id` is (vLLM names a child `{index}_{parent id}`:
    `vllm.v1.engine.parallel_sampling.ParentRequest.get_child_info`), or None."""
    head, sep, rest = req_id.partition("_")
    return rest if sep and rest and head.isdigit() else None


class KVSagaGraphCachePolicy(KVSagaCachePolicy):
    """`KVSagaCachePolicy` ranked by kvsaga's `graph` policy (expected loss from the AEG)."""

    policy_name = "graph"
