"""HostTier: the host copies of evicted GPU blocks, and the copy plan that moves them.

Pure Python over block ids, like the GPU side. Each host block holds a clean copy of one
full GPU block, indexed by the same content hash; host blocks are dropped in LRU order
when a new copy needs room. Copies are not run here: they accumulate in a `TransferPlan`
that the engine takes once per step (`take_plan`) and runs before its next forward pass.
Host blocks that the pending plan reads or writes are pinned (refcount > 0) until then, so
no later decision of the same step can reuse them.

`HostTierOps` is the manager's side of the tier: which victims get a host copy, loading host
hits and prefetches into fresh GPU blocks, and handing over the plan. It is a mixin of
`KVCacheManager`, kept here so that everything about the host tier reads in one file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kvsaga._validate import is_int
from kvsaga.block_queue import BlockQueue, until_done
from kvsaga.errors import InvalidRequest
from kvsaga.host_tier_loads import HostLoads
from kvsaga.policy.base import Action
from kvsaga.pool import ACTIVE, CACHED, BlockPool, release_again
from kvsaga.prefix import PrefixIndex
from kvsaga.session import Session, SessionState


@dataclass(frozen=True, slots=True)
class TransferPlan:
    """Copies the engine must run before its next forward pass, in this order.

    Attributes:
        offloads: (gpu block, host block) pairs: GPU -> host, for blocks evicted this step.
            Run first: a GPU block offloaded here may be a load's target below.
        loads: (host block, gpu block) pairs: host -> GPU, for host hits and prefetches.
        offload_generations / load_generations: the host pool's generation of each
            offload's host block and the GPU pool's of each load's GPU block when the plan
            was taken (`take_transfers`), so that `drop_transfer` can tell a target reused
            since then; empty for a plan built by hand.
    The transfer engine runs plans in FIFO order on one stream (one thread on CPU), so a
    host block reused by a later plan is read by every earlier plan first.
    """

    offloads: list[tuple[int, int]]
    loads: list[tuple[int, int]]
    offload_generations: list[int] = field(default_factory=list)
    load_generations: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.offloads or self.loads)


class _QueueObserver:
    """Keeps a BlockQueue in LRU order of a pool's CACHED blocks."""

    def __init__(self, queue: BlockQueue) -> None:
        self.block_cached = queue.push
        self.block_uncached = queue.remove
        self.blocks_cached = queue.push_many
        self.blocks_uncached = queue.remove_many


