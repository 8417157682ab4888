"""The device layer: the tier tensors that hold the KV.

The only module of the core that imports torch. The bookkeeping above it hands out plain
ints (block ids, slots); the engine turns them into index tensors
(kvsaga/engine/attn_metadata.py) that address these tiers.

Layout (block-major): `kv[num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]`.
One block is one contiguous chunk holding `block_size` tokens of every layer, so moving a
block between tiers is one copy; `kv[:, layer, 0]` and `kv[:, layer, 1]` are the K and V
views of one layer, `[num_blocks, block_size, num_kv_heads, head_dim]`, that the kernels
take with their strides.
"""

from __future__ import annotations

import torch

from kvsaga.config import KVSpec

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a KVSpec dtype name."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(
            f"unsupported KV dtype {name!r}; choose one of {sorted(_DTYPES)}"
        ) from None


def free_device_bytes(device: torch.device | str) -> int:
    """Free memory of a device: CUDA from the driver, CPU from /proc/meminfo."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    raise RuntimeError(f"cannot tell the free memory of device {device}")


class KVStorage:
    """One tier's KV tensor.

    Args:
        spec: block shape and dtype.
        num_blocks: blocks in the tier.
        device: where the tensor lives.
        pin_memory: page-lock a CPU tensor (for async copies to and from CUDA).
    """

    def __init__(
        self,
        spec: KVSpec,
        num_blocks: int,
        device: torch.device | str = "cpu",
        pin_memory: bool = False,
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        pin = pin_memory and self.device.type == "cpu" and torch.cuda.is_available()
        # [num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]
        self.kv = torch.zeros(
            (num_blocks, *spec.block_shape),
            dtype=torch_dtype(spec.dtype),
            device=self.device,
            pin_memory=pin,
        )

    @property
    def num_blocks(self) -> int:
        return self.kv.shape[0]

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V views of one layer: each [num_blocks, block_size, num_kv_heads, head_dim]."""
        return self.kv[:, layer, 0], self.kv[:, layer, 1]
