"""KVCacheManager: the engine-facing API over block ids. No torch.

The pool, prefix index, hasher and the per-token hot loops (`append_tokens`,
`allocate_slots`, `decode_step`) run in the C++ core when it was built, else in Python, with
identical behaviour (kvsaga/_core.py picks; KVSAGA_CORE overrides).

The life of a step, as an engine drives it:

    start = mgr.begin_step("s1", prompt_ids)        # prefix hits: start.num_cached_tokens
    slots = mgr.allocate_slots("s1", n)             # KV slots for the next n prompt tokens
    ... run the model, write K/V into `slots` ...
    mgr.append_tokens("s1", [sampled]); slots = mgr.allocate_slots("s1", 1)   # decode
    mgr.finish_step("s1", tool="run_tests", expected_s=4.0)   # pause: blocks retained
    ... the tool runs; the policy may evict, offload or keep the session's blocks ...
    mgr.begin_step("s1", prompt_ids + output + observation)   # resume: hits what survived
    mgr.end_session("s1")

Invariants (checked by `check_integrity`):
- a RUNNING session holds one reference on each block of its table;
- every hashed block is in the prefix index under its hash, and only such blocks are;
- a CACHED block either has a hash or is the retained partial tail of a paused session;
- `allocate_slots` either allocates every block it needs or raises and changes nothing.
Full blocks are registered in the prefix index when their slots are allocated: the engine
writes their K/V in the same forward pass, before any attention of that pass reads them; a
pass that fails is taken back by `discard_writes` (unindexed, num_computed back).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from kvsaga._core import get_core
from kvsaga._validate import MAX_TIME_S as _T
from kvsaga._validate import MIN_TIME_S as _NT
from kvsaga._validate import check_bool, check_positive_int, check_str, check_time, is_int
from kvsaga.block_queue import until_done
from kvsaga.config import KVSpec
from kvsaga.errors import InvalidRequest, OutOfBlocks
from kvsaga.host_tier import HostTier, HostTierOps, _chain_last
from kvsaga.manager_evict import EvictionPath
from kvsaga.manager_journal import EvictionJournal
from kvsaga.manager_reads import ManagerReads, ending_error
from kvsaga.manager_rollback import FailedWrites
from kvsaga.manager_signals import SessionSignals
from kvsaga.manager_types import (
    CacheStats,
    StepLookup,
    StepStart,
    _check_token_ids,
    _common_prefix_len,
)
from kvsaga.policy import EvictionPolicy, make_online_policy
from kvsaga.policy.base import check_unbound, unbind
from kvsaga.prefix import root_hash
from kvsaga.session import Session, SessionState

__all__ = ["CacheStats", "KVCacheManager", "StepLookup", "StepStart"]


class KVCacheManager(SessionSignals, ManagerReads, EvictionPath, EvictionJournal, HostTierOps,
                     FailedWrites):
    """Owns the GPU tier's blocks, the prefix index and the sessions (the host tier's
    operations, `prefetch` and `take_transfers` among them, are in kvsaga/host_tier.py; the
    calls that change nothing, `lookup` and `stats` among them, in kvsaga/manager_reads.py;
    the eviction path, `_evict`, in kvsaga/manager_evict.py; the session signals,
    `finish_step` to `end_session`, in kvsaga/manager_signals.py).

    Args:
        spec: shape of a KV block.
        num_gpu_blocks: blocks in the GPU tier.
        policy: eviction policy name ("lru", ...) or instance; an instance serves one
            manager (InvalidRequest for one already bound to another: `check_unbound`).
        clock: time source used when a method's `now` is None. Decisions read time only
            through `now`, so a simulator can drive it.
        max_model_len: longest context in tokens, or None for no limit.
        core: bookkeeping core, "cpp" or "python"; None: by KVSAGA_CORE (kvsaga/_core.py).
    """

    def __init__(
        self,
        spec: KVSpec,
        num_gpu_blocks: int,
        *,
        policy: str | EvictionPolicy = "lru",
        clock: Callable[[], float] = time.monotonic,
        max_model_len: int | None = None,
        num_host_blocks: int = 0,
        core: str | None = None,
    ) -> None:
        max_model_len = check_positive_int("max_model_len", max_model_len, InvalidRequest, True)
        check_positive_int("num_gpu_blocks", num_gpu_blocks, InvalidRequest)  # (the pool's
        # own check would name its `num_blocks`, not this argument)
        if not isinstance(policy, str):
            check_unbound(policy)
        self.spec = spec
        self.block_size = spec.block_size
        self.core = get_core(core)
        self.pool = self.core.BlockPool(num_gpu_blocks, "gpu")
        if not is_int(num_host_blocks) or num_host_blocks < 0:
            raise InvalidRequest(f"num_host_blocks must be an int >= 0, got {num_host_blocks!r}")
        self.num_host_blocks = num_host_blocks
        self.host = HostTier(num_host_blocks) if num_host_blocks else None
        self._host_hit_tokens = 0
        self._prefetched_blocks = 0
        self.index = self.core.PrefixIndex()
        self.hasher = self.core.BlockHasher(spec.block_size)
        self.clock = clock
        self._latest_now = _NT  # the latest time given to the policy (`_time`)
        self.max_model_len = max_model_len
        self.sessions: dict[str, Session] = {}
        # Per-block facts for the policies: the session whose context the block belongs to
        # (None once it is plain cache or shared by several sessions) and its index there.
        self.block_owner: list[str | None] = [None] * num_gpu_blocks
        self.block_position = [0] * num_gpu_blocks
        # Per session, blocks it may still own that left its table (an abandoned branch of
        # its context, a block past a gap in its hits): end_session disowns them too.
        self._left_owned: dict[str, set[int]] = {}
        # Per session, the blocks `finish_step` disowned as dead (`_disown_dead`) with their
        # hashes: a later prompt of that session that hits one again gives it back (`_reown`).
        self._disowned: dict[str, dict[int, bytes]] = {}
        # The C++ core's hot loops work on these very containers (None: Python's loops).
        self._hot = None if self.core.ManagerCore is None else self.core.ManagerCore(
            self.pool, self.index, self.hasher, self.sessions, self.block_owner,
            self.block_position, SessionState.RUNNING, _check_token_ids)
        self._queried_tokens = 0
        self._hit_tokens = 0
        self._evicted_blocks = 0
        self._changes = 0  # see cache_version
        self.policy = make_online_policy(policy) if isinstance(policy, str) else policy
        try:  # a bind or observer that raises leaves a caller's instance unbound
            self.policy.bind(self)
            self.pool.observer = self.policy
        except BaseException:
            unbind(self.policy)
            raise

    # -- steps ----------------------------------------------------------------------------
    def begin_step(
        self,
        session_id: str,
        token_ids: Sequence[int],
        *,
        now: float | None = None,
        salt: str | None = None,
        workflow: str = "default",
    ) -> StepStart:
        """Open a step of a session (new or paused) with its full prompt.

        Finds the longest prefix of the prompt whose K/V is cached (the session's own
        retained blocks, or any block with the same content and salt) and takes a reference
        on each of those blocks.

        Args:
            session_id: the session; created on first use.
            token_ids: the whole prompt (it usually extends the session's previous context).
            now: current time (default: the manager's clock).
            salt: tenant salt for prefix sharing; fixed when the session is created.
            workflow: workflow type of a new session, for learning policies.
        Returns:
            StepStart with the cached token count and block table.
        Raises:
            InvalidRequest: bad ids or tokens, a prompt over max_model_len or larger than the
                whole pool, the session already has an open step, or a different salt.
            Whatever the policy's `step_started` raises, or its `choose_victims` while host
                loads make room (or RuntimeError for invalid victims): the step is taken
                back first (`_unbegin`: the session as it was, or gone if new, no reference
                kept).
        """
        return self._begin(session_id, token_ids, now, salt, workflow, False)

    def _begin(self, session_id: str, token_ids: Sequence[int], now: float | None,
               salt: str | None, workflow: str, whole: bool,
               owners: dict[int, str] | None = None) -> StepStart:
        """`begin_step`; with `whole`, every full block of the prompt may hit, its last one
        included: an import (kvsaga.migration) computes no token, so it needs no last token
        left to compute for logits, and copying a block the manager caches would only make a
        duplicate that its pause frees. `owners` (an import's: block -> its owner before the
        call) are given back when the call is taken back (`_unbegin`)."""
        self._check_prompt(session_id, token_ids)
        check_str("workflow", workflow, InvalidRequest, none_ok=True)  # None: workflow-less
        before = self._before_begin(session_id)  # (first: a cut in it sees no time)
        latest = self._latest_now
        now = self._time(now)
        try:
            s, keep = self._open(session_id, token_ids, salt, workflow)
        except BaseException:  # refused (running, another salt, a bad token): no time seen
            self._latest_now = latest
            raise
        self._changes += 1
        tokens = s.token_ids
        try:  # (from the context's rewrite on, a cut takes it back: s57, was at `len`, `min`)
            # Full-block hits (GPU, then host), leaving at least the last prompt token to compute.
            max_hit = len(tokens) - (0 if whole else 1)
            usable_end = min(keep, max_hit)
            hits, held = self._full_block_hits(s, max_hit // self.block_size, now, usable_end)
        except BaseException:  # the loads' evictions raised; their references are dropped
            began = [False]  # (a second interrupt before the take-back's release: rerun, s57)
            try:
                self._unbegin(s, keep, before, [], owners, began)
            except BaseException:
                if began[0]:
                    raise
                self._unbegin(s, keep, before, [], owners, began)
                raise  # (the second cut, the first as its context: never lost)
            raise
        # From the hits on, an interrupt (or a hook's raise) takes the step back whole, as
        # `step_started`'s raise does: the hits (a tail the loads held among them) are the
        # session's table for `_unbegin`, a compacted record as before (s56 cutsfix; was:
        # cut before `s.block_ids = hits`, the hits leaked; past the registration, the
        # session left RUNNING by a begin_step that raised).
        tail, saved = (s.tail[0] if held else -1), None
        try:
            num_cached = len(hits) * self.block_size
            if s.tail is not None:
                num_cached = self._reuse_tail(s, hits, num_cached, usable_end, held)
            if self._hot is not None:
                self._hot.disown_shared(hits, session_id)
            else:
                owner = self.block_owner
                for b in hits:
                    if owner[b] != session_id:
                        owner[b] = None  # shared by several sessions: plain cache
            rec = self._disowned.get(session_id)  # (rare: it compacted, see `_reown`)
            if rec is not None:
                if not rec.keys().isdisjoint(hits):  # (else `_reown` changes nothing: no copy)
                    saved = self._disowned_before(rec)
                self._reown(s, hits, rec)
            self._note_left(s, s.block_ids, hits)
            s.block_ids = hits
            s.num_computed = num_cached
            s.state = SessionState.RUNNING
            s.num_steps += 1
            s.paused_at = None
            s.hint = None
            self.sessions[session_id] = s
            self._queried_tokens += len(tokens)
            self._hit_tokens += num_cached
            s.importing = whole
            start = StepStart(len(tokens), num_cached, list(hits))
            self.policy.step_started(s, now)
        except BaseException:  # (the pool's hook on the tail's hit or drop, step_started)
            began = [False]  # (as above)
            try:
                self._unbegin_hits(s, hits, tail, saved, keep, before, owners, began)
            except BaseException:
                if began[0]:
                    raise
                self._unbegin_hits(s, hits, tail, saved, keep, before, owners, began)
                raise
            raise
        finally:
            s.importing = False
        return start

    def _open(
        self, session_id: str, token_ids: Sequence[int], salt: str | None, workflow: str
    ) -> tuple[Session, int]:
        """The session (new, or paused with its hashes cut to what the prompt keeps) with the
        prompt, checked, as its context and its hashes extended over it, and how many of its
        old tokens the prompt keeps. Nothing changes when a token id is bad."""
        s = self.sessions.get(session_id)
        copy = _check_token_ids if self._hot is None else self._hot.copy_token_ids
        if s is None:
            s = Session(session_id, workflow, root_hash(salt))
            s.token_ids = copy(token_ids)
            keep = 0
        else:
            if s.ending:
                raise ending_error(session_id)
            if s.state is SessionState.RUNNING:
                raise InvalidRequest(f"session {session_id!r} already has an open step")
            if salt is not None and root_hash(salt) != s.root:
                raise InvalidRequest(f"session {session_id!r} was opened with another salt")
            length, keep = len(s.token_ids), -2  # -2: rewritten as far as the hashes tell
            try:  # (a cut once the context is rewritten: cut back to the kept tokens, s57)
                # The C++ core checks and copies only the tokens past the common prefix (a
                # resumed session's prompt repeats its whole context); -1: the checks decide.
                keep = -1 if self._hot is None else self._hot.reopen_context(s.token_ids,
                                                                             token_ids)
                if keep < 0:
                    tokens = copy(token_ids)
                    keep = _common_prefix_len(s.token_ids, tokens)
                    s.token_ids = tokens
                del s.block_hashes[keep // self.block_size :]
                self.hasher.extend(s.block_hashes, s.root, s.token_ids)
            except BaseException:
                try:
                    self._unopen(s, keep, length)
                except BaseException:  # (a second interrupt, at its entry too: rerun)
                    until_done(self._unopen, s, keep, length)
                    raise
                raise
            return s, keep
        self.hasher.extend(s.block_hashes, s.root, s.token_ids)
        return s, keep

    def _full_block_hits(self, s: Session, limit: int, now: float,
                         usable_end: int) -> tuple[list[int], bool]:
        """Referenced blocks holding `s`'s first full blocks (up to `limit`): GPU hits, then
        the cached run after them (`_load_from_host`: blocks the host tier holds loaded
        into fresh GPU blocks, those still on the GPU taken there); and whether `s`'s
        retained tail, which continues them, was referenced too (before the loads' evictions,
        which could take it; `usable_end`: as `_reuse_tail`'s). When the loads raise, or the
        pool's hook as the hits are taken (which then takes none), no reference stays taken."""
        if self._hot is not None:  # the same blocks, read first off the session's table
            hits = self._hot.session_hits(s.block_ids, s.block_hashes, limit)
        else:
            hits = self.index.longest_prefix(s.block_hashes, limit)
        pool = self.pool
        calls = pool.calls
        try:
            pool.acquire_many(hits)  # before loads below can evict anything
            calls, held = -1, False
            if self.host is not None:
                loaded, held = self._load_from_host(s, hits, limit, now,
                                                    self._reusable_tail(s, usable_end))
                hits += loaded
        except BaseException as err:  # (the loads let go of theirs)
            if calls < 0 or pool.calls != calls:  # taken (then an interrupt as the C++
                lost = self._drop_hits(hits)  # call returned, or the loads raised, or a cut)
                if lost is not None:
                    _chain_last(err, lost)
            raise
        return hits, held

    def _note_left(self, s: Session, old: list[int], new: list[int]) -> None:
        """Remember the blocks of `old` (a table of `s`) that `new` drops and `s` still
        owns, for `end_session` to disown (a resume that hits its whole old table, the
        usual one, compares two lists)."""
        if not old or old == new[: len(old)]:
            return
        owner, sid, keep = self.block_owner, s.session_id, set(new)
        left = [b for b in old if owner[b] == sid and b not in keep]
        if left:
            self._left_owned.setdefault(sid, set()).update(left)

    def _reusable_tail(self, s: Session, usable_end: int) -> int:
        """The block position of `s`'s retained tail when it survived and the prompt repeats
        some of its tokens (up to `usable_end`): `_reuse_tail` takes it if the full-block
        hits end there. -1 otherwise."""
        if s.tail is None or not self._tail_alive(s):
            return -1
        b, _, ntok = s.tail
        p = self.block_position[b]
        return p if min(ntok, usable_end - p * self.block_size) > 0 else -1

    def _reuse_tail(self, s: Session, hits: list[int], num_cached: int, usable_end: int,
                    held: bool = False) -> int:
        """Append the partial tail block retained at `s`'s pause to `hits` when it survived
        and its tokens up to `usable_end` continue them; drop it when it survived but no
        longer fits. `held`: the host loads referenced it already (it continues the hits).
        Returns the cached token count."""
        b, _, ntok = s.tail
        alive = held or self._tail_alive(s)
        s.tail = None
        start = self.block_position[b] * self.block_size
        usable = min(ntok, usable_end - start)
        if alive and start == num_cached and usable > 0:
            if not held:
                calls = self.pool.calls
                try:
                    self.pool.acquire_many([b])
                except BaseException:  # taken, then an interrupt: begin_step's take-back
                    if self.pool.calls != calls:  # releases it with the hits
                        hits.append(b)
                    raise
            hits.append(b)
            return start + usable
        if alive:  # its content no longer extends the context
            self._drop(b)
        return num_cached

    def append_tokens(self, session_id: str, token_ids: Sequence[int]) -> None:
        """Extend a running session's context (decode: the token just sampled)."""
        if self._hot is not None:
            self._hot.append_tokens(session_id, token_ids, self.max_model_len)
            return
        s = self._running(session_id)
        self._append(s, _check_token_ids(token_ids))

    def _append(self, s: Session, tokens: list[int]) -> None:
        if self.max_model_len is not None and len(s.token_ids) + len(tokens) > self.max_model_len:
            raise InvalidRequest(f"context of {len(s.token_ids) + len(tokens)} tokens exceeds "
                                 f"max_model_len {self.max_model_len}")
        try:  # (free in 3.11; a cut once they are in: hashed whole, `_hash_all`, s57)
            s.token_ids.extend(tokens)
            self.hasher.extend(s.block_hashes, s.root, s.token_ids)
        except BaseException:
            try:
                self._hash_all(s)
            except BaseException:  # (a second interrupt, at its entry too: rerun)
                until_done(self._hash_all, s)
                raise
            raise

    def allocate_slots(self, session_id: str, num_tokens: int, *, now: float | None = None,
                       return_slots: bool = True) -> list[int] | None:
        """Give KV slots to the next `num_tokens` uncomputed tokens of a running session.

        Evicts (by the policy) if the free blocks do not suffice. All or nothing.

        Returns:
            One slot (block_id * block_size + offset) per token, in order; None with
            `return_slots=False` (the same blocks and evictions; for the simulator).
        Raises:
            InvalidRequest: num_tokens not positive, more than the uncomputed tokens, or the
                context could never fit in the pool; return_slots not a bool (either core).
            OutOfBlocks: not enough free plus evictable blocks now; nothing changed.
        """
        check_bool("return_slots", return_slots, InvalidRequest)
        if now is not None and (now.__class__ is not float or not _NT <= now <= _T):  # nan
            check_time("now", now, InvalidRequest)  # (floats pass at two comparisons' cost)
        if self._hot is not None:
            out = self._hot.allocate_slots(session_id, num_tokens, return_slots)
            if out.__class__ is int:  # the policy (Python) evicts, then the core allocates
                self._evict(out, self._time(now))
                out = self._still_short(
                    out, self._hot.allocate_slots(session_id, num_tokens, return_slots))
            return out
        s, end = self._slots_wanted(session_id, num_tokens)
        start = s.num_computed
        self._make_room(self._blocks_to_add(s, end), now)
        return self._take_slots(s, session_id, start, end, return_slots)

    def decode_step(
        self, session_ids: Sequence[str], token_ids: Sequence[int], *, now: float | None = None
    ) -> list[int]:
        """One decode step of a batch: `append_tokens(sid, [tok])` then
        `allocate_slots(sid, 1)` for each pair, in one call (the per-call overhead is most of
        a decode step's bookkeeping).

        All or nothing: every session is checked and the blocks of the whole batch are made
        room for (by the policy's evictions, chosen at once) before any session changes.

        Returns:
            One slot per session, in order.
        Raises:
            InvalidRequest: lengths differ, a session twice, a bad token, a context over
                max_model_len; UnknownSession; OutOfBlocks (nothing changed).
        """
        if now is not None and (now.__class__ is not float or not _NT <= now <= _T):
            check_time("now", now, InvalidRequest)  # (as allocate_slots)
        if self._hot is not None:
            out = self._hot.decode_step(session_ids, token_ids, self.max_model_len)
            if out.__class__ is int:
                self._evict(out, self._time(now))
                out = self._still_short(
                    out, self._hot.decode_step(session_ids, token_ids, self.max_model_len))
            return out
        tokens = _check_token_ids(token_ids)
        if not isinstance(session_ids, (list, tuple)):
            raise InvalidRequest(
                f"session_ids must be a list or tuple, got {type(session_ids).__name__}"
            )
        if len(session_ids) != len(tokens):
            raise InvalidRequest(
                f"decode_step got {len(session_ids)} session ids and {len(tokens)} token ids"
            )
        batch: list[Session] = []
        seen: set[str] = set()
        need = 0
        for sid in session_ids:
            s = self._running(sid)
            if sid in seen:
                raise InvalidRequest(f"session {sid!r} appears twice in one decode step")
            seen.add(sid)
            if self.max_model_len is not None and len(s.token_ids) + 1 > self.max_model_len:
                raise InvalidRequest(
                    f"context of {len(s.token_ids) + 1} tokens exceeds max_model_len "
                    f"{self.max_model_len}"
                )
            need += self._blocks_to_add(s, s.num_computed + 1)
            batch.append(s)
        self._make_room(need, now)
        slots: list[int] = []
        for sid, s, t in zip(session_ids, batch, tokens, strict=True):
            try:  # (as `_append`'s: free in 3.11)
                s.token_ids.append(t)
                self.hasher.extend(s.block_hashes, s.root, s.token_ids)
            except BaseException:
                try:
                    self._hash_all(s)
                except BaseException:  # (a second interrupt, at its entry too: rerun)
                    until_done(self._hash_all, s)
                    raise
                raise
            slots += self._take_slots(s, sid, s.num_computed, s.num_computed + 1)
        return slots

    def _make_room(self, need: int, now: float | None) -> None:
        """Evict (by the policy) until `need` blocks are free; OutOfBlocks if impossible."""
        pool = self.pool
        if need <= 0:
            return
        if need > pool.num_available:
            raise OutOfBlocks(need, pool.num_available)
        if need > pool.num_free:
            self._evict(need - pool.num_free, self._time(now))

    def _take_slots(self, s: Session, session_id: str, start: int, end: int,
                    listed: bool = True) -> list[int] | None:
        """Slots for tokens [start, end) of a session with room made: new blocks, slot ids
        (None unless `listed`), num_computed = end, the blocks that became full indexed."""
        bs = self.block_size
        table = s.block_ids
        total_blocks = -(-end // bs)
        first = len(table)
        try:  # (free in 3.11; a cut once the blocks are in: the call made whole, s57)
            if total_blocks > first:
                table.extend(self.pool.allocate(total_blocks - first))
                owner, position = self.block_owner, self.block_position
                for i in range(first, total_blocks):
                    owner[table[i]] = session_id
                    position[table[i]] = i
            slots: list[int] = []
            pos = start if listed else end
            while pos < end:
                i = pos // bs
                stop = min(end, (i + 1) * bs)
                base = table[i] * bs - i * bs
                slots.extend(range(base + pos, base + stop))
                pos = stop
            s.num_computed = end
            self._register_full_blocks(s, start // bs, end // bs)
        except BaseException:  # (else the pool's allocate took itself back: unchanged)
            try:
                self._took_slots(s, session_id, first, total_blocks, start, end)
            except BaseException:  # (a second interrupt, at its entry too: rerun)
                until_done(self._took_slots, s, session_id, first, total_blocks, start, end)
                raise
            raise
        return slots if listed else None

    def _register_full_blocks(self, s: Session, first: int, last: int) -> None:
        block_hash, insert = self.pool.block_hash, self.index.insert
        for i in range(first, last):
            b = s.block_ids[i]
            if block_hash[b] is None:
                h = s.block_hashes[i]
                # Same content computed twice (two sessions at once): keep the first copy.
                if insert(h, b):
                    block_hash[b] = h

    def _time(self, now: float | None) -> float:
        """`now`, or the clock's time where it is None, but never earlier than a time given
        before: the policy sees a monotone clock. InvalidRequest naming it unless it is a
        finite number within +-`MAX_TIME_S` (checked before anything changes: a policy
        given a str fails half way, a NaN or infinite time would stall or fire every timer,
        and one near the float maximum overflowed the policies' elapsed-time grid).

        Why monotone: an indexed policy keys each session at a search for the grid point
        its elapsed time has reached and sets a timer for the next, so a search behind an
        earlier one kept the later keys, and its victims differed from the brute-force
        scan's (`scan_order`) until time passed the earlier search again (review s47,
        policyint finding 2). The clocks the engine, the simulators and the vLLM connector
        pass never step back, so for them nothing changes; a caller whose `now` does is
        taken as still at its latest time, as a stalled clock would be."""
        t = check_time("now", self.clock() if now is None else now, InvalidRequest)
        if t < self._latest_now:
            return self._latest_now
        self._latest_now = t
        return t

    @staticmethod
    def _still_short(evicted: int, out: list[int] | None) -> list[int] | None:
        """The C++ core's second answer, after the policy evicted the `evicted` blocks its
        first asked for: the slots. A count again means the evictions made no room (a
        bookkeeping fault): RuntimeError, never a count handed back as slots."""
        if out.__class__ is int:
            raise RuntimeError(f"the core still needs {out} blocks after {evicted} were "
                               "evicted for it")
        return out

    # -- eviction (kvsaga/manager_evict.py), in this class's own dict too, where callers
    # that time or wrap the manager's calls find it (bench/sim_speed_profile.py `SPLIT`)
    _evict = EvictionPath._evict

    def tick(self, now: float | None = None) -> None:
        """Let the policy expire TTLs and refresh predictions, and start the prefetches it
        asks for (sessions it predicts will resume soon)."""
        now = self._time(now)
        self.policy.tick(now)
        if self.host is not None:
            for sid in self.policy.prefetch_candidates(now):
                if sid in self.sessions:
                    self.prefetch(sid, now=now)

    # -- migration (kvsaga.migration holds the logic) ---------------------------------------
    def export_session(self, session_id: str):
        """Where a paused session's cached full blocks live: `kvsaga.migration.plan_export`."""
        from kvsaga.migration import plan_export

        return plan_export(self, session_id)

    def import_session(self, export, *, salt: str | None = None, now: float | None = None):
        """Open an exported session here, paused: `kvsaga.migration.plan_import`."""
        from kvsaga.migration import plan_import

        return plan_import(self, export, salt=salt, now=now)
