"""Simulator: conservation, determinism, a hand-computed trace, and the policy it drives."""

from __future__ import annotations

import dataclasses

import pytest

from kvsaga.policy import LRUPolicy
from kvsaga.sim.cost import PRESETS, attention_pairs
from kvsaga.sim.metrics import unloaded_tct
from kvsaga.sim.simulator import SimConfig, Simulator, simulate
from kvsaga.sim.trace import Session, SharedPrefix, Step
from kvsaga.sim.workloads import generate

COST = PRESETS["a100-llama3-8b"]


def tiny_trace(seed: int = 1):
    # Small, dense and under pressure: arrivals far faster than the family default.
    return generate("swe", 12, seed=seed, scale=0.05, arrival_rate=1.0)


def distinct_computed_tokens(sessions, block_size: int = COST.kv_spec.block_size) -> int:
    """Tokens whose KV must be computed at least once, whatever the policy: each group's
    prefix's full blocks once (hits are whole blocks: the prefix's partial last block is
    every session's own), then every session token but the last output (nothing reads it)."""
    prefixes = {(s.tenant, s.shared_prefix.group): s.shared_prefix.tokens // block_size
                * block_size for s in sessions}
    return sum(prefixes.values()) + sum(
        s.total_tokens - s.shared_prefix.tokens // block_size * block_size - 1
        for s in sessions)


# 380 barely holds the longest session; 750 under vLLM's FCFS admission preempts
# mid-prefill (abandoned tokens).
@pytest.mark.parametrize("num_gpu_blocks,scheduler", [
    (380, "workflow"), (750, "fcfs"), (750, "workflow"), (100_000, "workflow"), (380, "fcfs")])
def test_conservation(num_gpu_blocks, scheduler):
    sessions = tiny_trace()
    sim = Simulator(sessions, SimConfig(num_gpu_blocks=num_gpu_blocks, scheduler=scheduler))
    r = sim.run()
    sim.manager.check_integrity()
    assert r.scheduler == scheduler and not sim.scheduler.has_work
    assert r.num_steps == sum(s.num_steps for s in sessions)
    assert r.prompt_tokens == sum(s.prompt_length(k) for s in sessions
                                  for k in range(s.num_steps))
    # Every prompt token of every attempt is a hit, computed, or left when preempted.
    assert r.queried_tokens == r.hit_tokens + r.computed_tokens + r.abandoned_tokens
    assert r.abandoned_tokens > 0 or (num_gpu_blocks, scheduler) != (750, "fcfs")
    assert r.recomputed_after_preemption_tokens <= r.recomputed_tokens
    assert r.num_preemptions > 0 or r.recomputed_after_preemption_tokens == 0
    assert r.computed_tokens == r.first_time_tokens + r.recomputed_tokens
    # Each of those is computed first either by a prefill or as a decode step's fed token.
    assert r.first_time_tokens + r.decode_tokens == distinct_computed_tokens(sessions)
    stats = sim.manager.stats()
    assert (stats.queried_tokens, stats.hit_tokens) == (r.queried_tokens, r.hit_tokens)
    assert stats.num_running_sessions == stats.num_paused_sessions == 0
    if r.num_preemptions == 0:
        assert r.queried_tokens == r.prompt_tokens and r.abandoned_tokens == 0
        assert r.decode_tokens == sum(st.output_tokens - 1 for s in sessions for st in s.steps)
    assert 0 <= r.kv_active <= r.kv_utilization <= r.kv_occupancy <= 1
    assert r.bytes_offloaded == r.bytes_reloaded == 0 and r.peak_live_blocks > 0
    assert r.tasks_per_hour == pytest.approx(len(sessions) * 3600 / r.makespan_s)
    assert 0 < r.slo_attainment <= 1 and r.tenants is None


def test_pressure_recomputes_and_preempts():
    sessions = tiny_trace()
    roomy = simulate(sessions, SimConfig(num_gpu_blocks=100_000, scheduler="fcfs"))
    tight = simulate(sessions, SimConfig(num_gpu_blocks=750, scheduler="fcfs"))
    assert roomy.num_preemptions == 0 and roomy.num_evicted_blocks == 0
    assert tight.num_preemptions > 0 and tight.num_evicted_blocks > 0
    assert tight.recomputed_tokens > roomy.recomputed_tokens
    assert tight.hit_rate < roomy.hit_rate
    assert tight.tct_mean_s > roomy.tct_mean_s
    assert 0 < tight.recomputed_after_preemption_tokens < tight.recomputed_tokens
    assert roomy.slo_attainment == 1.0 and tight.slo_attainment < 1.0


