"""Frozen configuration: the shape of one KV block and how many blocks each tier holds.

Pure Python (no torch): dtypes are named by string so that the bookkeeping core, the
simulator and the tests never need torch.
"""

from __future__ import annotations

from dataclasses import dataclass

# Bytes per element of the KV dtypes the kernels support.
DTYPE_SIZES: dict[str, int] = {"float16": 2, "bfloat16": 2, "float32": 4}


def _check_positive_int(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


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
            _check_positive_int("KVSpec", name, getattr(self, name))
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


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """How much memory each tier gets.

    The GPU tier is sized either by an explicit byte budget (`gpu_memory_bytes`) or by a
    fraction of the device memory that is free when the pool is created
    (`gpu_memory_utilization`); give at most one. The host tier gets `host_memory_bytes`
    of (pinned, on CUDA machines) host memory; 0 disables it.
    """

    gpu_memory_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    host_memory_bytes: int = 0

    def __post_init__(self) -> None:
        if self.gpu_memory_bytes is not None and self.gpu_memory_utilization is not None:
            raise ValueError(
                "PoolConfig takes gpu_memory_bytes or gpu_memory_utilization, not both "
                f"(got {self.gpu_memory_bytes!r} and {self.gpu_memory_utilization!r})"
            )
        if self.gpu_memory_bytes is not None:
            _check_positive_int("PoolConfig", "gpu_memory_bytes", self.gpu_memory_bytes)
        if self.gpu_memory_utilization is not None:
            u = self.gpu_memory_utilization
            if isinstance(u, bool) or not isinstance(u, (int, float)) or not 0.0 < u <= 1.0:
                raise ValueError(f"PoolConfig.gpu_memory_utilization must be in (0, 1], got {u!r}")
        h = self.host_memory_bytes
        if isinstance(h, bool) or not isinstance(h, int) or h < 0:
            raise ValueError(f"PoolConfig.host_memory_bytes must be an int >= 0, got {h!r}")

    def num_gpu_blocks(self, spec: KVSpec, free_device_bytes: int | None = None) -> int:
        """Blocks of the GPU tier.

        Args:
            spec: the KV block shape.
            free_device_bytes: free device memory now; needed only when sized by fraction.
        Raises:
            ValueError: the budget holds no block, or a fraction is given without free memory.
        """
        if self.gpu_memory_bytes is not None:
            budget = self.gpu_memory_bytes
        else:
            if free_device_bytes is None:
                raise ValueError("free_device_bytes is needed to size the GPU tier by fraction")
            budget = int(free_device_bytes * (self.gpu_memory_utilization or 0.9))
        n = budget // spec.bytes_per_block
        if n < 1:
            raise ValueError(
                f"GPU KV budget of {budget} bytes holds no block of {spec.bytes_per_block} bytes"
            )
        return n

    def num_host_blocks(self, spec: KVSpec) -> int:
        """Blocks of the host tier (0 when disabled)."""
        return self.host_memory_bytes // spec.bytes_per_block
