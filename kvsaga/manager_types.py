"""What the manager's calls return (`StepStart`, `StepLookup`, `CacheStats`) and the argument
checks they share; kvsaga.manager re-exports the types (import them from there)."""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from kvsaga._validate import is_int
from kvsaga.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class StepStart:
    """What `begin_step` found.

    Attributes:
        num_prompt_tokens: tokens of the prompt.
        num_cached_tokens: leading prompt tokens whose K/V is already in `block_ids`;
            always < num_prompt_tokens, so the last prompt token is computed for its logits.
        block_ids: the block table so far (the cached blocks).
    """

    num_prompt_tokens: int
    num_cached_tokens: int
    block_ids: list[int]


@dataclass(frozen=True, slots=True)
class StepLookup:
    """What `begin_step` would find for a prompt now, from `lookup` (which changes nothing).

    Attributes:
        num_prompt_tokens: tokens of the prompt.
        num_cached_tokens: prompt tokens `begin_step` would find cached (GPU hits, then host
            hits, then the session's retained tail), if the host hits all find GPU blocks to
            load into; always < num_prompt_tokens.
        gpu_hit_blocks: leading full blocks of the prompt resident in the GPU tier.
        gpu_cached_blocks: how many of those are CACHED (no running step holds them):
            `begin_step` takes them out of the free-or-evictable blocks.
        host_hit_blocks: full blocks continuing the GPU hits that the host tier holds; each
            loads into a fresh GPU block.
        tail_tokens: tokens of the session's retained partial tail block that would be
            reused (it is CACHED, and taken like a cached hit).
        block_size: tokens per block.
    """

    num_prompt_tokens: int
    num_cached_tokens: int
    gpu_hit_blocks: int
    gpu_cached_blocks: int
    host_hit_blocks: int
    tail_tokens: int
    block_size: int

    @property
    def num_hit_block_tokens(self) -> int:
        """Tokens covered by the full-block hits (GPU and host), the tail not included."""
        return (self.gpu_hit_blocks + self.host_hit_blocks) * self.block_size

    def blocks_to_admit(self, end: int) -> int:
        """Free-or-evictable GPU blocks that `begin_step` plus slots for the prompt's tokens
        up to position `end` take: the cached GPU hits, and a block for every block of
        [0, end) not hit on the GPU (host loads, the tail and new blocks alike)."""
        bs = self.block_size
        return self.gpu_cached_blocks + max(0, -(-end // bs) - self.gpu_hit_blocks)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of the cache. Token counts are cumulative since creation."""

    num_gpu_blocks: int
    num_free_blocks: int
    num_used_blocks: int
    num_evictable_blocks: int
    queried_tokens: int
    hit_tokens: int
    num_evicted_blocks: int
    num_running_sessions: int
    num_paused_sessions: int
    num_host_blocks: int = 0
    num_host_cached_blocks: int = 0
    host_hit_tokens: int = 0
    offloaded_blocks: int = 0
    loaded_blocks: int = 0
    prefetched_blocks: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0

    @property
    def usage(self) -> float:
        """Share of GPU blocks referenced by running steps."""
        return self.num_used_blocks / self.num_gpu_blocks


def _check_session_id(session_id: object) -> None:
    if not isinstance(session_id, str) or not session_id:
        raise InvalidRequest(f"session_id must be a non-empty str, got {session_id!r}")


def _check_token_ids(token_ids: object) -> list[int]:
    """Copy token ids to a list of plain ints, rejecting anything but ints in [0, 2^32).

    Integer scalars of other types (numpy's) come out as ints: the C++ core reads a
    session's stored context as exact ints, and raised TypeError at every later call on a
    session whose prompt held numpy ints.
    """
    if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Sequence):
        raise InvalidRequest(
            f"token_ids must be a sequence of ints, got {type(token_ids).__name__}"
        )
    try:
        return array("I", token_ids).tolist()  # one C pass: type and range of every id
    except (TypeError, OverflowError):
        for t in token_ids:
            if not is_int(t) or not 0 <= t < 2**32:
                raise InvalidRequest(f"token ids must be ints in [0, 2^32), got {t!r}") from None
        raise


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if (a if len(a) == n else a[:n]) == (b if len(b) == n else b[:n]):
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo
