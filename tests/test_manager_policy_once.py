"""A policy instance serves one manager.

Review finding (session 49): `KVCacheManager(policy=<instance>)` accepted an instance
already bound to another live manager (so did `LLMEngine` and `Simulator`, which pass it
on). The second bind re-pointed the policy while the first manager's pool still reported
to it: the two pools' block ids mixed in one order, and a valid allocation later failed
inside a policy hook (KeyError 's' from saga's groups, or "victim queue holds 0 blocks"),
leaving the prefix index mapping hashes to freed blocks. The second manager is now refused
with an InvalidRequest, and the first keeps its policy.
"""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.engine import engine as engine_module
from kvsaga.engine.engine import LLMEngine
from kvsaga.errors import InvalidRequest
from kvsaga.policy import make_policy
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.workloads import generate

SPEC = KVSpec(1, 1, 4, block_size=4)
BOUND = r"^policy '{}' is already bound to a KVCacheManager; .* give each its own instance$"


def cached(m: KVCacheManager, sid: str, base: int) -> None:
    """Run one step of 9 tokens: 2 full blocks and a tail stay cached."""
    m.begin_step(sid, list(range(base, base + 9)))
    m.allocate_slots(sid, 9)
    m.finish_step(sid)


@pytest.mark.parametrize("name", ["lru", "saga"])
def test_a_second_manager_is_refused_a_bound_policy_and_the_first_keeps_it(core, name):
    p = make_policy(name)
    a = KVCacheManager(SPEC, 4, policy=p, clock=lambda: 0.0, core=core.name)
    cached(a, "s", 0)
    with pytest.raises(InvalidRequest, match=BOUND.format(name)):
        KVCacheManager(SPEC, 4, policy=p, clock=lambda: 0.0, core=core.name)
    assert p.view is a and a.pool.observer is p  # before the fix: p.view was the second
    a.begin_step("t", list(range(50, 66)))
    a.allocate_slots("t", 16)  # evicts s's 3 cached blocks, as p orders them
    assert a.stats().num_evicted_blocks == 3
    a.check_integrity()
    if name == "saga":
        p.check_integrity()


def test_a_simulator_is_refused_a_policy_another_one_was_given():
    trace = generate("swe", 2, seed=1, scale=0.05)
    config = SimConfig(num_gpu_blocks=750)
    p = make_policy("lru")
    Simulator(trace, config, policy=p).run()
    with pytest.raises(InvalidRequest, match=BOUND.format("lru")):
        Simulator(trace, config, policy=p)


def test_an_engine_is_refused_a_bound_policy_before_the_weights_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the weights loaded before the policy was checked")

    monkeypatch.setattr(engine_module, "load_checkpoint", refuse)
    p = make_policy("lru")
    KVCacheManager(SPEC, 4, policy=p)
    with pytest.raises(InvalidRequest, match=BOUND.format("lru")):
        LLMEngine("/nonexistent-model", device="cpu", progress=False, policy=p)


@pytest.mark.parametrize("name", ["lru", "saga"])
def test_a_manager_whose_bind_failed_leaves_the_policy_unbound(core, name):
    """Review s49 gatediff finding 3: a bind that raised left `view` set on an instance no
    manager was returned for, so the retry was refused as already bound."""
    p = make_policy(name)
    real = type(p).bind
    calls = []

    def bind_once_failing(view):
        real(p, view)
        calls.append(view)
        if len(calls) == 1:
            raise RuntimeError("simulated: bind failed")

    p.bind = bind_once_failing
    with pytest.raises(RuntimeError, match="simulated"):
        KVCacheManager(SPEC, 4, policy=p, clock=lambda: 0.0, core=core.name)
    assert p.view is None
    m = KVCacheManager(SPEC, 4, policy=p, clock=lambda: 0.0, core=core.name)
    assert p.view is m and m.pool.observer is p
    cached(m, "s", 0)
    m.check_integrity()
