"""kvsaga's agent-aware KV retention for vLLM, loaded by vLLM's own configuration.

Two plug-ins, both ranked by kvsaga's eviction policies (`ttl`, `graph`, ...: the same code
kvsaga's engine and simulator run):

- `KVSagaConnector` (`kvsaga.integrations.vllm.connector`), a KV connector: when an agent
  session's request finishes it keeps that session's GPU blocks referenced through the tool
  call, and releases them when the session ends or when vLLM needs the memory, in the policy's
  order. Enable it with `--kv-transfer-config` (`kv_transfer_config()` below builds the JSON).
- `KVSagaCachePolicy` (`kvsaga.integrations.vllm.cache_policy`), a cache policy for vLLM's CPU
  offload tier (`OffloadingConnector`): offloaded chunks are evicted in the same order.

A request names its session and the pause that follows in `kv_transfer_params`:
`{"kvsaga": {"session_id": "task-42", "tool": "run_tests", "expected_s": 8, "last_step": false,
"workflow": "swe"}}` (vLLM's `session_id` request field is used when `session_id` is absent).
Requests without a session are left to vLLM.

This package imports vLLM only in the modules vLLM loads; `hints` and `ledger` are plain Python.
"""

from __future__ import annotations

import json
from typing import Any

from kvsaga.policy import DEFAULT_POLICY

CONNECTOR_MODULE = "kvsaga.integrations.vllm.connector"
CONNECTOR_CLASS = "KVSagaConnector"
CACHE_POLICY_MODULE = "kvsaga.integrations.vllm.cache_policy"
CACHE_POLICY_CLASS = "KVSagaCachePolicy"


def kv_transfer_config(policy: str = DEFAULT_POLICY, **extra: Any) -> str:
    """The `--kv-transfer-config` JSON that turns the retention connector on.

    Args:
        policy: a kvsaga policy name (`ttl`, `graph`, `lru`, `saga`); by default the
            one kvsaga's own engine and server use (`kvsaga.policy.DEFAULT_POLICY`).
        extra: more `kv_connector_extra_config` entries (e.g. `reserve_blocks`).
    """
    return json.dumps(
        {
            "kv_connector": CONNECTOR_CLASS,
            "kv_connector_module_path": CONNECTOR_MODULE,
            "kv_role": "kv_both",
            "kv_connector_extra_config": {"policy": policy, **extra},
        }
    )


__all__ = [
    "CACHE_POLICY_CLASS",
    "CACHE_POLICY_MODULE",
    "CONNECTOR_CLASS",
    "CONNECTOR_MODULE",
    "kv_transfer_config",
]
