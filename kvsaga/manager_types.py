"""What the manager's calls return (`StepStart`, `StepLookup`, `CacheStats`) and the argument
checks they share; kvsaga.manager re-exports the types (import them from there)."""

from __future__ import annotations

import operator
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

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
        gpu_hit_blocks: full blocks of the prompt's cached run resident in the GPU tier: its
            leading ones and, with a host tier, those between its host hits (begin_step
            takes them there and loads only what the GPU tier lacks).
        gpu_cached_blocks: how many of those `gpu_hit_blocks` are CACHED (no running step
            holds them): `begin_step` takes them out of the free-or-evictable blocks. Never
            more than `gpu_hit_blocks`: the retained tail's block is not among them.
        host_hit_blocks: full blocks of the run past the first GPU miss that only the host
            tier holds; each loads into a fresh GPU block.
        tail_tokens: tokens of the session's retained partial tail block that would be
            reused. Its block is CACHED and `begin_step` takes it out of the
            free-or-evictable blocks as a new block would be: `blocks_to_admit` counts it
            once, as a block not hit on the GPU.
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
        [0, end) not hit on the GPU (host loads, the tail and new blocks alike), for an
        `end` past `num_cached_tokens` (slots for at least one token: the last prompt
        token's, at least, is always computed)."""
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
    kept_on_host_blocks: int = 0

    @property
    def discarded_blocks(self) -> int:
        """GPU evictions that left no copy on the host tier: neither offloaded nor with a
        clean host copy already (`kept_on_host_blocks`)."""
        return self.num_evicted_blocks - self.offloaded_blocks - self.kept_on_host_blocks

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


def _check_token_ids(token_ids: object, offset: int = 0) -> list[int]:
    """Copy token ids to a list of plain ints, rejecting anything but ints in [0, 2^32).

    Integer scalars of other types (numpy's) come out as ints: the C++ core reads a
    session's stored context as exact ints, and raised TypeError at every later call on a
    session whose prompt held numpy ints. A bool (Python's or numpy's) is refused: `True`
    is an int equal to 1 to Python and to `array`, but as a token id it is a typo (a mask
    passed for the ids), never token 1. `offset`: the position of `token_ids[0]` in the
    caller's argument, for the message (a slice of a prompt names the prompt's index).
    """
    if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Sequence):
        raise InvalidRequest(
            f"token_ids must be a sequence of ints, got {type(token_ids).__name__}"
        )
    try:
        ids = array("I", token_ids)  # one C pass: type and range of every id
    except (TypeError, OverflowError) as e:
        error: Exception | None = e
    else:
        # One more C pass: `array` takes a bool as the int 1 or 0; the ids' types tell.
        types = set(map(type, token_ids))
        if types <= _INT:  # exact ints, checked: the same ids, without unpacking `ids`
            return list(token_ids)
        if bool not in types and not _has_numpy_bool(types):
            return ids.tolist()  # other integer types (numpy's) as ints
        error = None
    for i, t in enumerate(token_ids):
        if not _is_token_id(t):
            kind = " (a bool, not a token id)" if _is_bool(t) else ""
            raise InvalidRequest(
                f"token_ids[{i + offset}] must be an int in [0, 2^32), got {t!r}{kind}"
            ) from None
    if error is not None:  # a sequence whose items and iteration disagree
        raise error
    return ids.tolist()


_INT = {int}


def _has_numpy_bool(types: set[type]) -> bool:
    """Whether `types` holds numpy's bool (only if numpy is imported: else none exists)."""
    np = sys.modules.get("numpy")
    return np is not None and np.bool_ in types


def _is_bool(t: object) -> bool:
    if isinstance(t, bool):
        return True
    np = sys.modules.get("numpy")
    return np is not None and isinstance(t, np.bool_)


def _is_token_id(t: object) -> bool:
    """An integer (any type with `__index__`, as `array` reads it; no bool) in [0, 2^32)."""
    if _is_bool(t):
        return False
    try:
        v = operator.index(t)
    except TypeError:
        return False
    return 0 <= v < 2**32


DIGEST_BYTES = 32  # a block hash: SHA-256 of (parent hash, the block's ids), kvsaga/prefix.py


def _check_block_hashes(block_hashes: object, num_tokens: int, block_size: int) -> None:
    """InvalidRequest naming what is wrong with `lookup`'s `block_hashes` as a whole for a
    prompt of `num_tokens` tokens: not a sequence (a list or tuple, say; a str or bytes is
    one digest's text, not digests), or more hashes than the prompt has full blocks (hashes
    of another prompt). Its items are checked where they are read (`_check_digest`)."""
    if isinstance(block_hashes, (str, bytes, bytearray, memoryview)) or not isinstance(
            block_hashes, Sequence):
        raise InvalidRequest(
            f"block_hashes must be None or a sequence (list or tuple) of {DIGEST_BYTES}-byte "
            f"bytes digests, got {type(block_hashes).__name__}")
    full = num_tokens // block_size
    if len(block_hashes) > full:
        raise InvalidRequest(
            f"block_hashes holds {len(block_hashes)} hashes; the prompt of {num_tokens} "
            f"tokens has only {full} full blocks of {block_size} tokens")


def _check_digest(hashes: Sequence[object], i: int, label: str = "block_hashes") -> None:
    """InvalidRequest naming `hashes[i]` (its index, type and value) unless it is a
    32-byte `bytes` digest, the only kind the manager makes. The C++ core takes anything
    else for a miss and the Python core's dict raised TypeError for an unhashable item or
    took a str for a miss: the manager checks the items the cores read, so both refuse the
    same hashes with this error."""
    h = hashes[i]
    if isinstance(h, bytes) and len(h) == DIGEST_BYTES:
        return
    shown = repr(h)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    what = f"{len(h)} bytes" if isinstance(h, bytes) else type(h).__name__
    raise InvalidRequest(
        f"{label}[{i}] must be a {DIGEST_BYTES}-byte bytes digest, got {what} {shown}")


def _check_digests(hashes: Sequence[object], stop: int | None = None,
                   label: str = "block_hashes") -> None:
    """`_check_digest` for each of `hashes[:stop]`: two C passes, and the loop only to name
    the first bad one."""
    n = len(hashes) if stop is None else min(stop, len(hashes))
    if set(map(type, islice(hashes, n))) <= _BYTES and set(
            map(len, islice(hashes, n))) <= _DIGEST:
        return
    for i in range(n):
        _check_digest(hashes, i, label)


_BYTES = {bytes}
_DIGEST = {DIGEST_BYTES}


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
