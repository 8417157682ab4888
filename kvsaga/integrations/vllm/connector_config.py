"""The keys `KVSagaConnector` reads from its `kv_connector_extra_config` (plain Python: no
vLLM import, so `kv_transfer_config` and the tests check them without vLLM).

vLLM hands a connector its extra config untouched (MultiConnector hands each connector its
own entry of `connectors`), so every key there is the user's: an unknown one is a typo
("polcy", "admision") that would otherwise leave the default in force unnoticed. The values
whose type the connector relies on are checked here too, so `kv_transfer_config()` refuses
them before any JSON is written and vLLM before it starts: a string or a list where keyword
arguments belong failed inside `dict()` with an error naming no key, `reserve_blocks` 2.7 or
true was read as 2 or 1, and null failed in `int()`. So are the keys inside the `ARGS_KEYS`
objects: an unknown `gate_args` key reached `SessionGate(**gate_args)` only when vLLM bound
its blocks, and failed there with a bare TypeError; and so are the values inside
`gate_args`, `step_cost_args` and `scheduler_args`, by building what reads them once
(`check_arg_values`). `policy_args` names no parameter that
takes a Python object (`OBJECT_PARAMS`: no JSON value is one; a number or an object given
for one passed, and failed inside vLLM's scheduler, killing its engine core), and its numbers
and flags must be numbers and flags (a string failed at vLLM's start with a TypeError naming
no parameter). An offline policy (`belady`, `oracle-ttl`: it needs the future) is refused
by name: it passed here and failed at vLLM's start asking for an `oracle` that policy_args
refuses. The keys that act only through the admission gate are refused when admission is off
(`GATE_KEYS`): they were accepted, unchecked, and ignored.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from kvsaga._validate import is_int, is_number
from kvsaga.integrations.vllm.gate import SessionGate
from kvsaga.integrations.vllm.session_ranker import (
    SCHEDULER_FLAGS,
    SessionRanker,
    scheduler_settings,
)
from kvsaga.integrations.vllm.step_cost import StepCost
from kvsaga.policy import (
    DEFAULT_POLICY,
    POLICIES,
    EvictionPolicy,
    make_online_policy,
    make_policy,
    online_policies,
)
from kvsaga.session import check_session_idle

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
# What `KVSagaScheduler` reads from `scheduler_args`: its two flags and `SessionRanker`'s
# arguments (session_ranker.py: plain Python, apart from the scheduler, which imports vLLM).
SCHEDULER_ARGS = (*SCHEDULER_FLAGS, *inspect.signature(SessionRanker).parameters)
# The policies' parameters that take Python objects (a CostModel, an ExecutionGraph, a
# FutureOracle), which no JSON value is: the policy builds its own cost model and graph when
# none is given, and the policies that need an oracle are refused (`check_online`).
OBJECT_PARAMS = ("cost", "graph", "oracle")
# The keys that act only through the admission gate (`SessionGate`, built when `admission`
# is on): with admission off they would be ignored. Not `step_cost_args`: the connector fits
# every step's time with admission off too, and its stats report that fit.
GATE_KEYS = ("gate_args", "keep_demoted", "best_effort_steps")


def check_connector_extra(extra: object) -> dict[str, Any]:
    """`extra` as a dict, or ValueError naming what is wrong: not a mapping, a key the
    connector does not read (with the closest valid key, and the list of valid keys), a
    value of the wrong type (`check_values`, `check_policy_args`), an offline policy
    (`check_online`), a keyword argument that what it is for does not take (`args_taken`),
    a policy_args value the policy refuses (the policy is built once, a throwaway), a key of
    the gate with admission off, or a gate, step-cost or scheduler setting out of its range
    (`check_arg_values`)."""
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise ValueError(f"kvsaga connector: kv_connector_extra_config must be a JSON object, "
                         f"got {type(extra).__name__}")
    check_keys("kv_connector_extra_config", extra, CONNECTOR_KEYS)
    check_values(extra)
    check_online(extra)
    check_no_objects(extra.get("policy_args", {}))
    for key in ARGS_KEYS:
        taken = args_taken(key, extra)
        if key in extra and taken is not None:
            check_keys(key, extra[key], taken)
    check_policy_args(extra)
    make_connector_policy(extra)  # a throwaway: the policy's own ranges (cheap, plain Python)
    if extra.get("admission", True) is False:
        gate_only = [k for k in GATE_KEYS if k in extra]
        if gate_only:
            raise ValueError(f"kvsaga connector: {', '.join(gate_only)} act(s) only through "
                             f"the admission gate, and admission is off (false): leave "
                             f"{'it' if len(gate_only) == 1 else 'them'} out or turn "
                             f"admission on")
    check_arg_values(extra)
    return dict(extra)


# How the `ARGS_KEYS` entries besides policy_args are read (the policy's values are checked
# by `make_connector_policy`): the connector's gate (its capacity and block size are vLLM's,
# any valid pair here), its step-cost fit, and KVSagaScheduler's settings.
ARGS_READERS = {
    "gate_args": lambda args: SessionGate(1, 1, **args),
    "step_cost_args": lambda args: StepCost(**args),
    "scheduler_args": scheduler_settings,
}


def check_arg_values(extra: Mapping[str, Any]) -> None:
    """ValueError naming the key and the setting when a value inside `gate_args`,
    `step_cost_args` or `scheduler_args` is refused by what reads it: each is built once
    here, a throwaway (plain Python, cheap). Before, the gate's and the scheduler's values
    were checked only where vLLM's Scheduler built them (the connector's
    `bind_gpu_block_pool`, KVSagaScheduler), after the model and KV cache had loaded:
    minutes on a GPU (review s49, gate finding 3)."""
    for key, read in ARGS_READERS.items():
        if key in extra:
            try:
                read(extra[key])
            except (ValueError, TypeError, ArithmeticError) as e:  # huge ints: Overflow
                why = str(e) if str(e).startswith(key) else f"{key}: {e}"
                raise ValueError(f"kvsaga connector: {why}") from None


def check_keys(what: str, given: Mapping[str, Any], valid: Sequence[str]) -> None:
    """ValueError naming each key of `given` not in `valid` (with the closest valid one) and
    listing the valid ones."""
    unknown = [k for k in given if k not in valid]
    if unknown:
        parts = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), valid, n=1)
            parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"kvsaga connector: unknown {what} key(s) {', '.join(parts)}; "
                         f"the valid keys are {', '.join(valid)}")


def args_taken(key: str, extra: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The keyword arguments the `ARGS_KEYS` entry `key` may hold: those its class takes,
    less those the connector passes itself (the gate's capacity and block size); for
    `policy_args`, those of `extra`'s policy but `OBJECT_PARAMS` (None when that is no known
    policy name: `make_policy` refuses the name itself)."""
    if key == "gate_args":
        return _params(SessionGate, skip=("capacity", "block_size"))
    if key == "step_cost_args":
        return _params(StepCost)
    if key == "scheduler_args":
        return SCHEDULER_ARGS
    cls = _policy_class(extra)
    return None if cls is None else _params(cls, skip=OBJECT_PARAMS)


