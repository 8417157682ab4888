"""The KVCacheManager's eviction path: the policy names victims, the pool, the prefix index
and the owners lose them (a mixin of `kvsaga.manager.KVCacheManager`).

Three ways, the same evictions each (issue 11: eviction cost):
- lru on the C++ core: its victims are its queue's head, evicted in one core call
  (`ManagerCore.evict_head`);
- a grouped policy whose usual search answers with runs off its sessions' tails (ttl's,
  graph's and saga's whole-run searches, kvsaga/policy/search.py `_index_victims` and
  fast_search.py; the policy says so by `evicts_runs`), on
  the C++ core with no host tier and no journal: `choose_victims(n, now, True)` returns None
  and leaves the runs in the policy's `_runs`, and the core evicts them
  (`ManagerCore.evict_runs`, csrc/tail_runs.h): no Python list of victims, no check of one,
  and no call back into the policy's `blocks_uncached`, whose cut of the groups the core
  makes itself (the same groups and marks after it). The core checks that the pool's
  observer is the policy (read there: the property's call from Python is a cold call per
  eviction); if not, the runs go the list's way (`listed_runs`);
- otherwise the policy's list of victims, checked, journaled, and evicted (the pool calls
  the policy's `blocks_uncached`), with a host tier offloaded: which victims get a copy is
  decided before the eviction (`_offload_plan`, the policy's `action`), the copies planned
  only once it succeeded, so that a hook that raises in either changes neither tier's
  blocks or index. (When the eviction makes room for a host hit's load or a prefetch, the
  host blocks pinned for it come back, on a raise, as most recently used: `HostTier.unpin`
  keeps their content and index, not their place in the host tier's LRU order.)
"""

from __future__ import annotations

from kvsaga.block_queue import until_done
from kvsaga.pool import CACHED


class EvictionPath:
    """`_evict`, `_victims_valid`, `_drop` (see the module docstring)."""

    def _evict(self, num_blocks: int, now: float) -> None:
        if self._journal is not None:
            self._drop_ended_journal()
        self._changes += 1
        policy, hot = self.policy, self._hot
        queue = getattr(policy, "victim_queue", None)
        if queue is not None and hot is not None and self.host is None and (
            self.pool.observer is policy
        ):  # LRU on the C++ core: its victims are the queue's head, evicted in one call
            if self._journal is not None:
                self._note_evicted(queue.head(num_blocks))
            hot.evict_head(queue, num_blocks)
            self._evicted_blocks += num_blocks
            return
        # Runs for the core (its own check: the pool's observer is the policy), unless the
        # policy's `choose_victims` is set on the instance (a test's or a bench's hook).
        if getattr(policy, "evicts_runs", False) and hot is not None and self.host is None and (
                self._journal is None and "choose_victims" not in policy.__dict__):
            victims = policy.choose_victims(num_blocks, now, True)
            if victims is None:  # runs off its groups' tails
                if hot.evict_runs(policy, num_blocks):
                    self._evicted_blocks += num_blocks
                    return
                victims = policy.listed_runs()  # (another observer: the list's way)
        else:
            victims = policy.choose_victims(num_blocks, now)
        # One snapshot of the answer, checked, journaled, offloaded and evicted: a hook run
        # before the eviction (`action`, via `_offload_plan`) may change the policy's list,
        # and both cores must evict the ids checked (a tuple, so no later callee changes it).
        if isinstance(victims, list):
            victims = tuple(victims)
        # (the core's check and the journal's test inline: fewer Python calls)
        if not (hot.victims_valid(victims, num_blocks) if hot is not None
                else self._victims_valid(victims, num_blocks)):
            raise RuntimeError(f"policy {policy.name!r} named invalid victims "
                               f"{list(victims)} for {num_blocks} blocks")
        if self._journal is not None:
            self._note_evicted(victims)
        # The host copies are decided first (the policy's `action`), and planned only once
        # the eviction succeeded: a hook that raises in either changes no tier's blocks.
        offload = self._offload_plan(victims, now) if self.host is not None else None
        if hot is not None:  # the same loops, in the C++ core
            hot.evict_blocks(victims)
        else:
            # Unindexed and disowned once the pool, which tells the policy first, has freed
            # them: a raising `blocks_uncached` changes nothing (review s49 hooks, finding 2).
            # An interrupt once the pool evicted (inside it after the tell, or in the loop
            # below) finishes the unindexing before it propagates (`_forget_evicted`).
            pool = self.pool
            owner, index_remove, calls = self.block_owner, self.index.remove, pool.calls
            try:
                for b, h in zip(victims, pool.evict_many(victims), strict=True):
                    if h is not None:
                        index_remove(h)
                    owner[b] = None
            except BaseException:
                if pool.calls != calls:
                    until_done(self._forget_evicted, victims, pool.last_result)
                raise
        if offload is not None:  # (copies of blocks just freed: nothing reuses them before)
            self.host.copy_outs(*offload)
        self._evicted_blocks += num_blocks

    def _victims_valid(self, victims: list[int], num_blocks: int) -> bool:
        """`num_blocks` distinct CACHED blocks. Only a list or a tuple (TypeError otherwise,
        as the C++ core's check, which reads the victims once: an iterator would be used
        up there before the eviction read it)."""
        if self._hot is not None:
            return self._hot.victims_valid(victims, num_blocks)
        if not isinstance(victims, (list, tuple)):
            raise TypeError("the policy's victims must be a list or tuple of block ids, "
                            f"got {type(victims).__name__}")
        state = self.pool.state
        return (
            len(victims) == num_blocks
            and len(set(victims)) == num_blocks
            and not any([state[b] != CACHED for b in victims])
        )

    def _drop(self, block_id: int) -> None:
        """Evict one CACHED block: unindex it and return it to the free queue. An interrupt
        once the pool evicted it (on the C++ core: as its call returned) finishes the
        unindexing before it propagates: the prefix index never names a free block."""
        self._changes += 1
        self._note_evicted(None)  # no block taken in its place
        pool = self.pool
        calls = pool.calls
        try:
            (h,) = pool.evict_many([block_id])  # (it tells the policy first, as `_evict`)
            if h is not None:
                self.index.remove(h)
            self.block_owner[block_id] = None
        except BaseException:
            if pool.calls != calls:  # evicted (the hashes: the pool's record of its call)
                until_done(self._forget_evicted, (block_id,), pool.last_result)
            raise

    def _forget_evicted(self, victims, hashes) -> None:
        """After an eviction of `victims` (their old `hashes`) that an interrupt cut as the
        pool's call returned or after it: each one's hash unindexed where the index still
        names it, its owner cleared. Idempotent (`until_done` reruns it when cut)."""
        get, remove, owner = self.index.get, self.index.remove, self.block_owner
        for b, h in zip(victims, hashes, strict=True):
            if h is not None and get(h) == b:
                remove(h)
            owner[b] = None
