"""Content hashes of full blocks, and the index from hash to the block that holds it.

A block's hash is SHA-256 over (parent block's hash, the block's token ids as uint32), so a
hash names a whole prefix, not one block's tokens. The chain starts from a per-tenant root,
SHA-256(b"kvsaga\x00" + salt), a str salt as its UTF-8 bytes (none: empty): tenants with
different salts can never reach each other's blocks. Only full blocks are hashed; a partial
block is never shared.

Why SHA-256: a shared server must not let a crafted prompt collide with another tenant's
prefix, so 64-bit hashes (birthday bound 2^32) are out. SHA-256 is hardware-accelerated on
x86 and Arm, and the new tokens of a sequence are packed to bytes in one `array` call, so
hashing stays a small share of a step (`python bench/allocator.py` times it per block).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

from kvsaga.errors import InvalidRequest

_sha256 = hashlib.sha256


def root_hash(salt: str | bytes | None) -> bytes:
    """The parent hash of a chain's first block, for one tenant."""
    if salt is None:
        salt = b""
    elif isinstance(salt, str):
        try:
            salt = salt.encode()
        except UnicodeEncodeError as e:  # a lone surrogate: no UTF-8 bytes to hash
            raise InvalidRequest(f"salt must be valid UTF-8 text; it has a lone surrogate "
                                 f"{salt[e.start]!r} at position {e.start}") from None
    elif not isinstance(salt, bytes):  # before anything changes: every caller hashes first
        raise InvalidRequest(f"salt must be a str, bytes or None, got {salt!r}")
    return _sha256(b"kvsaga\x00" + salt).digest()


class BlockHasher:
    """Hashes the full blocks of token sequences of one block size."""

    __slots__ = ("block_size",)

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size

    def extend(self, hashes: list[bytes], root: bytes, token_ids: Sequence[int],
               num_blocks: int | None = None) -> None:
        """Append to `hashes` the hashes of every full block of `token_ids` not yet hashed,
        up to `num_blocks` hashes in all when given (a caller holding a longer context
        hashes its first blocks without slicing it).

        `hashes[i]` is the hash of block i of `token_ids`, chained from `root`.
        """
        bs = self.block_size
        first = len(hashes) * bs
        end = len(token_ids) // bs * bs
        if num_blocks is not None:
            end = min(end, num_blocks * bs)
        if end - first < bs:
            return
        # One C pass packs every new token; each block then hashes (parent || 4*bs bytes).
        buf = array("I", token_ids[first:end]).tobytes()
        parent = hashes[-1] if hashes else root
        append, step = hashes.append, 4 * bs
        for off in range(0, len(buf), step):
            parent = _sha256(parent + buf[off : off + step]).digest()
            append(parent)


class PrefixIndex:
    """Maps a block hash to the id of the block holding that content (one tier)."""

    __slots__ = ("_blocks",)

    def __init__(self) -> None:
        self._blocks: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def get(self, block_hash: bytes) -> int | None:
        return self._blocks.get(block_hash)

    def insert(self, block_hash: bytes, block_id: int) -> bool:
        """Register a block; returns False (and changes nothing) if the hash is held already."""
        if block_hash in self._blocks:
            return False
        self._blocks[block_hash] = block_id
        return True

    def remove(self, block_hash: bytes) -> None:
        del self._blocks[block_hash]

    def items(self):
        return self._blocks.items()

    def longest_prefix(self, hashes: Sequence[bytes], limit: int | None = None) -> list[int]:
        """Block ids of the longest run of `hashes[:limit]`, from the first, in the index."""
        out: list[int] = []
        append, get = out.append, self._blocks.get
        for i in range(len(hashes) if limit is None else min(limit, len(hashes))):
            b = get(hashes[i])
            if b is None:
                break
            append(b)
        return out
