"""The KVCacheManager's reads: calls that change nothing (the block facts policies read,
session lookups, `lookup`, `num_blocks_needed`, `stats`, `check_integrity`). A mixin of
`kvsaga.manager.KVCacheManager`, whose state (pool, index, sessions...) they read."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

from kvsaga._validate import check_positive_int
from kvsaga.errors import InvalidRequest, UnknownSession
from kvsaga.manager_types import (
    CacheStats,
    StepLookup,
    _check_block_hashes,
    _check_digest,
    _check_digests,
    _check_session_id,
    _check_token_ids,
    _common_prefix_len,
)
from kvsaga.pool import CACHED, count_in_state
from kvsaga.prefix import root_hash
from kvsaga.session import Session, SessionState


def _sliceable(token_ids: Sequence[int]) -> Sequence[int]:
    """The prompt itself when it slices (the simulator's prefix views are read by slices to
    avoid copying, and every waiting step is looked up at every scheduling step); only one
    that has no slices (a deque) is read into a list, once."""
    try:
        token_ids[0:0]
    except TypeError:
        return list(token_ids)
    return token_ids


def ending_error(session_id: str) -> InvalidRequest:
    """The refusal of begin_step, finish_step and preempt of a session whose `end_session`
    an interrupt cut (`Session.ending`): the policy was told the end, so only a retry of the
    end may follow. The calls within a step (allocate_slots, append_tokens, decode_step,
    reads) are not refused: the C++ core checks those in csrc, and the end's retry releases
    whatever they add to the table."""
    return InvalidRequest(f"session {session_id!r}: end_session was interrupted; "
                          "call end_session again")


class ManagerReads:
    """Read-only calls of `KVCacheManager` (see kvsaga/manager.py for the state)."""

    @property
    def num_gpu_blocks(self) -> int:
        return self.pool.num_blocks

    # -- what policies read (kvsaga.policy.BlockView) --------------------------------------
    @property
    def block_generation(self) -> list[int]:
        return self.pool.generation

    @property
    def block_hash(self) -> list[bytes | None]:
        return self.pool.block_hash

    def usage(self) -> float:
        """Share of GPU blocks referenced by running steps."""
        return self.pool.num_active / self.pool.num_blocks

    def is_cached(self, block_id: int) -> bool:
        return self.pool.state[block_id] == CACHED

    # -- lookups --------------------------------------------------------------------------
    def _session(self, session_id: str) -> Session:
        try:
            return self.sessions[session_id]
        except (KeyError, TypeError):
            raise UnknownSession(session_id) from None

    def _running(self, session_id: str) -> Session:
        s = self._session(session_id)
        if s.state is not SessionState.RUNNING:
            raise InvalidRequest(f"session {session_id!r} has no open step (call begin_step)")
        return s

    def session(self, session_id: str) -> Session:
        """The manager's record of a session (read it; do not change it)."""
        return self._session(session_id)

    def block_table(self, session_id: str) -> list[int]:
        """A copy of the running session's block table."""
        return list(self._running(session_id).block_ids)

    def num_computed_tokens(self, session_id: str) -> int:
        """Tokens of the session's context that have KV slots."""
        return self._session(session_id).num_computed

    def _check_prompt(self, session_id: str, tokens: Sequence[int]) -> None:
        """InvalidRequest naming what is wrong with a step's prompt: its type and length
        (its ids are checked where they are read)."""
        _check_session_id(session_id)
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
            raise InvalidRequest(
                f"token_ids must be a sequence of ints, got {type(tokens).__name__}")
        if not tokens:
            raise InvalidRequest("token_ids must not be empty")
        if self.max_model_len is not None and len(tokens) > self.max_model_len:
            raise InvalidRequest(
                f"prompt of {len(tokens)} tokens exceeds max_model_len {self.max_model_len}")
        if self.spec.num_blocks_for(len(tokens)) > self.pool.num_blocks:
            raise InvalidRequest(
                f"prompt of {len(tokens)} tokens needs {self.spec.num_blocks_for(len(tokens))} "
                f"blocks; the pool has only {self.pool.num_blocks}")

    def _tail_alive(self, s: Session) -> bool:
        """Whether the partial tail block retained at the session's pause still holds it."""
        b, gen, _ = s.tail
        pool = self.pool
        return (
            pool.state[b] == CACHED
            and pool.generation[b] == gen
            and self.block_owner[b] == s.session_id
        )

    def lookup(
        self,
        session_id: str,
        token_ids: Sequence[int],
        *,
        salt: str | None = None,
        block_hashes: Sequence[bytes] | None = None,
    ) -> StepLookup:
        """What `begin_step(session_id, token_ids)` would find now, changing nothing.

        No block is referenced, moved in any eviction order, loaded or evicted, and no
        policy hook runs: a scheduler may ask for every waiting step, every time it decides,
        and only `begin_step` the ones it admits. The answer holds until the next call that
        changes the cache (an allocation may evict what it counted as a hit).

        Args:
            session_id: the session (it need not exist yet).
            token_ids: the whole prompt, as `begin_step` would get it.
            salt: tenant salt of a new session (an existing session keeps its own).
            block_hashes: optional hashes of the prompt's leading full blocks, chained from
                the salt's root as the manager hashes them (a caller that keeps them saves
                rehashing); blocks past them are hashed here, only as far as the hits go.
        Returns:
            StepLookup: GPU hits (and how many are evictable now), host hits, tail tokens.
        Raises:
            InvalidRequest: as `begin_step` for a bad id or prompt, or a session that has
                an open step; `block_hashes` that is not a sequence or holds more hashes
                than the prompt has full blocks, or an item of it that lookup reads (up to
                the first miss; every one with a host tier) that is not a 32-byte bytes
                digest, with the same message on either core. Token ids are checked where
                lookup reads them (those it hashes, and the retained tail's); `begin_step`
                checks every one (ids lookup finds equal to the session's context, as True
                to 1, stand for the context's).
        """
        self._check_prompt(session_id, token_ids)
        tokens = _sliceable(token_ids)
        bs = self.block_size
        if block_hashes is not None:
            _check_block_hashes(block_hashes, len(tokens), bs)
            if self.host is not None:  # the host tier's run and hashing read every one
                _check_digests(block_hashes)
        max_hit = len(tokens) - 1
        max_blocks = max_hit // bs
        s = self.sessions.get(session_id)
        if s is not None and s.state is SessionState.RUNNING:
            raise InvalidRequest(f"session {session_id!r} already has an open step")
        root = root_hash(salt) if s is None else s.root
        hashes = block_hashes if block_hashes is not None else []
        if not hashes and s is not None and max_blocks:
            keep = _common_prefix_len(s.token_ids, tokens)
            hashes = s.block_hashes[: min(keep // bs, max_blocks)]
        table = s.block_ids if s is not None else None
        hashes, num_hits, cached = self._gpu_hits(hashes, root, tokens, max_blocks, table,
                                                  owned=hashes is not block_hashes)
        if block_hashes is not None and num_hits < min(len(block_hashes), max_blocks):
            # The scan stopped at the caller's hash there: a miss, or no digest at all.
            _check_digest(block_hashes, num_hits)
        host = 0
        if self.host is not None:
            hashes, run = self._lookup_host_run(hashes, block_hashes, root, tokens, num_hits,
                                                max_blocks)
            state = self.pool.state
            for b, on_gpu in run:
                if on_gpu:
                    num_hits += 1
                    cached += state[b] == CACHED
                else:
                    host += 1
        num_cached = (num_hits + host) * bs
        tail = 0
        if s is not None and s.tail is not None and self._tail_alive(s):
            b, _, ntok = s.tail
            start = self.block_position[b] * bs
            p = start // bs
            if start == num_cached and (p == 0 or s.block_hashes[p - 1] == hashes[p - 1]):
                # The prompt repeats the context up to the tail's block (their hash chains
                # meet there); count the tail's tokens it repeats too.
                old = s.token_ids
                limit = min(ntok, max_hit - start, len(old) - start)
                _check_token_ids(tokens[start : start + limit], start)
                n = 0
                while n < limit and old[start + n] == tokens[start + n]:
                    n += 1
                tail = n
        return StepLookup(len(tokens), num_cached + tail, num_hits, cached, host, tail, bs)


    def _lookup_host_run(self, hashes: Sequence[bytes], block_hashes: Sequence[bytes] | None,
                         root: bytes, tokens: Sequence[int], first: int, max_blocks: int,
                         ) -> tuple[Sequence[bytes], list[tuple[int, bool]]]:
        """(`hashes` as far as hashed, begin_step's run past the first GPU miss at `first`:
        `_host_walk`'s, blocks still on the GPU being hits there), the prompt hashed on only
        while the run goes on: a prompt that misses both tiers is not hashed to its end (the
        scheduler asks at nearly every step for each waiting request). Each round hashes to
        twice the blocks already hashed (and 8 more), going on from `_gpu_hits`' doubling
        rather than restarting it: a long run takes a few rounds, and at most about twice
        the run is hashed. The caller's `block_hashes` is read, never extended."""
        run: list[tuple[int, bool]] = []
        while True:
            limit = min(len(hashes), max_blocks)
            part = self._host_walk(hashes, first, limit)
            run += part
            if first + len(part) < limit or limit == max_blocks:
                return hashes, run
            first = limit
            if hashes is block_hashes or not isinstance(hashes, list):
                hashes = list(hashes)
            self._hash_to(hashes, root, tokens, min(max_blocks, 2 * limit + 8))

    def _gpu_hits(self, hashes: list[bytes], root: bytes, tokens: Sequence[int],
                  max_blocks: int, table: list[int] | None = None, owned: bool = False,
                  ) -> tuple[list[bytes], int, int]:
        """(the prompt's leading hashes known, the prompt's leading full blocks resident on
        the GPU, up to `max_blocks`; how many of them are CACHED), `hashes` (its leading
        hashes known) hashed on only while every known one hits, a few blocks at a time,
        doubling: a resumed session's new blocks are hashed up to its first miss, not to the
        prompt's end (a scheduler may ask at every batch step). Unless `owned`, `hashes` is
        copied before it is first extended (a caller's list is read, never extended; most
        lookups miss before its end and copy nothing). `table`: the session's block table,
        which the C++ core reads its first hits off (`ManagerCore.session_hits`)."""
        num_hits = cached = walked = 0
        grow = 1
        copied = owned
        while True:
            part = hashes[walked:] if walked else hashes
            if self._hot is not None:
                n, c = self._hot.prefix_hits(part, max_blocks - walked,
                                             None if walked else table)
            else:
                hits = self._python_hits(part, max_blocks - walked, owned or walked)
                n, c = len(hits), count_in_state(self.pool.state, hits, CACHED)
            num_hits += n
            cached += c
            if n < len(part) or len(hashes) >= max_blocks:
                return hashes, num_hits, cached
            walked = len(hashes)
            if not copied:
                hashes, copied = list(hashes), True
            self._hash_to(hashes, root, tokens, min(max_blocks, walked + grow))
            grow *= 2

    def _python_hits(self, hashes: Sequence[bytes], limit: int, owned: bool) -> list[int]:
        """The Python core's `longest_prefix`; unless `owned` (the manager's own hashes),
        the caller's hashes that it read are checked as the C++ core reads them: it stops
        at any item that is no 32-byte bytes digest, where the dict raised TypeError for
        an unhashable one or took another that compares equal to a digest (a memoryview)
        for a hit (`_check_digest`: the same error on both cores)."""
        try:
            hits = self.index.longest_prefix(hashes, limit)
        except TypeError:
            if owned:
                raise
            _check_digests(hashes, limit)
            raise
        if not owned and hits and not set(map(type, islice(hashes, len(hits)))) <= {bytes}:
            _check_digests(hashes, len(hits))
        return hits

    def _hash_to(self, hashes: list[bytes], root: bytes, tokens: Sequence[int],
                 num_blocks: int) -> None:
        """Extend `hashes` over `tokens`' full blocks up to `num_blocks`, checking the ids
        hashed (InvalidRequest, as `begin_step`)."""
        first = len(hashes) * self.block_size
        if first < num_blocks * self.block_size:
            _check_token_ids(tokens[first : num_blocks * self.block_size], first)
            self.hasher.extend(hashes, root, tokens, num_blocks)

    @property
    def cache_version(self) -> tuple[int, int]:
        """Changes whenever a `lookup` answer may change: a step begun, finished or
        preempted, a session ended, an eviction, a prefetch, a block registered in the prefix
        index. A caller that asks `lookup` again about the same prompt at the same version
        gets the same answer (a scheduler re-checking its waiting steps may keep them)."""
        return self._changes, len(self.index)

    def _slots_wanted(self, session_id: str, num_tokens: int) -> tuple[Session, int]:
        """The running session and the end of the tokens `allocate_slots(session_id,
        num_tokens)` gives slots to, after its argument checks (InvalidRequest): no open
        step, num_tokens not a positive int or more than the tokens without slots. One check
        for allocate_slots, num_blocks_needed and can_allocate, so the asks raise where it
        would (the C++ core's allocate_slots raises the same)."""
        s = self._running(session_id)
        check_positive_int("num_tokens", num_tokens, InvalidRequest)
        end = s.num_computed + num_tokens
        if end > len(s.token_ids):
            raise InvalidRequest(
                f"num_tokens {num_tokens} exceeds the {len(s.token_ids) - s.num_computed} "
                f"tokens of session {session_id!r} without slots (append_tokens first)"
            )
        return s, end

    def _blocks_to_add(self, s: Session, end: int) -> int:
        """New blocks the session's table needs to cover `end` tokens."""
        total_blocks = -(-end // self.block_size)
        if total_blocks > self.pool.num_blocks:
            raise InvalidRequest(
                f"a context of {end} tokens needs {total_blocks} blocks; "
                f"the pool has only {self.pool.num_blocks}"
            )
        return max(0, total_blocks - len(s.block_ids))

    def num_blocks_needed(self, session_id: str, num_tokens: int) -> int:
        """New blocks that `allocate_slots(session_id, num_tokens)` would take; raises
        the InvalidRequest it would."""
        s, end = self._slots_wanted(session_id, num_tokens)
        return self._blocks_to_add(s, end)

    def can_allocate(self, session_id: str, num_tokens: int) -> bool:
        """Whether `allocate_slots` would succeed now (counting evictable blocks); raises
        the InvalidRequest it would."""
        return self.num_blocks_needed(session_id, num_tokens) <= self.pool.num_available

    # -- introspection --------------------------------------------------------------------
    def stats(self) -> CacheStats:
        running = sum(1 for s in self.sessions.values() if s.state is SessionState.RUNNING)
        pool = self.pool
        return CacheStats(
            num_gpu_blocks=pool.num_blocks,
            num_free_blocks=pool.num_free,
            num_used_blocks=pool.num_active,
            num_evictable_blocks=pool.num_cached,
            queried_tokens=self._queried_tokens,
            hit_tokens=self._hit_tokens,
            num_evicted_blocks=self._evicted_blocks,
            num_running_sessions=running,
            num_paused_sessions=len(self.sessions) - running,
            num_host_blocks=self.num_host_blocks,
            num_host_cached_blocks=self.host.pool.num_cached if self.host else 0,
            host_hit_tokens=self._host_hit_tokens,
            offloaded_blocks=self.host.num_offloaded if self.host else 0,
            loaded_blocks=self.host.num_loaded if self.host else 0,
            prefetched_blocks=self._prefetched_blocks,
            kept_on_host_blocks=self.host.num_kept if self.host else 0,
        )

    def check_integrity(self) -> None:
        """Verify every invariant across pool, index and sessions (for tests)."""
        pool = self.pool
        pool.check_integrity()
        if self.host is not None:
            self.host.check_integrity()
        for h, b in self.index.items():
            assert pool.block_hash[b] == h, f"index maps a hash to block {b}, which holds another"
            assert pool.state[b] != 0, f"index points at free block {b}"
        hashed = sum(1 for h in pool.block_hash if h is not None)
        assert hashed == len(self.index), f"{hashed} hashed blocks, {len(self.index)} indexed"
        refs = [0] * pool.num_blocks
        tails = set()
        for s in self.sessions.values():
            if s.state is SessionState.RUNNING:
                assert s.tail is None, f"running session {s.session_id!r} keeps a tail"
                assert len(s.block_ids) == -(-s.num_computed // self.block_size), (
                    f"session {s.session_id!r}: {len(s.block_ids)} blocks for "
                    f"{s.num_computed} tokens"
                )
                for b in s.block_ids:
                    refs[b] += 1
            elif s.tail is not None:
                b, gen, _ = s.tail
                if pool.state[b] == CACHED and pool.generation[b] == gen:
                    tails.add(b)
        for b in range(pool.num_blocks):
            assert refs[b] == pool.refcount[b], (
                f"block {b}: refcount {pool.refcount[b]} but {refs[b]} running tables hold it"
            )
            if pool.state[b] == CACHED:
                assert pool.block_hash[b] is not None or b in tails, (
                    f"cached block {b} has no hash and is no session's tail"
                )
        sessions = self.sessions
        for b, sid in enumerate(self.block_owner):
            assert sid is None or sid in sessions, (
                f"block {b} is owned by {sid!r}, a session that ended")
