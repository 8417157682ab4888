"""BlockLedger: the `BlockView` kvsaga's policies read, over blocks another engine owns.

vLLM owns its blocks (GPU blocks in the `BlockPool`, CPU chunks in the offload manager); the
integration keeps, per block id, the facts a policy ranks by (owning session, position in
that context, a generation) and reports which blocks are evictable *by kvsaga's decision*
(`cache` / `uncache` drive the policy's observer calls). Plain Python, no vLLM import.
"""

from __future__ import annotations

from collections.abc import Callable

from kvsaga.policy import EvictionPolicy


class BlockLedger:
    """Per-block facts for a policy, and the set of blocks it may choose among.

    Args:
        policy: the kvsaga policy to bind (it reads this ledger as its `BlockView`).
        num_blocks: block ids are 0 .. num_blocks - 1.
        block_size: tokens per block.
        usage: returns the share of the engine's blocks in use by running requests.
    """

    def __init__(
        self,
        policy: EvictionPolicy,
        num_blocks: int,
        block_size: int,
        usage: Callable[[], float] = lambda: 0.0,
    ) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(
                f"num_blocks and block_size must be > 0, got {num_blocks}, {block_size}"
            )
        self.num_gpu_blocks = num_blocks
        self.block_size = block_size
        self.num_host_blocks = 0  # the engine's own tiers are not kvsaga's to offload to
        self.block_owner: list[str | None] = [None] * num_blocks
        self.block_position = [0] * num_blocks
        self.block_generation = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self._cached = bytearray(num_blocks)
        # Kept as blocks are tracked: a sum over `_cached` walked every block, at each
        # `choose_victims` of `KVSagaCachePolicy` (its `_usage` reads it).
        self._num_cached = 0
        self._usage = usage
        self.policy = policy
        policy.bind(self)

    # -- BlockView --------------------------------------------------------------------------
    def usage(self) -> float:
        return self._usage()

    def is_cached(self, block_id: int) -> bool:
        return bool(self._cached[block_id])

    @property
    def num_cached(self) -> int:
        return self._num_cached

    # -- what the integration reports ----------------------------------------------------------
    def cache(
        self, block_id: int, owner: str | None, position: int, block_hash: bytes | None = None
    ) -> None:
        """The block became evictable by kvsaga's decision, as `owner`'s block at `position`
        (owner None: plain cache, shared or left by an ended session)."""
        if self._cached[block_id]:
            raise ValueError(f"block {block_id} is already tracked")
        self.block_owner[block_id] = owner
        self.block_position[block_id] = position
        self.block_hash[block_id] = block_hash
        self.block_generation[block_id] += 1
        self._cached[block_id] = 1
        self._num_cached += 1
        self.policy.block_cached(block_id)

    def uncache(self, block_id: int) -> None:
        """The block left kvsaga's choice (released, reused, or evicted)."""
        if not self._cached[block_id]:
            raise ValueError(f"block {block_id} is not tracked")
        self.policy.block_uncached(block_id)
        self._cached[block_id] = 0
        self._num_cached -= 1

    def refile(self, block_id: int, owner: str | None, position: int) -> None:
        """Change a tracked block's owner or position (the policy sees it leave and return)."""
        h = self.block_hash[block_id]
        self.uncache(block_id)
        self.cache(block_id, owner, position, h)
