"""Host hits and prefetches taken into fresh GPU blocks: the cached run of a session's blocks
past its first GPU miss (`_host_walk`, `_fit_run`), its resident blocks and retained tail
referenced and its host blocks loaded (`_take_run`, `_load_into_gpu`). A mixin of
`KVCacheManager` through `kvsaga.host_tier.HostTierOps`; split from kvsaga/host_tier.py by
concept.

Interrupts (a signal's exception at any point CPython checks: a C call's return, a loop's
jump back, a Python function's entry): each step that takes references reads the pool's
`calls` before its call, so that its handler knows a call that completed as the interrupt
came (the C++ pool's, raised as it returns; the Python pool's, which finishes after its tell
and raises) and lets go of its references too; the loaded blocks' list is built inside the
load's own handler; the callers' frames have their own handlers (`begin_step`'s
`_full_block_hits` and `_begin`, s56 cutsfix; `prefetch`'s stages). Not covered: a second
interrupt inside a handler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvsaga.block_queue import until_done
from kvsaga.pool import ACTIVE, CACHED, BlockPool, release_again
from kvsaga.session import Session


class HostLoads:
    """The loads half of `HostTierOps` (`self` is the manager)."""

    def _load_into_gpu(self, s: Session, first: int, run: list[tuple[int, bool]],
                       now: float) -> list[int]:
        """The GPU blocks for `s`'s blocks `first...` from a fitted run (`_fit_run`'s;
        its resident blocks referenced by the caller): those as they are, and a fresh GPU
        block loaded from each host block.

        The fresh blocks are ACTIVE, hashed and owned by the session; the loads must not
        exceed the free plus evictable GPU blocks, and their hashes must miss the GPU tier.
        All or nothing: an interrupt once the pool allocated (on the C++ core: as its call
        returned, the ids lost but for the pool's record, `last_result`), in the loop or as
        the list is built takes the new blocks back (`_unload`) and unpins the host blocks.
        """
        host, pool = self.host, self.pool
        positions = [first + i for i, (_, on_gpu) in enumerate(run) if not on_gpu]
        host_blocks = [b for b, on_gpu in run if not on_gpu]
        n = len(host_blocks)
        host.pin(host_blocks)  # evictions below must not reuse them (no point from here on)
        if n > pool.num_free:
            try:
                self._evict(n - pool.num_free, now)
            except BaseException:  # the policy raised or named invalid victims
                host.unpin(host_blocks)
                raise
        calls, planned, loaded = pool.calls, len(host._loads), host.num_loaded
        try:
            gpu = pool.allocate(n)
            owner, position, block_hash = self.block_owner, self.block_position, pool.block_hash
            for k, b in enumerate(gpu):
                p = positions[k]
                h = s.block_hashes[p]
                if self.index.insert(h, b):
                    block_hash[b] = h
                owner[b] = s.session_id
                position[b] = p
                host.plan_load(host_blocks[k], b)
            fresh = iter(gpu)
            blocks = [b if on_gpu else next(fresh) for b, on_gpu in run]
        except BaseException:
            if pool.calls != calls:  # allocated: the ids are the pool's record of the call
                until_done(self._unload, pool.last_result,
                           [s.block_hashes[p] for p in positions], planned, loaded)
            host.unpin(host_blocks)
            raise
        return blocks

    def _unload(self, gpu: list[int], hashes: list[bytes], planned: int, loaded: int) -> None:
        """Take back `_load_into_gpu`'s fresh GPU blocks `gpu` (cut by an interrupt), meant
        for `hashes`: the loads planned since the host tier had `planned` (and counted
        `loaded`) dropped, each block unindexed where the index names it (it may be, its
        hash not yet set: cut as the C++ index's insert returned), unowned and released
        (FREE: unhashed). Idempotent (`until_done`: it decides by the index and the
        states)."""
        host, pool = self.host, self.pool
        del host._loads[planned:]
        host.num_loaded = loaded
        get, remove = self.index.get, self.index.remove
        block_hash, owner, state = pool.block_hash, self.block_owner, pool.state
        for b, h in zip(gpu, hashes, strict=True):
            if get(h) == b:
                remove(h)
            block_hash[b] = None
            owner[b] = None
        live = [b for b in gpu if state[b] == ACTIVE]
        if live:
            pool.release_many(live)

    def _host_walk(self, hashes: Sequence[bytes], first: int,
                   limit: int) -> list[tuple[int, bool]]:
        """The cached run of `hashes[first:limit]` past a GPU miss at `first`: per block,
        (its GPU block, True) where the prefix index holds it, else (its host block, False)
        where the host tier does, up to the first block that neither holds. A block still
        resident on the GPU is taken there, never loaded again (a second copy could not be
        indexed). Changes nothing; `lookup` counts the same run."""
        get, host_get = self.index.get, self.host.index.get
        run: list[tuple[int, bool]] = []
        for i in range(first, limit):
            h = hashes[i]
            b = get(h)
            if b is None:
                b = host_get(h)
                if b is None:
                    break
                run.append((b, False))
            else:
                run.append((b, True))
        return run

    def _fit_run(self, run: list[tuple[int, bool]],
                 max_loads: int | None = None) -> list[tuple[int, bool]]:
        """The longest head of `run` (`_host_walk`'s) that finds room now: each load, and
        each CACHED GPU block, takes one free or evictable GPU block; at most `max_loads`
        loads (None: no limit)."""
        state = self.pool.state
        room = self.pool.num_available
        loads = 0
        for i, (b, on_gpu) in enumerate(run):
            if on_gpu:
                need = 1 if state[b] == CACHED else 0
            else:
                if loads == max_loads:
                    return run[:i]
                loads += 1
                need = 1
            if need > room:
                return run[:i]
            room -= need
        return run

    def _take_run(self, s: Session, first: int, run: list[tuple[int, bool]], now: float,
                  tail: bool, hold: bool = False) -> tuple[list[int], bool]:
        """Referenced GPU blocks for `s`'s blocks `first...` from a fitted run (`_fit_run`):
        its GPU blocks, taken before the loads' evictions, and its host blocks loaded; and
        whether `s`'s retained tail (alive) was referenced too (`_hold_tail`; `tail`: it
        continues the run, or the caller holds it anyway). `hold`: the GPU blocks and the
        tail are only held (`BlockPool.hold_many`: a prefetch's), not hits. All or nothing:
        when the policy raises (the loads' evictions, or its pool hook as the resident blocks
        or the tail are taken, which then takes none of them) or an interrupt comes, every
        reference taken here is dropped (the caller drops its own). `calls`, read before
        each take, tells a take that completed as the interrupt came (s56 cuts: was
        leaked, as were the loaded blocks cut past `_load_into_gpu`)."""
        pool = self.pool
        take = pool.hold_many if hold else pool.acquire_many
        resident = [b for b, on_gpu in run if on_gpu]
        num_loads = len(run) - len(resident)
        taken: list[int] = []
        held = False
        calls = pool.calls
        try:
            take(resident)
            taken, calls = resident, pool.calls
            held = self._hold_tail(s, tail, num_loads, take)
            calls = -1  # (past the takes)
            return self._load_into_gpu(s, first, run, now), held
        except BaseException:  # tails first, as `_release_table`
            if calls >= 0 and pool.calls != calls:  # a take completed, then the interrupt
                if taken is resident:  # (by identity: `resident` is [] for an all-host
                    held = True  # run; s56 cutsfix: was `if taken:`, the tail leaked)
                else:
                    taken = resident
            kept = s.tail[0] if held else -1
            self._let_go(([kept] if held else []) + taken[::-1], kept)
            raise

    def _let_go(self, ids: list[int], kept: int) -> None:
        """Release references a failed load took (`kept`: a tail among them, cached again as
        unhashed); a release cut at its entry is made again (`release_again`), then the
        error propagates. A release that began and raised (its `blocks_cached` hook: the
        policy told of none) has its cached blocks dropped unseen (`_drop_hits`' rule; s56
        cutsfix: were left CACHED unqueued, 'block N is not queued' later)."""
        pool = self.pool
        calls = pool.calls
        try:
            pool.release_many(ids, keep_unhashed=kept)
        except BaseException as e:  # (cut at its entry: released now, then raised)
            again = None
            try:  # (`calls` moved: returned, told; read inline, with no call before it)
                told = pool.calls != calls or release_again(pool, ids, kept, e, calls)
            except BaseException as cut:  # none began, or a signal at its entry after a
                # release that began (its hook raised: untold; read with no call)
                told = pool.__class__ is BlockPool and pool._releasing is not ids
                again = cut
            if not told:
                state = pool.state
                again = self._evict_unseen([b for b in ids if state[b] == CACHED]) or again
            if again is not None:
                raise again from e
            raise

    def _load_from_host(self, s: Session, hits: list[int], limit: int, now: float,
                        tail_at: int = -1) -> tuple[list[int], bool]:
        """Referenced GPU blocks for the cached run of `s`'s blocks past its referenced GPU
        `hits` (up to a miss) up to `limit` (`_host_walk`: GPU blocks taken, host blocks
        loaded; as far as there are free or evictable GPU blocks for them), and whether
        `s`'s retained tail was referenced: when it continues the run (`tail_at`: its block
        position, or -1) and the loads evict, it is held first, unless only its block leaves
        room for them (more hits then: the tail's block would be a load's). When the loads
        raise (or an interrupt comes here), the caller (`_full_block_hits`) releases `hits`,
        after `_take_run`'s own (s56 cutsfix: was here, and a cut at this call's entry or in
        `_reusable_tail` leaked them)."""
        first = len(hits)
        run = self._fit_run(self._host_walk(s.block_hashes, first, limit))
        if not run:
            return [], False
        loads = sum(1 for _, on_gpu in run if not on_gpu)
        blocks, held = self._take_run(s, first, run, now, tail_at == first + len(run))
        self._host_hit_tokens += loads * self.block_size
        return blocks, held

    def _hold_tail(self, s: Session, continues: bool, num_loads: int,
                   take: Callable[[list[int]], None]) -> bool:
        """Reference `s`'s retained tail (alive: the caller checked) with `take` (the pool's
        acquire_many or hold_many) before `num_loads` loads when it `continues` them, the
        loads evict (the tail may be a victim), and a block stays free or evictable for the
        tail past them. Returns whether it did."""
        pool = self.pool
        if not continues or num_loads <= pool.num_free or num_loads >= pool.num_available:
            return False
        take([s.tail[0]])
        return True
