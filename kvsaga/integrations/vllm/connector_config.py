"""The keys `KVSagaConnector` reads from its `kv_connector_extra_config` (plain Python: no
vLLM import, so `kv_transfer_config` and the tests check them without vLLM).

vLLM hands a connector its extra config untouched (MultiConnector hands each connector its
own entry of `connectors`), so every key there is the user's: an unknown one is a typo
("polcy", "admision") that would otherwise leave the default in force unnoticed. The values
whose type the connector relies on are checked here too, so `kv_transfer_config()` refuses
them before any JSON is written and vLLM before it starts: a string or a list where keyword
arguments belong failed inside `dict()` with an error naming no key, `reserve_blocks` 2.7 or
true was read as 2 or 1, and null failed in `int()`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from kvsaga._validate import is_int

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
# The keys holding keyword arguments (a JSON object each).
ARGS_KEYS = ("policy_args", "gate_args", "step_cost_args", "scheduler_args")


def check_connector_extra(extra: object) -> dict[str, Any]:
    """`extra` as a dict, or ValueError naming what is wrong: not a mapping, a key the
    connector does not read (with the closest valid key, and the list of valid keys), or a
    value of the wrong type (`check_values`)."""
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
    check_values(extra)
    return dict(extra)


def check_values(extra: Mapping[str, Any]) -> None:
    """ValueError naming the key when `reserve_blocks` is not an int >= 0 (a bool is not one)
    or an `ARGS_KEYS` value is not a JSON object (a mapping). The values inside are checked
    where they are used (the policy, `SessionGate`, `StepCost`, `KVSagaScheduler`), and
    `reserve_blocks` against vLLM's blocks when the connector binds them."""
    if "reserve_blocks" in extra:
        v = extra["reserve_blocks"]
        if not (is_int(v) and v >= 0):
            raise ValueError(f"kvsaga connector: reserve_blocks must be an int >= 0, got {v!r}")
    for key in ARGS_KEYS:
        if key in extra and not isinstance(extra[key], Mapping):
            raise ValueError(f"kvsaga connector: {key} must be a JSON object of keyword "
                             f"arguments, got {extra[key]!r}")