class HostTier:
    """Args:
    num_blocks: host blocks (> 0).
    """

    def __init__(self, num_blocks: int) -> None:
        self.pool = BlockPool(num_blocks, tier="host")
        self.index = PrefixIndex()
        self.order = BlockQueue(num_blocks)  # CACHED host blocks, least recently used first
        self.pool.observer = _QueueObserver(self.order)
        self._offloads: list[tuple[int, int]] = []
        self._loads: list[tuple[int, int]] = []
        self._pinned: list[int] = []
        self.num_offloaded = 0
        self.num_loaded = 0
        # GPU victims whose content this tier already held (no copy made; it stays here).
        self.num_kept = 0

    def has_copy(self, block_hash: bytes) -> bool:
        return self.index.get(block_hash) is not None

    def room(self, kept: list[int]) -> int:
        """How many copies `copy_outs` can plan with the host blocks `kept` pinned: the free
        host blocks and the CACHED ones that are not kept (the rest are pinned by the
        pending plan)."""
        state = self.pool.state
        return self.pool.num_available - sum(1 for hb in kept if state[hb] == CACHED)

    def copy_outs(self, copies: list[tuple[int, bytes]], kept: list[int]) -> None:
        """Plan GPU -> host copies of (GPU block, hash) pairs about to be evicted from the
        GPU, at most `room(kept)`, and count the victims whose content the host blocks
        `kept` already hold (`num_kept`). Those are pinned meanwhile, so that making room
        for a copy cannot evict one (its content would then be on neither tier though
        counted as kept); released, they are the most recently used: a kept copy was just
        used, as a host hit is."""
        self.pool.acquire_many(kept)
        try:
            for gpu_block, block_hash in copies:
                self._copy_out(gpu_block, block_hash)
        finally:
            self._release(kept)
        self.num_kept += len(kept)

    def _release(self, host_blocks: list[int]) -> None:
        """Release host blocks (a `copy_outs` or `unpin`); on a raise, made whole: a call
        cut at its entry is made again (`release_again`), and the blocks a call that began
        cached untold (cut inside it) are queued in the order as its hook would have. Not
        covered: `RELEASE_RETRIES` + 1 cuts in a row at its entry (`release_again` gives up,
        nothing released: the references stay held, pinned by no plan)."""
        pool = self.pool
        try:
            pool.release_many(host_blocks)
        except BaseException as e:
            if not release_again(pool, host_blocks, -1, e):
                state, order = pool.state, self.order
                order.push_many([b for b in dict.fromkeys(host_blocks)
                                 if state[b] == CACHED and b not in order])
            raise

    def _copy_out(self, gpu_block: int, block_hash: bytes) -> None:
        """Plan one GPU -> host copy into a free host block, or into the least recently used
        CACHED one (the caller made sure there is one: `room`)."""
        pool = self.pool
        if pool.num_free == 0:
            victim = self.order.peek()
            self.index.remove(pool.block_hash[victim])
            pool.evict_many([victim])
        (hb,) = pool.allocate(1)  # ACTIVE: pinned until the plan is taken
        self.index.insert(block_hash, hb)
        pool.block_hash[hb] = block_hash
        self._offloads.append((gpu_block, hb))
        self._pinned.append(hb)
        self.num_offloaded += 1

    def run(self, hashes: Sequence[bytes], first: int, limit: int) -> list[int]:
        """Host blocks holding `hashes[first:]`, up to `limit`, stopping at the first miss."""
        get = self.index.get
        found: list[int] = []
        for i in range(first, limit):
            hb = get(hashes[i])
            if hb is None:
                break
            found.append(hb)
        return found

    def pin(self, host_blocks: list[int]) -> None:
        """Hold host blocks that are about to be loaded (evictions must not reuse them). An
        interrupt once the pool took them (its reference finishes after its tell, then
        raises: `calls` moved) leaves them pinned by the pending plan (was: referenced by
        none, for good); the next `take_plan` lets them go."""
        pool, calls = self.pool, self.pool.calls
        try:
            pool.acquire_many(host_blocks)
        except BaseException:
            if pool.calls != calls:
                self._pinned.extend(host_blocks)
            raise
        self._pinned.extend(host_blocks)

    def unpin(self, host_blocks: list[int]) -> None:
        """Let go of host blocks `pin` held for loads that were never planned (the room for
        them could not be made): cached again, at the host pool's most recently used end
        (a touch, as a host hit is; their order before the pin is not kept)."""
        pinned = self._pinned
        for hb in host_blocks:
            pinned.remove(hb)
        self._release(host_blocks)

    def plan_load(self, host_block: int, gpu_block: int) -> None:
        """A host -> GPU copy of a pinned host block."""
        self._loads.append((host_block, gpu_block))
        self.num_loaded += 1

    @property
    def has_plan(self) -> bool:
        """Whether `take_plan` would change anything: copies queued or host blocks pinned
        (a simulator asks at every batch step, and most have none)."""
        return bool(self._offloads or self._loads or self._pinned)

    def take_plan(self, gpu_generation: Sequence[int] | None = None) -> TransferPlan:
        """The pending copies; unpins their host blocks (later plans run after them).
        `gpu_generation`: the GPU pool's, to record the loads' targets' generations.

        All or nothing: an exception (an interrupt) propagates with the plan still pending,
        whole and pinned, for the next take to hand over. A plan taken out of the pending
        lists before its pins were settled was lost on a raise: its host copies stayed
        indexed, their bytes never written (lane s52 takeplan)."""
        offloads, loads, pinned = self._offloads, self._loads, self._pinned
        gen = self.pool.generation
        plan = TransferPlan(
            offloads, loads, [gen[h] for _, h in offloads],
            [] if gpu_generation is None else [gpu_generation[g] for _, g in loads])
        if pinned:
            try:
                self.pool.release_many(pinned)
            except BaseException:
                while True:  # a second interrupt cuts the restartable rollback: restart it
                    try:
                        self._repin(pinned)
                        break
                    except Exception:
                        raise
                    except BaseException:
                        continue
                raise
        # No call from here on: the plan is handed over whole.
        self._offloads, self._loads, self._pinned = [], [], []
        return plan

    def _repin(self, pinned: list[int]) -> None:
        """Undo what `release_many(pinned)` did before it raised, wherever that was: before
        its loop, inside it (an interrupt between two blocks), after it or in its observer
        hook. The host tier's books say what was there: each pinned block's refcount was its
        count in `pinned` (so the entries already released are the first `len(pinned) -
        sum(refcounts)`), each was hashed (released, it became CACHED, never FREE) and the
        CACHED blocks were the order's, which a raising hook leaves untold (`PoolObserver`).
        So: those entries referenced again, their blocks ACTIVE, and `num_cached` the
        order's length. (A CACHED block's `cached_at` is set again when it is released.)
        Restartable: it references them again last first, so that, cut between two blocks
        (a second interrupt: `take_plan` restarts it), the entries still released are again
        the first `len(pinned) - sum(refcounts)`."""
        pool = self.pool
        ref, state = pool.refcount, pool.state
        done = len(pinned) - sum(ref[b] for b in dict.fromkeys(pinned))
        for b in reversed(pinned[:done]):
            ref[b] += 1
            state[b] = ACTIVE
        pool.num_cached = len(self.order)

    def drop_copy(self, host_block: int) -> bool:
        """Forget a CACHED host block's copy (its bytes were never written): unindexed and
        freed. Returns whether it did (False: the block is not CACHED)."""
        pool = self.pool
        if pool.state[host_block] != CACHED:
            return False
        h = pool.block_hash[host_block]
        if h is not None:
            self.index.remove(h)
        pool.evict_many([host_block])
        return True

    def check_integrity(self) -> None:
        pool = self.pool
        pool.check_integrity()
        for h, b in self.index.items():
            assert pool.block_hash[b] == h, f"host index maps a hash to host block {b}"
            assert pool.state[b] != 0, f"host index points at free host block {b}"
        assert sum(1 for h in pool.block_hash if h is not None) == len(self.index)
        pins = [0] * pool.num_blocks
        for b in self._pinned:
            pins[b] += 1
        assert pins == pool.refcount, "host refcounts differ from the pending plan's pins"
        assert len(self.order) == pool.num_cached


