"""Frozen configuration: the shape of one KV block and how many blocks each tier holds.

Pure Python (no torch): dtypes are named by string so that the bookkeeping core, the
simulator and the tests never need torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from kvsaga._validate import check_positive_int, is_int, is_number

# Bytes per element of the KV dtypes the kernels support.
DTYPE_SIZES: dict[str, int] = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True, slots=True)
class KVSpec:
    """Shape of the KV cache of one model.

    A block holds `block_size` tokens of every layer, K and V: the tier tensor is
    `[num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]` (block-major).
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str = "float16"
    block_size: int = 16

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "block_size"):
            check_positive_int(f"KVSpec.{name}", getattr(self, name))
        if self.dtype not in DTYPE_SIZES:
            raise ValueError(
                f"KVSpec.dtype must be one of {sorted(DTYPE_SIZES)}, got {self.dtype!r}"
            )

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]

    @property
    def bytes_per_token(self) -> int:
        """K and V of one token across all layers."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * self.itemsize

    @property
    def bytes_per_block(self) -> int:
        return self.bytes_per_token * self.block_size

    @property
    def block_shape(self) -> tuple[int, int, int, int, int]:
        """Shape of one block inside the tier tensor."""
        return (self.num_layers, 2, self.block_size, self.num_kv_heads, self.head_dim)

    def num_blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)


# The memory settings share one name everywhere (engine, server, simulator, this config):
# `kv_memory_bytes` (GPU-tier KV budget), `kv_memory_fraction` (the budget as a share of the
# device memory free at start) and `host_memory_bytes` (host tier); on command lines
# `--kv-memory SIZE` and `--host-memory SIZE`, sizes as `parse_bytes` reads them.
DEFAULT_KV_MEMORY_FRACTION = 0.9

# ASCII only (re.ASCII: `\d` and `\s` would take any Unicode digit or space, "٤G" read as 4
# GiB); a unit K/M/G/T, each with an optional "i" and "B" ("4G", "4GiB", "4GB", "4Gi"), or a
# bare "B" for bytes; no "i" without a unit ("4iB" was read as 4 bytes).
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])i?B?|B)?\s*$", re.IGNORECASE | re.ASCII)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """Parse a memory size: plain bytes or a K/M/G/T suffix (binary: 1K = 1024).

    Args:
        text: e.g. "4G", "512M", "1.5GiB", "1048576": ASCII digits 0-9, a whole number of
            bytes or a decimal number of K/M/G/T (each may be followed by "i" and/or "B").
    Returns:
        The size in bytes.
    Raises:
        ValueError: not a size, or a negative one or one past any float (named as such),
            or one written with other than ASCII characters.
    """
    if not text.isascii():
        raise ValueError(f"not a memory size: {text!r}: write it with the ASCII digits 0-9 "
                         "and a unit K, M, G or T (e.g. 4G, 512M, 1048576)")
    m = _SIZE.match(text)
    if m is None:
        if _SIZE.match(text.strip().removeprefix("-")):
            raise ValueError(f"a memory size cannot be negative, got {text!r}")
        raise ValueError(f"not a memory size: {text!r} (use e.g. 4G, 512M, 1048576)")
    number, unit = m.group(1), (m.group(2) or "").upper()
    if not unit and "." in number:  # "1.5" meant 1.5G, not one byte
        raise ValueError(f"not a memory size: {text!r} is a fraction of a byte; give a unit, "
                         f"e.g. {number}G")
    size = float(number) * _UNITS[unit]
    if size == math.inf:  # int(inf) raised OverflowError, which argparse does not catch
        raise ValueError(f"not a memory size: {text!r} is too large")
    return int(size)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """How much memory each tier gets.

    The GPU tier is sized either by an explicit byte budget (`kv_memory_bytes`) or by a
    share of the device memory that is free when the pool is created (`kv_memory_fraction`,
    default 0.9 when neither is given); give at most one. The host tier gets
    `host_memory_bytes` of (pinned, on CUDA machines) host memory; 0 disables it.
    """

    kv_memory_bytes: int | None = None
    kv_memory_fraction: float | None = None
    host_memory_bytes: int = 0

    def __post_init__(self) -> None:
        if self.kv_memory_bytes is not None and self.kv_memory_fraction is not None:
            raise ValueError(
                "PoolConfig takes kv_memory_bytes or kv_memory_fraction, not both "
                f"(got {self.kv_memory_bytes!r} and {self.kv_memory_fraction!r})"
            )
        if self.kv_memory_bytes is not None:
            check_positive_int("PoolConfig.kv_memory_bytes", self.kv_memory_bytes)
        if self.kv_memory_fraction is not None:
            u = self.kv_memory_fraction
            if not is_number(u) or not 0.0 < u <= 1.0:
                raise ValueError(f"PoolConfig.kv_memory_fraction must be in (0, 1], got {u!r}")
        h = self.host_memory_bytes
        if not is_int(h) or h < 0:
            raise ValueError(f"PoolConfig.host_memory_bytes must be an int >= 0, got {h!r}")

    @property
    def sized_by_fraction(self) -> bool:
        """The GPU tier's size depends on the free device memory."""
        return self.kv_memory_bytes is None

    def num_gpu_blocks(self, spec: KVSpec, free_device_bytes: int | None = None) -> int:
        """Blocks of the GPU tier.

        Args:
            spec: the KV block shape.
            free_device_bytes: free device memory now; needed only when sized by fraction.
        Raises:
            ValueError: the budget holds no block, or a fraction is given without free memory.
        """
        if self.kv_memory_bytes is not None:
            budget = self.kv_memory_bytes
        else:
            if free_device_bytes is None:
                raise ValueError("free_device_bytes is needed to size the GPU tier by fraction")
            fraction = self.kv_memory_fraction or DEFAULT_KV_MEMORY_FRACTION
            budget = int(free_device_bytes * fraction)
        n = budget // spec.bytes_per_block
        if n < 1:
            raise ValueError(
                f"kv_memory_bytes={budget} holds no KV block of {spec.bytes_per_block} bytes"
            )
        return n

    def num_host_blocks(self, spec: KVSpec) -> int:
        """Blocks of the host tier (0 when disabled).

        Raises:
            ValueError: a budget above 0 that holds no block (not silently "no host tier").
        """
        n = self.host_memory_bytes // spec.bytes_per_block
        if self.host_memory_bytes and n < 1:
            raise ValueError(f"host_memory_bytes={self.host_memory_bytes} holds no KV block of "
                             f"{spec.bytes_per_block} bytes")
        return n

    def check_budgets(self, spec: KVSpec) -> None:
        """Refuse each byte budget that holds no block of `spec`, before anything is sized:
        the engine and kvsaga-serve call it with the model's block, read from the checkpoint's
        config, so that a budget too small fails before the weights load. A GPU tier sized by
        fraction depends on the memory free once the weights are in; it is checked then.

        Raises:
            ValueError: as `num_gpu_blocks` and `num_host_blocks` do.
        """
        if not self.sized_by_fraction:
            self.num_gpu_blocks(spec)
        self.num_host_blocks(spec)
