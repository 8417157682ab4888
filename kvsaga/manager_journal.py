"""The KVCacheManager's eviction journal: which blocks were evicted since a mark, so that a
caller holding `lookup` answers can tell what they are now without asking again.

`cache_version` changes at every eviction; under memory pressure nearly every decode block
evicts one, and a scheduler that keeps its waiting steps' lookups (or a refusal of them)
only while the version stands asks again at nearly every batch step. Most evictions take a
block no waiting step hits, or the tail of a paused session's context (the waiting step's
own): `lookup_after` tells, per answer, from the journal's (block, hash, position) of each
victim, what `lookup` would say now, or that it cannot tell.
A mixin of `kvsaga.manager.KVCacheManager` (its `_evict` and `_drop` write the journal, and
`_evict` drops one another change has ended)."""

from __future__ import annotations

from collections.abc import Sequence

from kvsaga.errors import InvalidRequest
from kvsaga.manager_types import DIGEST_BYTES, StepLookup, _check_digest

# One journal entry per `cache_version` change it accounts for: the victims of one eviction,
# as (block, hash or None, position in its session's table) read before they were evicted.
Victims = list[tuple[int, bytes | None, int]]


class EvictionJournal:
    """`start_journal`, `journal`, `lookup_stands` (see the module docstring)."""

    _journal: list[Victims] | None = None
    _journal_from = 0

    def start_journal(self) -> None:
        """Record the evictions from now on (read them with `journal`); a new start drops
        the old record. Changes nothing else."""
        self._journal = []
        self._journal_from = self._changes

    def stop_journal(self) -> None:
        """Record no more evictions."""
        self._journal = None

    def journal(self) -> list[tuple[int, bytes | None, int]] | None:
        """The blocks evicted since `start_journal`, as (block, its hash then or None, its
        position), when evictions that made room for new blocks are all that changed the
        cache since then but blocks registered in the prefix index and slots given to
        running steps (no step begun, finished, preempted or ended, no block dropped
        without taking its place, no prefetch, no host tier): each victim then stands for
        a block taken (the C++ core's LRU evicts its queue's head: read before it goes).
        None otherwise, or when no journal was started."""
        log = self._journal
        if log is None or self.host is not None or self._changes - self._journal_from != len(log):
            return None
        return [v for victims in log for v in victims]

    def _drop_ended_journal(self) -> None:
        """Drop a kept journal that another change (or a host tier) has ended, before an
        eviction: `journal` answers None from then on, and kept, the record would grow by
        one entry at every later eviction and keep `_evict` off its fast path of runs."""
        if self.host is not None or self._changes - self._journal_from != len(self._journal):
            self._journal = None

    def _note_evicted(self, victims: list[int] | None) -> None:
        """Journal one eviction, before it happens, if a journal is kept (None: a change
        the journal does not account for, which ends it)."""
        if self._journal is None:
            return
        if victims is None:
            self._journal = None
            return
        block_hash, position = self.pool.block_hash, self.block_position
        self._journal.append([(b, block_hash[b], position[b]) for b in victims])

    def lookup_after(self, session_id: str, found: StepLookup, hashes: Sequence[bytes],
                     evicted: list[tuple[int, bytes | None, int]]) -> StepLookup | None:
        """`lookup`'s answer now for session `session_id`'s prompt whose leading full-block
        hashes are `hashes` (those known: at least its hits'), given `found`, its
        answer before the evictions `evicted` (from `journal`: the only changes since but
        blocks registered in the index and running steps' slots). `found` itself when no
        victim was one of its GPU hits (a hashed block sits in the index under its hash, at
        the same position in every table that holds it) or its session's retained tail,
        and the prompt's first block past its hits is still not in the index; `found`
        less its last k hits when the victims among its hits were exactly those (CACHED,
        as every victim: k fewer hits, k fewer of them cached) and its session keeps no
        live retained tail (the fewer hits could end where the tail starts, which `lookup`
        would then count); None (ask `lookup`) for anything else, and with a host tier (an
        eviction may offload a block the prompt would hit there)."""
        if self.host is not None:
            return None
        if isinstance(hashes, (str, bytes, bytearray, memoryview)) or not isinstance(
                hashes, Sequence):
            raise InvalidRequest(f"hashes must be a sequence (list or tuple) of {DIGEST_BYTES}"
                                 f"-byte bytes digests, got {type(hashes).__name__}")
        n = found.gpu_hit_blocks
        known = min(n, len(hashes))
        s = self.sessions.get(session_id)
        tail = s.tail[0] if s is not None and s.tail is not None else -1
        lost = set()
        for b, h, p in evicted:
            if b == tail or (h is not None and known <= p < n):
                return None  # its tail, or a hit whose hash is not in `hashes`
            if h is not None and p < n:
                _check_digest(hashes, p, "hashes")
                if hashes[p] == h:
                    lost.add(p)
        k = len(lost)
        if k and (found.tail_tokens or min(lost) != n - k or (
                tail >= 0 and self._tail_alive(s))):
            return None  # (fewer hits may end where the session's retained tail starts)
        # The first block past the hits must still miss (unless the prompt has none).
        if n - k < (found.num_prompt_tokens - 1) // self.block_size:
            if n - k >= len(hashes):
                return None
            _check_digest(hashes, n - k, "hashes")  # the cores' `get` differ on the rest
            if self.index.get(hashes[n - k]) is not None:
                return None
        if not k:
            return found
        bs = self.block_size
        return StepLookup(found.num_prompt_tokens, (n - k) * bs, n - k,
                          found.gpu_cached_blocks - k, 0, 0, bs)