def test_workflow_admission_ends_thrash():
    """Workflow-atomic admission keeps admitted sessions' contexts resident across their
    tool calls: where fcfs preempts and recomputes, it recomputes far less and finishes
    tasks sooner."""
    sessions = tiny_trace()
    fcfs = simulate(sessions, SimConfig(num_gpu_blocks=750, scheduler="fcfs"))
    wf = simulate(sessions, SimConfig(num_gpu_blocks=750))
    assert fcfs.num_preemptions > 0 and wf.num_preemptions == 0
    assert wf.recomputed_after_preemption_tokens == 0
    assert wf.recomputed_tokens < fcfs.recomputed_tokens / 2
    assert wf.tct_mean_s < fcfs.tct_mean_s


def test_warm_bypass_is_bounded():
    """With max_bypass=0 resumed steps are admitted in queue order (warm ones do not go
    ahead of the head of the resumed queue)."""
    sessions = tiny_trace()
    sim = Simulator(sessions, SimConfig(num_gpu_blocks=750, scheduler_params={"max_bypass": 0}))
    sched = sim.scheduler
    picks = []
    pick = sched._candidate

    def spy(now: float):
        req = pick(now)
        if sched._resumed:
            assert req is sched._resumed[0]
            picks.append(req)
        return req

    sched._candidate = spy
    sim.run()
    assert picks


def test_the_simulator_drives_the_core_scheduler():
    from kvsaga.scheduler import FCFSScheduler, WorkflowScheduler

    sim = Simulator(tiny_trace(), SimConfig(num_gpu_blocks=750, scheduler="fcfs"))
    assert type(sim.scheduler) is FCFSScheduler and sim.scheduler.manager is sim.manager
    sim = Simulator(tiny_trace(), SimConfig(num_gpu_blocks=750,
                                            scheduler_params={"overcommit": 0.5}))
    assert type(sim.scheduler) is WorkflowScheduler and sim.scheduler.overcommit == 0.5


def test_scheduler_config_validated():
    with pytest.raises(ValueError, match="unknown scheduler 'lifo'"):
        SimConfig(scheduler="lifo")
    with pytest.raises(ValueError, match="max_bypass must be an integer >= 0"):
        SimConfig(scheduler_params={"max_bypass": -1})
    with pytest.raises(ValueError, match="'fcfs' has no parameter 'overcommit'"):
        SimConfig(scheduler="fcfs", scheduler_params={"overcommit": 2.0})
    with pytest.raises(ValueError, match="scheduler_params must be a mapping"):
        SimConfig(scheduler_params=[("overcommit", 2.0)])
    with pytest.raises(ValueError, match="slo_factor"):
        SimConfig(slo_factor=0)


def test_unloaded_tct_is_a_session_alone_with_unbounded_kv():
    for s in generate("web", 3, seed=2, scale=0.1):
        cfg = SimConfig(num_gpu_blocks=100_000)
        assert simulate([s], cfg).tct_mean_s == pytest.approx(
            unloaded_tct(s, cfg.cost, cfg.max_num_batched_tokens), rel=1e-9)


def test_deterministic_per_seed():
    config = SimConfig(num_gpu_blocks=400)
    a = simulate(tiny_trace(1), config)
    assert a == simulate(tiny_trace(1), config)
    assert a != simulate(tiny_trace(2), config)


def _session(sid: str, arrival: float, steps: list[Step], prefix: int = 40) -> Session:
    return Session(id=sid, workflow="t", arrival_s=arrival,
                   shared_prefix=SharedPrefix("sys", prefix), steps=tuple(steps))


