"""HostTier: the host copies of evicted GPU blocks, and the copy plan that moves them.

Pure Python over block ids, like the GPU side. Each host block holds a clean copy of one
full GPU block, indexed by the same content hash; host blocks are dropped in LRU order
when a new copy needs room. Copies are not run here: they accumulate in a `TransferPlan`
that the engine takes once per step (`take_plan`) and runs before its next forward pass.
Host blocks that the pending plan reads or writes are pinned (refcount > 0) until then, so
no later decision of the same step can reuse them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvsaga.block_queue import BlockQueue
from kvsaga.pool import BlockPool
from kvsaga.prefix import PrefixIndex


@dataclass(frozen=True, slots=True)
class TransferPlan:
    """Copies the engine must run before its next forward pass, in this order.

    Attributes:
        offloads: (gpu block, host block) pairs: GPU -> host, for blocks evicted this step.
            Run first: a GPU block offloaded here may be a load's target below.
        loads: (host block, gpu block) pairs: host -> GPU, for host hits and prefetches.
    The transfer engine runs plans in FIFO order on one stream (one thread on CPU), so a
    host block reused by a later plan is read by every earlier plan first.
    """

    offloads: list[tuple[int, int]]
    loads: list[tuple[int, int]]

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

    def has_copy(self, block_hash: bytes) -> bool:
        return self.index.get(block_hash) is not None

    def copy_out(self, gpu_block: int, block_hash: bytes) -> bool:
        """Plan a GPU -> host copy of a block about to be evicted from the GPU.

        Returns:
            False when every host block is pinned by the pending plan (nothing planned).
        """
        pool = self.pool
        if pool.num_free == 0:
            if pool.num_cached == 0:
                return False
            victim = self.order.peek()
            self.index.remove(pool.block_hash[victim])
            pool.evict_many([victim])
        (hb,) = pool.allocate(1)  # ACTIVE: pinned until the plan is taken
        self.index.insert(block_hash, hb)
        pool.block_hash[hb] = block_hash
        self._offloads.append((gpu_block, hb))
        self._pinned.append(hb)
        self.num_offloaded += 1
        return True

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
        """Hold host blocks that are about to be loaded (evictions must not reuse them)."""
        self.pool.acquire_many(host_blocks)
        self._pinned.extend(host_blocks)

    def plan_load(self, host_block: int, gpu_block: int) -> None:
        """A host -> GPU copy of a pinned host block."""
        self._loads.append((host_block, gpu_block))
        self.num_loaded += 1

    def take_plan(self) -> TransferPlan:
        """The pending copies; unpins their host blocks (later plans run after them)."""
        plan = TransferPlan(self._offloads, self._loads)
        self._offloads, self._loads = [], []
        if self._pinned:
            self.pool.release_many(self._pinned)
            self._pinned = []
        return plan

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
