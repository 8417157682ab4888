"""Taking back the writes of a forward pass or a host-tier copy that failed, so that no lookup
finds K/V never written (a mixin of `kvsaga.manager.KVCacheManager`): `discard_writes`, which
the engine calls when its forward raises, and `_take_back`, the cut both it and the host
tier's `drop_transfer` make (kvsaga/host_tier.py); and `_unbegin`, which takes back a
`begin_step` whose policy hook raised. Split from kvsaga/manager.py by concept.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvsaga._validate import is_int
from kvsaga.block_queue import until_done
from kvsaga.errors import InvalidRequest
from kvsaga.pool import CACHED, FREE, BlockPool, _NullObserver, release_again
from kvsaga.session import Session, SessionState

# What `begin_step` changes that `_unbegin` puts back: the manager's hit counters (GPU and
# host), the pool's `reused_s`, the session's left-owned blocks, and (None for a new
# session) its context length, table, computed tokens, steps, pause time, hint and tail.
BeforeBegin = tuple[tuple[int, int, int], float, "set[int] | None", "tuple | None"]


class FailedWrites:
    """`discard_writes`, `_take_back` and `_unbegin` (see the module docstring)."""

    def _before_begin(self, session_id: str) -> BeforeBegin:
        """What `_unbegin` needs to take back a `begin_step` of `session_id` about to open
        (read in O(1), but for the session's left-owned blocks, usually none)."""
        s = self.sessions.get(session_id)
        left = self._left_owned.get(session_id)
        old = None if s is None else (len(s.token_ids), s.block_ids, s.num_computed,
                                      s.num_steps, s.paused_at, s.hint, s.tail)
        counters = self._queried_tokens, self._hit_tokens, self._host_hit_tokens
        return counters, self.pool.reused_s, None if left is None else set(left), old

    def _unbegin_hits(self, s: Session, hits: list[int], tail: int, saved, keep: int,
                      before: BeforeBegin, owners: dict[int, str] | None, began: list) -> None:
        """`_unbegin` for `begin_step` once it held its hits (`tail` >= 0: the retained tail
        the host loads referenced; `saved`: a compacted record before `_reown`, to put
        back). Rerun from its start when cut before the release (`began`: as `_unbegin`)."""
        if tail >= 0 and hits[-1:] != [tail]:
            hits.append(tail)  # (cut before `_reuse_tail` appended it)
        if saved is not None:
            self._put_disowned_back(s.session_id, saved)
        s.block_ids = hits  # the references to drop, the loads among them
        self._unbegin(s, keep, before, None, owners, began)

    def _unbegin(self, s: Session, keep: int, before: BeforeBegin,
                 refs: list[int] | None = None, owners: dict[int, str] | None = None,
                 began: list | None = None) -> None:
        """Take back the `begin_step` that opened `s` (its prompt kept `keep` tokens of its
        old context) after the policy's `step_started` raised, or its eviction while host
        loads made room (`refs`: the references the step still holds: None, its hits as
        `s`'s table, after `step_started`; [] after the loads, which dropped theirs): the
        references on its hits are dropped (a reused tail is cached again as its tail), a
        new session is forgotten, and a paused one gets back its context, table, computed
        tokens, step count, pause, hint and tail; the hit counters are as they were. The
        manager's books then hold as before the call, so the caller may retry. What the call
        did to the cache itself stays, as any lookup's touch would: the hits' recency, a
        block another session owned marked shared (`block_owner` None), a retained tail the
        prompt no longer continued dropped, blocks loaded from the host tier (cached on the
        GPU, their copies planned; a new session's as plain cache, a paused one's as its
        left-owned blocks), and `cache_version` moved on. A prompt that rewrote the context
        (kept fewer tokens than it had) leaves the session that common prefix only, as a
        paused session whose context ended there (`_cut_paused`): the C++ core's
        `reopen_context` changed the context in place past `keep`, and keeping a copy of
        every context for this would cost each resume a pass over its whole context (both
        cores do the same). An import's `owners` (`_begin`) get their blocks back first, before
        the release files them with the policy (review s49 gate3, finding 4). `began[0]` is
        set as the release is made: a caller reruns a call cut before it (at its entry)."""
        counters, reused, left, old = before
        sid, pool, cut = s.session_id, self.pool, None
        # A second interrupt (the first's take-back cut) anywhere past this method's entry
        # leaves it whole: before the release and after it, the work is idempotent and rerun
        # (`until_done`), and the session gives up its hits' table with no point between
        # (s57; was: cut after the release, the session left RUNNING on a table it held no
        # reference on; before it, RUNNING after a begin_step that raised).
        try:
            left = self._owners_back(s, old, left, owners)
        except BaseException as e:
            cut = e
            left = until_done(self._owners_back, s, old, left, owners)
        tail = -1 if old is None or old[6] is None else old[6][0]
        refs = (s.block_ids if refs is None else refs)[::-1]  # tails first, as ever
        calls, gone = pool.calls, ()
        if began is not None:
            began[0] = True  # (no point from here to the release's own handlers)
        try:
            pool.release_many(refs, keep_unhashed=tail)
        except BaseException as e:  # (cut at its entry: released now, raised at the end)
            # (`calls` moved: the C++ call returned, told; decided inline, with no call
            # before it, so a second pending signal cannot skip the take-back: s55 diffint)
            cut = e
            if pool.calls == calls:
                try:
                    told = release_again(pool, refs, tail, e, calls)
                except BaseException as again:  # a signal at its entry (s56 cuts): read
                    # with no call; none began (the Python pool's, cut at its entry): the
                    # session keeps the references on its table, as before
                    if pool.__class__ is BlockPool and pool._releasing is not refs:
                        raise
                    told, cut = False, again  # (a hook raise, the C++ pool's: untold)
                if not told:
                    # Its `blocks_cached` raised (or a cut inside it): released, the policy
                    # told none of the blocks it cached: dropped unseen, the take-back
                    # completed (was: the session left running on a table it held no
                    # reference on).
                    gone = [b for b in dict.fromkeys(refs) if pool.state[b] == CACHED]
                    cut = self._evict_unseen(gone) or cut
        pool.reused_s = reused  # (stores only: before the pop, whose return is a point)
        self._queried_tokens, self._hit_tokens, self._host_hit_tokens = counters
        if old is None:
            self.sessions.pop(sid, None)  # (not registered yet when the loads raised)
        else:
            _, s.block_ids, s.num_computed, s.num_steps, s.paused_at, s.hint, s.tail = old
            s.state = SessionState.PAUSED
        try:
            self._unbegun(s, keep, before, left, gone)
        except BaseException as e:
            cut = e
            until_done(self._unbegun, s, keep, before, left, gone)
        if cut is not None:
            raise cut

    def _owners_back(self, s: Session, old: tuple | None, left: set[int] | None,
                     owners: dict[int, str] | None) -> set[int] | None:
        """`_unbegin`'s work before its release: an import's owners given back, and the
        left-owned blocks to restore (`_loaded_owned`). Idempotent."""
        if owners:
            self._give_owners_back(owners)
        return self._loaded_owned(s, None if old is None else old[1], left)

    def _unbegun(self, s: Session, keep: int, before: BeforeBegin, left: set[int] | None,
                 gone) -> None:
        """`_unbegin`'s work after its release, the session paused on its old table (or
        forgotten): the counters, its left-owned blocks, its context cut back to the kept
        tokens, its table before the blocks dropped unseen. Idempotent."""
        counters, reused, _, old = before
        self.pool.reused_s = reused
        self._queried_tokens, self._hit_tokens, self._host_hit_tokens = counters
        if left is None:
            self._left_owned.pop(s.session_id, None)
        else:
            self._left_owned[s.session_id] = left
        if old is not None:
            self._cut_context(s, keep, old[0])
            if gone:
                self._cut_before(s, set(gone))

    def _cut_context(self, s: Session, keep: int, length: int) -> None:
        """Cut paused `s`'s context (of `length` tokens before a begin_step that rewrote it
        to keep `keep`) back to the tokens the two share, its hashes and retained state with
        it (`_cut_paused`). Idempotent."""
        end = min(keep, length)
        del s.token_ids[end:]
        del s.block_hashes[end // self.block_size :]
        if end < length:
            self._cut_paused(s, end)

    def _unopen(self, s: Session, keep: int, length: int) -> None:
        """After an interrupt in `_open`'s rewrite of paused `s`'s context (of `length`
        tokens; `keep`: how many it kept, -1 when nothing changed yet, -2 when unknown: the
        C++ core's `reopen_context` cut as it returned), cut the context back to the kept
        tokens as `_unbegin` does, so no later step takes its table, computed tokens or
        tail for the new tokens (s57; was: a rewrite inside its computed tokens left them,
        and the resume reused K/V of the old tokens). An unknown `keep` is taken as the full
        blocks whose hashes still match the context's: never more than it kept (the old
        hashes are still whole there: `_open` cuts them after the call). Idempotent.
        """
        if keep == -1:
            return
        if keep == -2:
            fresh: list[bytes] = []
            self.hasher.extend(fresh, s.root, s.token_ids, len(s.block_hashes))
            keep = 0
            for old, new in zip(s.block_hashes, fresh, strict=False):
                if old != new:
                    break
                keep += self.block_size
        self._cut_context(s, keep, length)

    def _hash_all(self, s: Session) -> None:
        """Hash every full block of running `s`'s context after an interrupt cut the hashing
        of tokens just appended (`_append`, `decode_step`): the `allocate_slots` that gives
        them slots registers their blocks by these hashes (s57; was: IndexError there, the
        session stuck). Idempotent: it hashes what is missing."""
        self.hasher.extend(s.block_hashes, s.root, s.token_ids)

    def _took_slots(self, s: Session, session_id: str, first: int, total: int, start: int,
                    end: int) -> None:
        """After an interrupt in `_take_slots` (tokens [start, end) of running `s`, its table
        of `first` blocks to become `total`): once the pool's blocks are in the table, the
        call made whole (their owner and position, `num_computed`, the full blocks
        registered), as the C++ core's call that an interrupt cuts as it returns; else
        nothing changed (the pool took its allocation back). s57; was: cut after the
        blocks were in, a table longer than its computed tokens, or full blocks computed
        but never registered. Idempotent."""
        table, owner, position = s.block_ids, self.block_owner, self.block_position
        if len(table) < total:
            return
        for i in range(first, total):
            owner[table[i]] = session_id
            position[table[i]] = i
        s.num_computed = end
        self._register_full_blocks(s, start // self.block_size, end // self.block_size)

    def _cut_before(self, s: Session, gone: set[int]) -> None:
        """Cut paused `s`'s table before its first block in `gone` (dropped unseen by the
        take-back: its release raised), its computed tokens and tail with it, as
        `_drop_released` does."""
        table = s.block_ids
        cut = next((i for i, b in enumerate(table) if b in gone), len(table))
        self._note_left(s, table, table[:cut])
        s.block_ids = table[:cut]
        s.num_computed = min(s.num_computed, cut * self.block_size)
        if s.tail is not None and s.tail[0] in gone:
            s.tail = None

    def _give_owners_back(self, owners: dict[int, str]) -> None:
        """Give each block in `owners` back to its session, where it is still a live
        session's block that no one owns now (a failed import disowned it as a hit): before
        the release that files it with the policy, which reads the owner there. A block
        freed since, or taken by another session (owned, or FREE), is left alone."""
        owner, state, sessions = self.block_owner, self.pool.state, self.sessions
        for b, sid in owners.items():
            if owner[b] is None and sid in sessions and state[b] != FREE:
                owner[b] = sid

    def _loaded_owned(self, s: Session, table: list[int] | None,
                      left: set[int] | None) -> set[int] | None:
        """The left-owned blocks to restore for `s`, given the taken-back `begin_step`'s
        host loads (owned by `s`, in neither its old table nor `left`): a new session is
        forgotten, so they become plain cache; a paused one keeps them as left-owned, which
        its `end_session` disowns (else they stayed owned by it for good)."""
        owner, sid = self.block_owner, s.session_id
        if table is None:
            for b in s.block_ids:
                if owner[b] == sid:
                    owner[b] = None
            return left
        kept = set(table).union(left or ())
        loaded = {b for b in s.block_ids if owner[b] == sid and b not in kept}
        return (left or set()) | loaded if loaded else left

    def _cut_paused(self, s: Session, end: int) -> None:
        """Cut paused session `s`'s retained state to the first `end` tokens of its context
        (its table to the full blocks within them, its tail dropped) when its computed
        tokens ran past them."""
        if s.num_computed <= end:
            return
        table = s.block_ids
        kept = table[: end // self.block_size]
        self._note_left(s, table, kept)  # (first, and the tail: a cut rerun finds them, s57)
        if s.tail is not None:
            if self._tail_alive(s):
                self._drop(s.tail[0])
            s.tail = None
        s.block_ids = kept
        s.num_computed = len(kept) * self.block_size

    def discard_writes(self, starts: Mapping[str, int]) -> None:
        """Take back the slots of a forward pass that failed, so no lookup finds K/V it
        never wrote.

        `starts[sid]` is where running session `sid`'s tokens in that pass began (its chunk's
        start); slots for them were allocated (and their full blocks indexed) before the
        pass ran. Afterwards each such session is as if its `allocate_slots` had stopped at
        its start: `num_computed == start`, the blocks past the one holding token
        `start - 1` released (freed). Every block from the one holding token `start` on
        loses its prefix-index entry. A running session that took such a block as a prefix
        hit (begun in the same step) goes back to the block before it, its later blocks
        released too (cached where they hold a hash); so does a session whose start falls
        inside a block it took as a hit (its partial tail must be its own block). The
        tokens stay in the contexts: the next `allocate_slots` computes them again.

        Raises:
            InvalidRequest: `starts` not a mapping, a session that is not running, or a start
                that is not an int in [0, num_computed]; nothing changed.
        """
        if not isinstance(starts, Mapping):
            raise InvalidRequest(f"starts must be a mapping of session id to token index, "
                                 f"got {type(starts).__name__}")
        for sid, start in starts.items():
            s = self._running(sid)
            if not is_int(start) or not 0 <= start <= s.num_computed:
                raise InvalidRequest(f"start {start!r} of session {sid!r} is not an int in "
                                     f"[0, {s.num_computed}]")
        self._changes += 1
        bs = self.block_size
        stale: set[int] = set()
        for sid, start in starts.items():
            stale.update(self.sessions[sid].block_ids[start // bs :])
        self._take_back(stale, starts)

    def _drop_unseen(self, session_id: str, start: int) -> None:
        """Unindex and free paused session `session_id`'s blocks from token `start` on (a
        multiple of the block size), and cut its table there, without telling the policy:
        an import's pause (kvsaga.migration) released them and the pool's `blocks_cached`
        hook raised, so the policy was never told they are cached (told of their eviction,
        LRU's queue would unlink blocks it never linked). Their K/V may never have been
        written (`plan_import`). `discard_writes` refuses a session that is not running
        (review s49, gatediff finding 4)."""
        s, pool = self.sessions[session_id], self.pool
        gone = [b for b in s.block_ids[start // self.block_size :] if pool.state[b] == CACHED]
        self._changes += 1
        cut = self._evict_unseen(gone)
        del s.block_ids[start // self.block_size :]
        s.num_computed = min(s.num_computed, start)
        if cut is not None:
            raise cut

    def _drop_hits(self, hits: list[int]) -> BaseException | None:
        """Let go of the references `_full_block_hits` took on `hits` once an interrupt came
        after they were taken (as the C++ pool's call returned; the Python pool's after its
        tell), before it propagates to `begin_step`'s take-back, which holds none of them:
        released (CACHED again, told), or, for a release that began and raised, its cached
        blocks dropped unseen (`_take_back`'s rule), tails first as every take-back frees.
        Returns the release's own error when nothing is raised here, for the caller to
        chain onto the error it propagates (review s56 diffbegin LOW-1: it was lost)."""
        pool, ids = self.pool, hits[::-1]
        calls = pool.calls
        try:
            pool.release_many(ids)
        except BaseException as e:
            again = None
            try:  # (`calls` moved: returned, told; read inline, with no call before it)
                told = pool.calls != calls or release_again(pool, ids, -1, e, calls)
            except BaseException as cut:  # none began (`RELEASE_RETRIES` + 1 cuts at its
                # entry), or a signal at its entry after a release that began (its hook
                # raised: untold; read with no call, s56 cuts; was: read as told)
                told = pool.__class__ is BlockPool and pool._releasing is not ids
                again = cut
            if not told:
                again = self._evict_unseen([b for b in ids if pool.state[b] == CACHED]) or again
            if again is not None:
                raise again from e
            return e
        return None

    def _evict_unseen(self, gone: list[int]) -> BaseException | None:
        """Unindex, free and disown the CACHED blocks `gone` without telling the policy: a
        release cached them and the pool's `blocks_cached` hook raised, so the policy never
        saw them cached (told of their eviction, LRU's queue would unlink blocks it never
        linked). Ends the eviction journal, which does not account for this.

        Always whole: an interrupt inside it finishes it first (`_forget_unseen`,
        restartable) and is returned, not raised, for the caller (a handler with more to
        take back) to raise once its own work is done (s56 cuts; was: cut in its unindexing
        loop, hashed CACHED blocks left unindexed that the policy never saw, lost to reuse
        and to eviction for good). None: nothing cut it."""
        if not gone:
            return None
        try:
            self._forget_unseen(gone)
        except BaseException as e:
            try:
                until_done(self._forget_unseen, gone)
            finally:  # (idempotent: a no-op unless a further interrupt cut its entry)
                until_done(self._forget_unseen, gone)
            return e
        return None

    def _forget_unseen(self, gone: list[int]) -> None:
        """`_evict_unseen`'s changes, idempotent (`until_done`): each of `gone` still CACHED
        unindexed (where the index still names it) and evicted with the policy untold; all of
        `gone` disowned."""
        self._note_evicted(None)
        pool, owner, index = self.pool, self.block_owner, self.index
        block_hash, state = pool.block_hash, pool.state
        left = [b for b in gone if state[b] == CACHED]
        get, remove = index.get, index.remove
        for b in left:
            h = block_hash[b]
            if h is not None and get(h) == b:
                remove(h)
        if left:
            told = pool.observer
            pool.observer = _NullObserver()
            try:
                pool.evict_many(left)
            finally:
                pool.observer = told
        for b in gone:
            owner[b] = None

    def _take_back(self, stale: set[int], starts: Mapping[str, int]) -> dict[str, int]:
        """Unindex the ACTIVE blocks `stale` (their K/V is not what their hash says) and
        take them out of every running table: a session in `starts` goes back to its start
        (its block's start when that block is not its own), and any running session to the
        block before the first stale one it holds before that; blocks past the cut are
        released (freed where unhashed). Returns the running sessions cut, with their new
        `num_computed` (`discard_writes`, `drop_transfer`).

        A release whose pool hook `blocks_cached` raises (the pool released the blocks; the
        policy was told of none) is completed, not taken back: the blocks it cached are
        dropped unseen (`_evict_unseen`), every other running session is still cut (none
        keeps K/V never written), and then the first such error propagates. Before, the
        blocks stayed CACHED unknown to the policy (a later hit raised 'block N is not
        queued') and the sessions after it kept their stale blocks (review s50
        diff-hooks, finding 2)."""
        bs, pool, index = self.block_size, self.pool, self.index
        block_hash = pool.block_hash
        for b in stale:
            h = block_hash[b]
            if h is not None:
                index.remove(h)
                block_hash[b] = None
        owner = self.block_owner
        cut: dict[str, int] = {}
        error: BaseException | None = None
        for s in self.sessions.values():
            if s.state is not SessionState.RUNNING:
                continue
            sid = s.session_id
            end = starts.get(sid, s.num_computed)
            # Hits before its own written blocks (those that the pass alone wrote).
            first_own = end // bs if sid in starts else len(s.block_ids)
            for i in range(first_own):
                if s.block_ids[i] in stale:
                    end = i * bs
                    break
            if end % bs and owner[s.block_ids[end // bs]] != sid:
                end -= end % bs  # a start inside a hit: a partial tail must be its own block
            if end == s.num_computed:
                continue
            keep = -(-end // bs)
            dropped = s.block_ids[keep:]
            del s.block_ids[keep:]
            s.num_computed = end
            cut[sid] = end
            ids, calls = dropped[::-1], pool.calls
            try:
                pool.release_many(ids)
            except BaseException as e:
                if error is None:
                    error = e
                try:  # (cut at its entry: released now; a release that began: untold;
                    # one that returned, `calls` moved: told, read inline with no call)
                    told = pool.calls != calls or release_again(pool, ids, -1, e, calls)
                except BaseException:  # none began: `RELEASE_RETRIES` + 1 cuts in a row at
                    # its entry leave the references held (no table holds them); a signal at
                    # its entry after one began (its hook raised): untold (read with no
                    # call, s56 cuts; was: read as told)
                    told = pool.__class__ is BlockPool and pool._releasing is not ids
                if not told:  # (an interrupt that cut the drop: raised last, the first error
                    # its context)
                    error = self._evict_unseen([b for b in dropped
                                                if pool.state[b] == CACHED]) or error
            for b in dropped:
                if pool.state[b] == FREE:
                    owner[b] = None
                elif owner[b] == sid:  # cached by its hash: `end_session` must disown it
                    self._left_owned.setdefault(sid, set()).add(b)
        if error is not None:
            raise error
        return cut