def _chain_last(error: BaseException, first: BaseException) -> None:
    """Put `first` at the end of `error`'s context chain (where Python would have, had
    `error` been raised while `first` was handled), unless the chain holds it already."""
    seen = {id(error)}
    while error.__context__ is not None:
        error = error.__context__
        if id(error) in seen or error is first:
            return
        seen.add(id(error))
    if error is not first:
        error.__context__ = first


class HostTierOps(HostLoads):
    """The host-tier half of `KVCacheManager` (a mixin: `self` is the manager, whose
    `host` is a `HostTier` or None, and whose pool, index, owners and policy it uses)."""

    @property
    def host_pool(self) -> BlockPool | None:
        return self.host.pool if self.host is not None else None

    @property
    def host_index(self) -> PrefixIndex:
        return self.host.index if self.host is not None else PrefixIndex()

    def _offload_plan(self, victims: Sequence[int],
                      now: float) -> tuple[list[tuple[int, bytes]], list[int]]:
        """Which victims about to be evicted get a host copy, and which host blocks already
        hold a victim's content: (copies, kept) for `HostTier.copy_outs`, which the
        eviction applies once the GPU tier let the victims go (`EvictionPath._evict`).

        The policy's `action` is asked about the other hashed victims, in order, while the
        host tier has room for another copy (`HostTier.room`): once the copies fill it, the
        rest are discarded without asking (graph's `action` counts a block it is told to
        offload as on the host). Changes neither tier: a hook that raises here, or in the
        eviction after it, leaves the host tier as it was."""
        block_hash, host = self.pool.block_hash, self.host
        get = host.index.get
        kept: list[int] = []  # host blocks holding a victim's content already
        fresh: list[int] = []  # victims with no host copy
        for b in victims:
            h = block_hash[b]
            if h is None:  # unhashed tails are never reused by anyone else
                continue
            hb = get(h)
            if hb is None:
                fresh.append(b)
            else:
                kept.append(hb)
        room, action = host.room(kept), self.policy.action
        copies: list[tuple[int, bytes]] = []
        for b in fresh:
            if len(copies) == room:
                break
            if action(b, now) == Action.OFFLOAD:
                copies.append((b, block_hash[b]))
        return copies, kept

    def prefetch(
        self, session_id: str, *, now: float | None = None, max_blocks: int | None = None
    ) -> int:
        """Start loading a paused session's offloaded blocks back to the GPU tier.

        The blocks loaded are those of its cached run past its first GPU miss
        (`_host_walk`: a block still on the GPU is held there, not loaded again), up to
        `max_blocks` loads. Room comes from free blocks, then from evicting others' blocks
        by the policy; the session's resident blocks are held meanwhile, and its retained
        tail, unless only the tail's block leaves room for the loads. The loaded blocks are
        CACHED (ranked by the policy) until the session's next `begin_step` hits them; a
        resume before the copy ends waits for the remainder only, since the engine's
        forward waits on the plan's transfer. A prefetch whose room cannot be made (the
        policy raises) changes nothing but the host tier's recency: the host blocks it meant
        to load count as just used (`HostTier.unpin`). One whose closing release raises (the
        pool's `blocks_cached`) is completed: its loads stay planned, and the blocks that
        release cached, which the policy never saw, are dropped (freed and unindexed).

        Returns:
            Blocks whose load was planned.
        """
        s = self._session(session_id)
        if max_blocks is not None and (not is_int(max_blocks) or max_blocks < 0):
            raise InvalidRequest(f"max_blocks must be an int >= 0 or None, got {max_blocks!r}")
        now = self._time(now)
        if self.host is None or s.state is SessionState.RUNNING:
            return 0
        self._changes += 1  # loads and evictions may follow (KVCacheManager.cache_version)
        limit = min(len(s.block_hashes), s.num_computed // self.block_size)
        get = self.index.get
        first = 0
        while first < limit and get(s.block_hashes[first]) is not None:
            first += 1
        run = self._host_walk(s.block_hashes, first, limit)
        if not run or max_blocks == 0:  # (a run starts with a load)
            return 0
        # Hold the session's resident head so that making room cannot evict it (a hold, not
        # a hit: kv_utilization credits a block's cached time only to a real hit). From the
        # hold on, an interrupt lets go of what is held as the closing release does (s56
        # cuts: was leaked): `stage` 0, the hold not returned (`calls` tells whether it
        # took); 1, the head held; 2, the run taken too, the table naming its loads left.
        resident = [get(h) for h in s.block_hashes[:first]]
        pool, stage, calls, tail, loads, cut = self.pool, 0, self.pool.calls, -1, 0, None
        run_ids: list[int] = []
        try:
            pool.hold_many(resident)
            stage = 1
            run = self._fit_run(run, max_blocks)
            if run:
                loads = sum(1 for _, on_gpu in run if not on_gpu)
                run_ids, held = self._take_run(s, first, run, now,
                                               s.tail is not None and self._tail_alive(s),
                                               hold=True)
                tail, stage = (s.tail[0] if held else -1), 2
                self._prefetched_blocks += loads
                self._name_loads(s, first, run, run_ids)
        except BaseException as e:
            if stage == 0 and pool.calls == calls:  # (the hold raised: it took nothing)
                raise
            if stage == 2:
                until_done(self._name_loads, s, first, run, run_ids)
            cut = e
        # CACHED again (hashed, or the tail kept), tails first
        closing, calls = ([tail] if tail >= 0 else []) + (resident + run_ids)[::-1], pool.calls
        try:
            pool.release_many(closing, keep_unhashed=tail)
        except BaseException as e:
            if cut is not None:  # the first error stays in the chain (s56 cutsfix: was lost)
                _chain_last(e, cut)
            # Its `blocks_cached` raised: the blocks it cached stay unseen by the policy (the
            # hold told it they left). Dropped as an eviction would (the loaded ones keep
            # their host copies, their loads planned into free blocks); before, they stayed
            # CACHED, and a hit on them raised in the policy (review s50 diff-hooks, 2). A
            # call cut at its entry is made again (`release_again`).
            # (`calls` moved: it returned, told; read inline, with no call before it)
            again = None
            if pool.calls == calls:
                try:
                    told = release_again(pool, closing, tail, e, calls)
                except BaseException as second:  # a signal at its entry (s56 cuts): read
                    # with no call; none began (the Python pool's, cut at its entry): held
                    if pool.__class__ is BlockPool and pool._releasing is not closing:
                        raise
                    told, again = False, second  # (a hook raise, the C++ pool's: untold)
                if not told:
                    state = pool.state
                    again = self._evict_unseen([b for b in closing
                                                if state[b] == CACHED]) or again
            if again is not None:
                raise again from e
            raise
        if cut is not None:
            raise cut
        return loads

    def _name_loads(self, s: Session, first: int, run: list[tuple[int, bool]],
                    blocks: list[int]) -> None:
        """Name a prefetch's loaded `blocks` in paused `s`'s table (so that `end_session`
        finds what the session owns), noting the blocks they replace (`_note_left`).
        Idempotent (a prefetch's handler completes it: `until_done`): the blocks replaced
        are noted before the table changes, and an entry changed already is skipped."""
        table = s.block_ids
        names = [(first + i, blocks[i]) for i, (_, on_gpu) in enumerate(run)
                 if not on_gpu and first + i < len(table) and table[first + i] != blocks[i]]
        self._note_left(s, [table[p] for p, _ in names], blocks)
        for p, b in names:
            table[p] = b

    def take_transfers(self) -> TransferPlan:
        """Hand the pending copies to the engine, which must run them before its next forward
        pass. Unpins the host blocks they use (later plans run after them, in order). A plan
        whose copy failed goes back through `drop_transfer`."""
        if self.host is None:
            return TransferPlan([], [])
        return self.host.take_plan(self.pool.generation)

    def drop_transfer(self, plan: TransferPlan) -> dict[str, int]:
        """Forget what a plan from `take_transfers` was to write, after its copy failed (or
        after a failed plan before it, whose blocks it may have copied on): nothing may
        hit bytes that were never written.

        Its offloads' host blocks leave the host tier (unindexed, freed). Its loads' GPU
        blocks leave the prefix index: a CACHED one (a prefetch's) is freed; an ACTIVE one
        (a host hit of a running step) is taken out of every running table that holds it,
        each such session going back to the block before it (as `discard_writes` does: the
        later blocks released, its tokens computed again by its next step). A target
        reused since the plan was taken (another generation) is left alone. Must run once
        the plan's copies have stopped (the transfer engine's `wait` returned or raised).

        Returns:
            The running sessions cut back, with their new `num_computed_tokens`.
        Raises:
            InvalidRequest: `plan` was not taken here with its generations (a plan that
                names blocks without them cannot be told apart from reused ones); nothing
                changed.
        """
        if not isinstance(plan, TransferPlan) or (
                len(plan.offload_generations) != len(plan.offloads)
                or len(plan.load_generations) != len(plan.loads)):
            raise InvalidRequest("drop_transfer takes a plan from take_transfers, with the "
                                 "generations of its targets")
        if not plan:
            return {}
        if self.host is None:
            raise InvalidRequest("drop_transfer: this manager has no host tier")
        self._changes += 1
        host = self.host
        host_gen = host.pool.generation
        for (_, hb), gen in zip(plan.offloads, plan.offload_generations, strict=True):
            if host_gen[hb] == gen:
                host.drop_copy(hb)
        pool = self.pool
        state, generation = pool.state, pool.generation
        stale: set[int] = set()
        for (_, b), gen in zip(plan.loads, plan.load_generations, strict=True):
            if generation[b] != gen:
                continue
            if state[b] == CACHED:
                self._drop(b)
            elif state[b] == ACTIVE:
                stale.add(b)
        return self._take_back(stale, {}) if stale else {}