def test_hand_computed_trace():
    # A: prefix 40 + input 30, 5 outputs, a 2 s tool, then input 20 and 3 outputs.
    # B arrives after A has ended and shares A's prefix (2 full 16-token blocks of it).
    a = _session("A", 0.0, [Step(30, 5, "read", 2.0), Step(20, 3)])
    b = _session("B", 1000.0, [Step(30, 2)])
    r = simulate([a, b], SimConfig(num_gpu_blocks=1000))

    # A, step 0: one prefill step of 70 tokens, then 4 decode steps feeding outputs 0..3
    # (contexts 71..74); the 5th output is sampled but not fed.
    t = COST.prefill_time(70) + sum(COST.decode_step_time(1, 70 + i) for i in range(1, 5))
    # Step 1: prompt 70 + 5 + 20 = 95; 74 computed tokens are cached (4 full blocks and the
    # retained 10-token tail), so 21 are prefilled over 74, then 2 decode steps (96, 97).
    t += 2.0
    t += COST.step_time(prefill_tokens=21, prefill_attention_pairs=attention_pairs(21, 74),
                        prefill_context_tokens=74)
    t += COST.decode_step_time(1, 96) + COST.decode_step_time(1, 97)
    # B: prompt 70, hits the 2 full prefix blocks (32 tokens): 38 prefilled, 1 decode step.
    tb = COST.step_time(prefill_tokens=38, prefill_attention_pairs=attention_pairs(38, 32),
                        prefill_context_tokens=32) + COST.decode_step_time(1, 71)

    assert r.tct_mean_s == pytest.approx((t + tb) / 2, rel=1e-12)
    assert r.makespan_s == pytest.approx(1000.0 + tb, rel=1e-12)
    assert r.busy_s == pytest.approx(t - 2.0 + tb, rel=1e-12)
    assert r.num_batch_steps == 1 + 4 + 1 + 2 + 1 + 1
    assert r.prompt_tokens == r.queried_tokens == 70 + 95 + 70
    assert r.hit_tokens == 74 + 32
    # B computes the 8 prefix tokens of its partial block for the first time: A computed its
    # own, but a partial block is never a hit, so nothing B computes is recomputed.
    assert r.recomputed_tokens == 0
    assert r.first_time_tokens == 70 + 21 + 38
    assert r.decode_tokens == 4 + 2 + 1
    assert r.num_preemptions == 0 and r.num_evicted_blocks == 0


