"""kvsaga's agent-aware KV retention for vLLM, loaded by vLLM's own configuration.

Two plug-ins, both ranked by kvsaga's eviction policies (`ttl`, `graph`, ...: the same code
kvsaga's engine and simulator run):

- `KVSagaConnector` (`kvsaga.integrations.vllm.connector`), a KV connector: when an agent
  session's request finishes it keeps that session's GPU blocks referenced through the tool
  call, and releases them when the session ends or when vLLM needs the memory, in the policy's
  order. Enable it with `--kv-transfer-config` (`kv_transfer_config()` below builds the JSON).
- `KVSagaCachePolicy` / `KVSagaGraphCachePolicy` (`kvsaga.integrations.vllm.cache_policy`),
  cache policies for vLLM's CPU offload tier (`OffloadingConnector`): offloaded chunks are
  evicted in the same order (`offload_transfer_config()` builds the JSON, the tier alone or
  behind the connector in vLLM's `MultiConnector`).

A request names its session and the pause that follows in `kv_transfer_params`:
`{"kvsaga": {"session_id": "task-42", "tool": "run_tests", "expected_s": 8, "last_step": false,
"workflow": "swe"}}` (vLLM's `session_id` request field is used when `session_id` is absent).
A request with a `cache_salt` (vLLM's tenant separator) names a session of that tenant: two
tenants' session "1" are two sessions (`hints.step_info`; the offload tier's cache policy
sees no salt, and keys by the id alone). A session id, tool or workflow name is at most
256 characters (`hints.MAX_NAME_CHARS`); a hint that breaks a rule is ignored (logged).
Requests without a session are left to vLLM.

This package imports vLLM only in the modules vLLM loads; `hints` and `ledger` are plain Python.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kvsaga._validate import check_one_of, is_int
from kvsaga.integrations.vllm.connector_config import check_connector_extra
from kvsaga.policy import DEFAULT_POLICY

CONNECTOR_MODULE = "kvsaga.integrations.vllm.connector"
CONNECTOR_CLASS = "KVSagaConnector"
CACHE_POLICY_MODULE = "kvsaga.integrations.vllm.cache_policy"
CACHE_POLICY_CLASS = "KVSagaCachePolicy"
# The offload tier's policies by the name a user knows: vLLM's own, and kvsaga's two.
OFFLOAD_POLICIES = {"lru": None, "arc": None, "ttl": CACHE_POLICY_CLASS,
                    "graph": "KVSagaGraphCachePolicy"}


def kv_transfer_config(policy: str = DEFAULT_POLICY, **extra: Any) -> str:
    """The `--kv-transfer-config` JSON that turns the retention connector on.

    Args:
        policy: a kvsaga policy name (`ttl`, `graph`, `lru`, `saga`); by default the
            one kvsaga's own engine and server use (`kvsaga.policy.DEFAULT_POLICY`).
        extra: more `kv_connector_extra_config` entries (e.g. `reserve_blocks`); a key the
            connector does not read raises ValueError naming it.
    """
    check_connector_extra({"policy": policy, **extra})  # (policy_args are the policy's)
    return json.dumps(
        {
            "kv_connector": CONNECTOR_CLASS,
            "kv_connector_module_path": CONNECTOR_MODULE,
            "kv_role": "kv_both",
            "kv_connector_extra_config": {"policy": policy, **extra},
        }
    )


def offload_transfer_config(cpu_bytes: int, eviction: str = "graph",
                            retention: dict[str, Any] | None = None) -> str:
    """The `--kv-transfer-config` JSON of vLLM's CPU offload tier (`OffloadingConnector`),
    alone or, with `retention`, behind kvsaga's retention connector in vLLM's
    `MultiConnector` (the retention connector first: it may defer a step, and it never
    loads KV, so the offload tier answers every hit outside the GPU).

    Args:
        cpu_bytes: host memory for offloaded KV (`cpu_bytes_to_use`).
        eviction: the tier's policy: vLLM's `lru` (its default) or `arc`, or kvsaga's `ttl`
            (`KVSagaCachePolicy`) or `graph` (`KVSagaGraphCachePolicy`, the default: the
            higher worst fit seed against vLLM's LRU, bench/RESULTS.md "vLLM's CPU offload
            tier").
        retention: None (the tier alone) or the retention connector's
            `kv_connector_extra_config` (e.g. `{"policy": "ttl"}`).
    """
    check_one_of("eviction", eviction, OFFLOAD_POLICIES)
    if not is_int(cpu_bytes) or cpu_bytes <= 0:  # (true is no byte count)
        raise ValueError(f"cpu_bytes {cpu_bytes!r}: must be a positive int")
    cls = OFFLOAD_POLICIES[eviction]
    extra: dict[str, Any] = {"cpu_bytes_to_use": cpu_bytes, "eviction_policy": cls or eviction}
    if cls is not None:
        extra["cache_policy_module_path"] = CACHE_POLICY_MODULE
    offload = {"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
               "kv_connector_extra_config": extra}
    if retention is None:
        return json.dumps(offload)
    if not isinstance(retention, Mapping):
        raise ValueError(f"retention {retention!r}: None or the retention connector's "
                         "kv_connector_extra_config as a dict, e.g. {'policy': 'ttl'}")
    kvsaga = json.loads(kv_transfer_config(**retention))
    return json.dumps({"kv_connector": "MultiConnector", "kv_role": "kv_both",
                       "kv_connector_extra_config": {"connectors": [kvsaga, offload]}})


__all__ = [
    "CACHE_POLICY_CLASS",
    "CACHE_POLICY_MODULE",
    "CONNECTOR_CLASS",
    "CONNECTOR_MODULE",
    "OFFLOAD_POLICIES",
    "kv_transfer_config",
    "offload_transfer_config",
]
