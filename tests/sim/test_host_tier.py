"""The simulated host tier: offloads, reloads, prefetch on resume hints, and copy waits."""

from __future__ import annotations

import dataclasses

import pytest

from kvsaga.sim.cost import PRESETS
from kvsaga.sim.simulator import SimConfig, Simulator, simulate
from kvsaga.sim.trace import Session, SharedPrefix, Step
from kvsaga.sim.workloads import generate

COST = PRESETS["a100-llama3-8b"]
# A link of 100 MB/s: a 2 MiB block takes 21 ms, longer than these tiny steps.
SLOW = dataclasses.replace(COST, name="slow-link", gpu=dataclasses.replace(COST.gpu, pcie_bw=1e8))


def _session(sid: str, arrival: float, steps: list[Step], group: str, prefix: int) -> Session:
    return Session(id=sid, workflow="t", arrival_s=arrival,
                   shared_prefix=SharedPrefix(group, prefix), steps=tuple(steps))


def pair() -> list[Session]:
    # A pauses for 2 s holding 74 tokens (4 full blocks + a 10-token tail); B's 100-token
    # prompt needs 7 of the 8 blocks, so A's blocks leave (under fcfs, which admits B at
    # once; workflow admission would make B wait for A); A then resumes.
    a = _session("A", 0.0, [Step(30, 5, "read", 2.0), Step(20, 3)], "sys", 40)
    b = _session("B", 0.5, [Step(100, 2)], "other", 0)
    return [a, b]


@pytest.mark.parametrize("resume_hints", [True, False])
def test_offloaded_context_comes_back_from_the_host(resume_hints):
    discard = simulate(pair(), SimConfig(num_gpu_blocks=8, scheduler="fcfs"))
    sim = Simulator(pair(), SimConfig(num_gpu_blocks=8, num_host_blocks=8,
                                      resume_hints=resume_hints, scheduler="fcfs"))
    r = sim.run()
    sim.manager.check_integrity()
    # Without a host tier A keeps one prefix block and recomputes the other 58 tokens.
    assert (discard.recomputed_tokens, discard.hit_tokens) == (58, 16)
    # With one, only the unhashed 10-token tail is lost; 3 blocks come back from the host.
    assert (r.recomputed_tokens, r.hit_tokens) == (10, 64)
    assert r.bytes_reloaded == 3 * COST.block_bytes
    # LRU offloads every full victim: A's 4 blocks, then 4 of ended B's to make room for A.
    assert r.bytes_offloaded == 8 * COST.block_bytes
    if resume_hints:  # the hint prefetches them before A's step is admitted
        assert (r.prefetched_blocks, r.host_hit_tokens) == (3, 0)
    else:  # the admission finds them on the host and loads them
        assert (r.prefetched_blocks, r.host_hit_tokens) == (0, 48)
    assert r.queried_tokens == r.hit_tokens + r.computed_tokens + r.abandoned_tokens
    assert r.load_wait_s == 0.0  # 2 MiB at 25 GB/s hides under every step


def test_a_slow_link_stretches_the_steps_that_wait_for_copies():
    fast = simulate(pair(), SimConfig(num_gpu_blocks=8, num_host_blocks=8, scheduler="fcfs"))
    slow = simulate(pair(), SimConfig(preset=SLOW, num_gpu_blocks=8, num_host_blocks=8,
                                      scheduler="fcfs"))
    # At least A's 3 reloaded blocks, queued behind B's offloads on one stream.
    assert slow.load_wait_s >= 3 * SLOW.transfer_time(SLOW.block_bytes)
    # Each session waits in its own steps only: the mean TCT grows by half the total wait.
    assert slow.tct_mean_s - fast.tct_mean_s == pytest.approx(slow.load_wait_s / 2, rel=1e-9)
    assert slow.recomputed_tokens == fast.recomputed_tokens


@pytest.mark.parametrize("policy", ["lru", "graph", "belady"])
def test_host_tier_under_pressure_conserves_and_helps(policy):
    sessions = generate("swe", 12, seed=1, scale=0.05, arrival_rate=1.0)
    base = SimConfig(num_gpu_blocks=750, policy=policy)
    discard = simulate(sessions, base)
    sim = Simulator(sessions, dataclasses.replace(base, num_host_blocks=2000))
    r = sim.run()
    sim.manager.check_integrity()
    assert r.queried_tokens == r.hit_tokens + r.computed_tokens + r.abandoned_tokens
    assert r.bytes_offloaded > 0 and r.bytes_reloaded > 0
    assert r.num_host_blocks == 2000
    assert r.recomputed_tokens < discard.recomputed_tokens


def test_host_config():
    assert SimConfig(host_memory_bytes=COST.block_bytes * 5).host_blocks() == 5
    assert SimConfig().host_blocks() == 0
    with pytest.raises(ValueError, match="not both"):
        SimConfig(num_host_blocks=1, host_memory_bytes=1e9)
    with pytest.raises(ValueError, match="num_host_blocks must be an integer >= 0"):
        SimConfig(num_host_blocks=-1)
    with pytest.raises(ValueError, match="host_memory_bytes must be a finite number >= 0"):
        SimConfig(host_memory_bytes=float("nan"))
    with pytest.raises(ValueError, match="resume_hints must be a bool"):
        SimConfig(resume_hints="yes")


def test_a_host_size_that_holds_no_block_is_refused():
    """Review s47 simcore #4: a host size below one block gave `host_blocks() == 0`, and the
    run (a `compare` row labelled `lru+host` too) went on with no host tier, unsaid. 0 stays
    "no host tier", as the engine's `host_memory_bytes=0`."""
    from kvsaga.sim.compare import compare, config_for

    with pytest.raises(ValueError, match=rf"host_memory_bytes=1,000 B holds no host block "
                                         rf"\({COST.block_bytes:,} B each with preset "):
        SimConfig(host_memory_bytes=1000)
    assert SimConfig(host_memory_bytes=0).host_blocks() == 0
    assert SimConfig(host_memory_bytes=COST.block_bytes).host_blocks() == 1
    base = SimConfig(num_gpu_blocks=400)
    with pytest.raises(ValueError, match=r"^policy 'lru\+host': SimConfig.host_memory_bytes="
                                         r"1,000 B holds no host block"):
        config_for("lru+host", base, 1000)
    with pytest.raises(ValueError, match="holds no host block"):
        compare(pair(), base, ["lru+host"], host_memory_bytes=1000)
    assert config_for("lru+host", base, COST.block_bytes).host_blocks() == 1