def _policy_class(extra: Mapping[str, Any]) -> type[EvictionPolicy] | None:
    """The class of `extra`'s policy (the default when none is named), None when that is no
    known policy name."""
    policy = extra.get("policy", DEFAULT_POLICY)
    return POLICIES[policy] if isinstance(policy, str) and policy in POLICIES else None


def _params(cls: type, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The names of `cls`'s keyword arguments, less `skip`."""
    return tuple(n for n, p in inspect.signature(cls).parameters.items()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in skip)


def check_values(extra: Mapping[str, Any]) -> None:
    """ValueError naming the key when `reserve_blocks` is not an int >= 0 (a bool is not one),
    `policy` no known policy name, `admission` or `keep_demoted` not true or false,
    `best_effort_steps` not a number >= 0, `session_idle_s` not a number > 0 or null, or an
    `ARGS_KEYS` value not a JSON object (a mapping). Before review s51 (vconn MED-2) the
    scalars were checked only by the connector, inside vLLM's start, and
    `kv_transfer_config()` wrote them. The values inside are checked
    by `check_policy_args` and the policy, and by `check_arg_values`; `reserve_blocks`
    against vLLM's blocks when the connector binds them."""
    if "reserve_blocks" in extra:
        v = extra["reserve_blocks"]
        if not (is_int(v) and v >= 0):
            raise ValueError(f"kvsaga connector: reserve_blocks must be an int >= 0, got {v!r}")
    policy = extra.get("policy", DEFAULT_POLICY)
    if not (isinstance(policy, str) and policy in POLICIES):
        raise ValueError(f"kvsaga connector: policy must be one of {online_policies()}, got "
                         f"{policy!r:.200}")
    for key in ("admission", "keep_demoted"):
        if key in extra and not isinstance(extra[key], bool):
            raise ValueError(f"kvsaga connector: {key} must be true or false, got "
                             f"{extra[key]!r:.200}")
    if "best_effort_steps" in extra:
        v = extra["best_effort_steps"]
        if not (is_number(v) and v >= 0):  # nan fails too
            raise ValueError(f"kvsaga connector: best_effort_steps must be a number >= 0, "
                             f"got {v!r:.200}")
    if "session_idle_s" in extra:
        check_session_idle(extra["session_idle_s"], "kvsaga connector: session_idle_s")
    for key in ARGS_KEYS:
        if key in extra and not isinstance(extra[key], Mapping):
            raise ValueError(f"kvsaga connector: {key} must be a JSON object of keyword "
                             f"arguments, got {extra[key]!r}")


def check_online(extra: Mapping[str, Any]) -> None:
    """ValueError naming `extra`'s policy when it is an offline reference (`needs_oracle`:
    `belady`, `oracle-ttl`), which needs the future only a trace replay knows. It passed
    every check and failed at vLLM's start asking for an `oracle` that policy_args refuses."""
    cls = _policy_class(extra)
    if cls is not None and getattr(cls, "needs_oracle", False):
        online = online_policies()
        raise ValueError(f"kvsaga connector: policy {cls.name!r} is an offline reference (it "
                         f"needs a FutureOracle: the future, which only a trace replay "
                         f"knows); the "
                         f"connector cannot run it: choose one of {online}")


def check_no_objects(policy_args: Mapping[str, Any]) -> None:
    """ValueError naming the first `OBJECT_PARAMS` key in `policy_args`: whatever JSON gives
    there is no such object, and the policy met it only inside vLLM's scheduler, where the
    AttributeError it raised killed vLLM's engine core for every client. `cost` and `graph`
    the policy builds itself; `oracle` only the offline policies take (`check_online`)."""
    for key in policy_args:
        if key in OBJECT_PARAMS:
            why = ("only the offline policies take one, which the connector cannot run"
                   if key == "oracle" else "the policy builds its own")
            raise ValueError(f"kvsaga connector: policy_args {key!r} takes a Python object "
                             f"that no JSON value is; leave it out ({why})")


def check_policy_args(extra: Mapping[str, Any]) -> None:
    """ValueError naming the parameter and the policy when a `policy_args` value is not of
    its parameter's JSON type: true or false where the default is a flag, a number where it
    is a number (null only where the parameter takes None). A string there failed at vLLM's
    start with a TypeError naming no parameter, or not at all until a decision read it. The
    ranges are the policy's to check (`make_connector_policy` names policy_args then)."""
    cls = _policy_class(extra)
    if cls is None:
        return
    params = inspect.signature(cls).parameters
    for name, value in extra.get("policy_args", {}).items():
        p = params[name]
        if value is None and "None" in str(p.annotation):
            continue
        if isinstance(p.default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif is_number(p.default):
            ok, kind = is_number(value), "a number"
        else:
            continue  # (the policy checks the rest)
        if not ok:
            raise ValueError(f"kvsaga connector: policy_args {name} of policy "
                             f"{extra.get('policy', DEFAULT_POLICY)!r} must be {kind}, "
                             f"got {value!r}")


def make_connector_policy(extra: Mapping[str, Any]) -> EvictionPolicy:
    """The policy `extra` names (checked by `check_connector_extra`) built with its
    `policy_args`; a TypeError or ValueError the policy raises comes back as a ValueError
    naming policy_args and the policy (the policy's own message names the parameter), so a
    bad value fails at vLLM's start saying which setting it was."""
    name = str(extra.get("policy", DEFAULT_POLICY))
    if name not in POLICIES:
        return make_online_policy(name)  # (refused: the message lists the online names)
    try:
        return make_policy(name, **dict(extra.get("policy_args", {})))
    except (TypeError, ValueError) as e:
        raise ValueError(f"kvsaga connector: policy_args of policy {name!r}: {e}") from e
