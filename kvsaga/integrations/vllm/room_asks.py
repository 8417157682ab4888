"""How much the retention connector releases when vLLM asks for room before it preempts.

vLLM asks `has_pending_block_frees` right before it would preempt a running request. A yes
means "blocks are on their way", so vLLM does not retry that request's allocation in the
same step: it skips it, and every running request after it, and retries the next step. The
release must therefore cover the request by then. The connector cannot see which request
asked, nor how many blocks it lacks, so `RoomAsks` grows the release while vLLM keeps
asking: the first ask of a run of steps that ask wants one block beyond the free count,
each later ask twice the last, up to what one request can take in a step (a full token
budget in blocks, plus the block its last token may open). A prefill chunk k blocks short
so waits about log2(k) steps, not k; a decode, one block short, gets exactly one. After
the step, the headroom the connector keeps includes the last ask's blocks while the run
lasts (`step_done`), so a request admitted behind the one that asked cannot take them
first; a step without an ask ends the run.
"""

from __future__ import annotations


class RoomAsks:
    """The run of vLLM's asks for room (the module docstring).

    Args:
        max_blocks: the most blocks one request can newly need in a step.
    """

    def __init__(self, max_blocks: int) -> None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        self.max_blocks = max_blocks
        self.blocks = 0  # what the last ask of the run wanted beyond the free count
        self._asked = False  # whether vLLM asked during the step being scheduled

    @classmethod
    def for_budget(cls, max_num_batched_tokens: int, block_size: int) -> RoomAsks:
        """For a step's token budget in blocks, rounded up, plus one."""
        return cls(-(-max_num_batched_tokens // block_size) + 1)

    def ask(self) -> int:
        """vLLM asks: the blocks to have free beyond the current free count."""
        self._asked = True
        self.blocks = min(max(1, 2 * self.blocks), self.max_blocks)
        return self.blocks

    def step_done(self) -> int:
        """The step is scheduled: the blocks to keep free for the request that asked in it
        (0, and the run ends, when none asked)."""
        if not self._asked:
            self.blocks = 0
        self._asked = False
        return self.blocks