class RecordingLRU(LRUPolicy):
    """The real LRU policy, noting the hints it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.hints = []

    def step_finished(self, session, now, hint) -> None:
        self.hints.append((session.session_id, hint.tool, hint.expected_s))
        super().step_finished(session, now, hint)


@pytest.mark.parametrize(("hints", "expected"), [
    ("tool", [("A", "read", None)]),
    ("oracle", [("A", "read", 2.0)]),
    ("none", [("A", None, None)]),
])
def test_drives_the_given_policy_with_hints(hints, expected):
    policy = RecordingLRU()
    a = _session("A", 0.0, [Step(30, 5, "read", 2.0), Step(20, 3)])
    sim = Simulator([a], SimConfig(num_gpu_blocks=1000, hints=hints), policy=policy)
    assert sim.manager.policy is policy
    sim.run()
    assert policy.hints == expected


@pytest.mark.parametrize("name", ["ttl", "graph", "saga"])
def test_every_online_policy_runs_priced_by_the_preset(name):
    sessions = tiny_trace()
    sim = Simulator(sessions, SimConfig(num_gpu_blocks=750, policy=name))
    assert sim.manager.policy.name == name and sim.manager.policy.cost is COST
    r = sim.run()
    sim.manager.check_integrity()
    assert r.policy == name
    assert r.queried_tokens == r.hit_tokens + r.computed_tokens + r.abandoned_tokens
    assert r.first_time_tokens + r.decode_tokens == distinct_computed_tokens(sessions)


@pytest.mark.parametrize("name", ["belady", "oracle-ttl"])
def test_oracle_policies_get_the_trace_oracle(name):
    sessions = tiny_trace()
    sim = Simulator(sessions, SimConfig(num_gpu_blocks=750, policy=name))
    assert sim.manager.policy.oracle is sim.oracle and sim.oracle is not None
    r = sim.run()
    sim.manager.check_integrity()
    assert r.policy == name
    assert r.queried_tokens == r.hit_tokens + r.computed_tokens + r.abandoned_tokens
    assert r.first_time_tokens + r.decode_tokens == distinct_computed_tokens(sessions)


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown policy 'fifo'"):
        Simulator(tiny_trace(), SimConfig(num_gpu_blocks=750, policy="fifo"))


def test_bad_config_and_trace():
    with pytest.raises(ValueError, match="unknown preset 'tpu'"):
        SimConfig(preset="tpu")
    with pytest.raises(ValueError, match="not both"):
        SimConfig(num_gpu_blocks=10, kv_memory_bytes=1e9)
    with pytest.raises(ValueError, match="hints must be"):
        SimConfig(hints="psychic")
    with pytest.raises(ValueError, match="max_num_seqs must be an integer >= 1, got 0"):
        SimConfig(max_num_seqs=0)
    long = _session("L", 0.0, [Step(1000, 5)])
    with pytest.raises(ValueError, match="session 'L' reaches 1045 tokens"):
        Simulator([long], SimConfig(num_gpu_blocks=10))
    with pytest.raises(ValueError, match="'A' repeats"):
        Simulator([_session("A", 0, [Step(1, 1)]), _session("A", 1, [Step(1, 1)])])
    assert SimConfig(kv_memory_bytes=COST.block_bytes * 7).blocks() == 7
    assert SimConfig().blocks() == COST.num_blocks(COST.default_kv_memory_bytes())


def test_a_sessions_prompt_list_grows_and_is_cut_back():
    from kvsaga.sim.request import SimTokens

    t = SimTokens("s", list(range(100, 130)), b"r" * 32)
    p = t.prompt(10)
    assert p == list(range(100, 110))
    assert t.prompt(25) is p and p == list(range(100, 125))  # the same list, extended
    assert t.prompt(5) == list(range(100, 105))
    assert t.prompt(30) == t.ids


def test_a_session_too_long_for_the_capacity_is_told_where_the_capacity_came_from():
    """The error names the blocks and their source: the block count given, or the memory
    and the bytes one block takes (a tiny memory otherwise reads as "0 blocks", unexplained)."""
    sessions = generate("swe", 1, seed=0, scale=0.05)
    with pytest.raises(ValueError, match=r"the 1 blocks of KV capacity \(num_gpu_blocks\)"):
        Simulator(sessions, SimConfig(num_gpu_blocks=1))
    with pytest.raises(ValueError, match=r"\(kv_memory_bytes 4,096 B at [\d,]+ B per block\)"):
        Simulator(sessions, SimConfig(kv_memory_bytes=4096))


@pytest.mark.parametrize("scheduler", ["fcfs", "workflow"])
def test_a_session_fits_the_blocks_of_all_its_tokens_but_the_last_output(scheduler):
    """Review s47 simcore #2: the capacity check counted the session's last output token,
    which is never fed and gets no KV; 31 + 2 tokens need KV for 32 (2 blocks of 16), but the
    session was refused at 2 blocks (so `kvsaga sim` exited 2)."""
    s = _session("a", 0.0, [Step(31, 2)], prefix=0)
    config = SimConfig(num_gpu_blocks=2, scheduler=scheduler)
    fast = Simulator([s], config).run()
    assert fast.peak_live_blocks == 2 and fast.recomputed_tokens == 0
    assert fast.num_preemptions == 0
    assert Simulator([s], config, reference=True).run() == fast
    with pytest.raises(ValueError, match=r"reaches 33 tokens and needs KV for 32 of them "
                                         r"\(2 blocks; its last output is never fed\), more "
                                         r"than the 1 blocks"):
        Simulator([s], SimConfig(num_gpu_blocks=1, scheduler=scheduler))


def test_a_tenant_share_counts_the_same_blocks():
    """The same measure in `compare.tenant_share_misfit`: each tenant's 33-token session fits
    its 2-block share of 4 (it was called a misfit, and its slowdown refused)."""
    from kvsaga.sim.compare import tenant_share_misfit

    two = [dataclasses.replace(_session(sid, 0.0, [Step(31, 2)], prefix=0), tenant=sid)
           for sid in "ab"]
    assert tenant_share_misfit(two, SimConfig(num_gpu_blocks=4)) is None
    assert "(2 blocks)" in tenant_share_misfit(two, SimConfig(num_gpu_blocks=3))


def test_an_empty_trace_on_no_block_names_where_the_capacity_came_from():
    """Review s47 simcore #7: `simulate([], SimConfig(kv_memory_bytes=1))` raised the
    manager's "num_gpu_blocks must be a positive int, got 0", a field never given."""
    with pytest.raises(ValueError, match=r"^0 blocks of KV capacity \(kv_memory_bytes 1 B at "
                                         r"[\d,]+ B per block\): a simulation needs at least "
                                         r"one$"):
        simulate([], SimConfig(kv_memory_bytes=1))
    assert simulate([], SimConfig(kv_memory_bytes=COST.block_bytes)).num_sessions == 0
