"""A policy name refused by a call that takes no oracle (review s57 readme F2): the error
lists only what that call accepts. `LLM(policy="bogus")` and `kv_transfer_config("nosuch")`
offered `belady` and `oracle-ttl`, which the same calls then refused, and
`KVCacheManager(policy="belady")` asked for an `oracle=` argument it does not have."""

from __future__ import annotations

import ast

import pytest

from kvsaga import LLM
from kvsaga.integrations.vllm import kv_transfer_config
from kvsaga.integrations.vllm.connector_config import make_connector_policy
from kvsaga.manager import KVCacheManager
from kvsaga.policy import POLICIES, make_policy, online_policies
from kvsaga.sim.cost import PRESETS
from kvsaga.sim.oracle import TraceOracle
from kvsaga.sim.workloads import generate

ONLINE = ["adaptive", "graph", "lru", "saga", "ttl"]
SPEC = PRESETS["a100-llama3-8b"].kv_spec


def _offered(message: str) -> list[str]:
    """The names a message offers: the list after its last "one of "."""
    return ast.literal_eval(message.rsplit("one of ", 1)[1].split("]")[0] + "]")


def test_online_policies_are_those_that_need_no_oracle():
    assert online_policies() == ONLINE
    assert sorted(set(POLICIES) - set(ONLINE)) == ["belady", "oracle-ttl"]


@pytest.mark.parametrize("call", [
    lambda: LLM(model="/nonexistent", policy="bogus"),  # refused before any model loads
    lambda: kv_transfer_config("nosuch"),
    lambda: make_connector_policy({"policy": "nope"}),
    lambda: KVCacheManager(SPEC, 16, policy="bogus"),
])
def test_an_unknown_name_is_offered_only_the_online_policies(call):
    with pytest.raises(ValueError) as e:
        call()
    assert _offered(str(e.value)) == ONLINE, e.value


@pytest.mark.parametrize("name", ["belady", "oracle-ttl"])
def test_the_manager_refuses_an_offline_name_saying_how_to_run_it(name):
    with pytest.raises(ValueError) as e:
        KVCacheManager(SPEC, 16, policy=name)
    message = str(e.value)
    assert "(oracle=...)" not in message  # KVCacheManager takes no oracle=
    assert f"pass a built instance (make_policy({name!r}, oracle=...))" in message
    assert _offered(message) == ONLINE


def test_a_built_offline_policy_still_runs_in_the_manager():
    """What the message says to do works: the instance, with its oracle, is taken."""
    oracle = TraceOracle(generate("swe", 1, seed=1, scale=0.05), SPEC.block_size)
    manager = KVCacheManager(SPEC, 16, policy=make_policy("belady", oracle=oracle))
    assert manager.policy.name == "belady"
