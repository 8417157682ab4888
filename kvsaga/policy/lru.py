"""`lru`: the vLLM-like baseline.

Evicts the block that became evictable longest ago. The manager releases a step's blocks
tail first, so within one context the tail goes before the head; a prefix that many
sessions hit stays recent and so goes last. Knows nothing of tool calls.
"""

from __future__ import annotations

from kvsaga.block_queue import BlockQueue
from kvsaga.policy.base import EvictionPolicy


class LRUPolicy(EvictionPolicy):
    """Least recently cached block first; no knowledge of sessions or tools."""

    name = "lru"

    def __init__(self) -> None:
        super().__init__()
        self._order: BlockQueue | None = None

    def bind(self, view) -> None:
        super().bind(view)
        # The manager's core's queue (C++ when it runs the C++ core); for any other view, Python's.
        core = getattr(view, "core", None)
        self._order = (core.BlockQueue if core is not None else BlockQueue)(view.num_gpu_blocks)
        # On the C++ core the manager may evict straight from the queue's head: the victims
        # choose_victims would name, and blocks_uncached only unlinks them (unless a subclass
        # chooses otherwise).
        plain = type(self).choose_victims is LRUPolicy.choose_victims
        on_cpp = core is not None and core.name == "cpp"
        self.victim_queue = self._order if plain and on_cpp else None
        # Hot path: the pool calls these per block; bind them straight to the queue.
        self.block_cached = self._order.push
        self.block_uncached = self._order.remove
        self.blocks_cached = self._order.push_many
        self.blocks_uncached = self._order.remove_many

    def block_cached(self, block_id: int) -> None:
        self._order.push(block_id)

    def block_uncached(self, block_id: int) -> None:
        self._order.remove(block_id)

    def choose_victims(self, num_blocks: int, now: float) -> list[int]:
        # Only name the victims: the manager evicts them, and eviction unlinks them.
        return self._order.head(num_blocks)

    def eviction_order(self) -> list[int]:
        """Evictable blocks, first victim first (for tests and debugging)."""
        return list(self._order)
