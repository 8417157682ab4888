"""The keys `KVSagaConnector` reads from its `kv_connector_extra_config` (plain Python: no
vLLM import, so `kv_transfer_config` and the tests check them without vLLM).

vLLM hands a connector its extra config untouched (MultiConnector hands each connector its
own entry of `connectors`), so every key there is the user's: an unknown one is a typo
("polcy", "admision") that would otherwise leave the default in force unnoticed.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

# Each key's meaning: kvsaga/integrations/vllm/connector.py's module docstring.
CONNECTOR_KEYS = (
    "policy",
    "policy_args",
    "reserve_blocks",
    "admission",
    "gate_args",
    "best_effort_steps",
    "step_cost_args",
    "keep_demoted",
    "scheduler_args",
    "session_idle_s",
)


def check_connector_extra(extra: object) -> dict[str, Any]:
    """`extra` as a dict, or ValueError naming what is wrong: not a mapping, or a key the
    connector does not read (with the closest valid key, and the list of valid keys)."""
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise ValueError(f"kvsaga connector: kv_connector_extra_config must be a JSON object, "
                         f"got {type(extra).__name__}")
    unknown = [k for k in extra if k not in CONNECTOR_KEYS]
    if unknown:
        parts = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), CONNECTOR_KEYS, n=1)
            parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"kvsaga connector: unknown kv_connector_extra_config key(s) "
                         f"{', '.join(parts)}; the valid keys are {', '.join(CONNECTOR_KEYS)}")
    return dict(extra)
