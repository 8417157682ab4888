"""bench/scheduling_bound.py: the mean-TCT lower bound by hand on cases where each of its
parts binds, and against the simulator (no scheduler, policy or admission order beats it)."""

from __future__ import annotations

import pytest

from kvsaga.sim.metrics import unloaded_tct
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.trace import Session, SharedPrefix, Step
from tests.bench_scripts import bench_modules

COST = SimConfig().cost


mods = bench_modules("scheduling", "scheduling_bound", "scheduling_oracle")


def one_step(sid: str, prompt: int, out: int, arrival: float = 0.0) -> Session:
    return Session(sid, "w", arrival, SharedPrefix("g", 0), (Step(prompt, out),))


def simulated(sessions, blocks: int, scheduler: str = "fcfs", policy: str = "lru",
              params=None) -> float:
    cfg = SimConfig(num_gpu_blocks=blocks, scheduler=scheduler, policy=policy,
                    scheduler_params=params)
    return Simulator(sessions, cfg).run().tct_mean_s


def test_srpt_by_hand(mods):
    _, bound, _ = mods
    # job b (1 s) arrives while a (3 s) runs: it preempts a, which ends at 4
    assert bound.srpt_completions([(0.0, 3.0), (1.0, 1.0)]) == pytest.approx([2.0, 4.0])
    assert bound.srpt_completions([(0.0, 3.0), (1.0, 1.0)], speed=2) == pytest.approx(
        [1.5, 2.0])
    assert bound.srpt_completions([(5.0, 1.0)]) == pytest.approx([6.0])


def test_solo_is_at_most_unloaded_and_never_above_a_lone_run(mods):
    sched, bound, _ = mods
    sessions = sched.trace("swe", 101, 1.0, sessions=6)
    for s in sessions:
        need = bound.session_needs(s, COST, 8192)
        assert need.solo_s <= unloaded_tct(s, COST, 8192) + 1e-9
        alone = SimConfig(num_gpu_blocks=4 * COST.kv_spec.num_blocks_for(s.total_tokens))
        assert need.solo_s <= Simulator([s], alone).run().tct_mean_s + 1e-9


def test_phases_over_half_the_gpu_run_one_at_a_time(mods):
    _, bound, _ = mods
    # two sessions at once, each a 960-token prompt (60 blocks) and 50 outputs, 100 blocks:
    # their emitting steps cannot share a batch step, so the second ends after both
    sessions = [one_step("a", 960, 50), one_step("b", 960, 50)]
    need = bound.session_needs(sessions[0], COST, 8192)
    # the last prefill chunk (at least one token over 959 cached) then 49 decodes
    emit = COST.prefill_time(1, 959) + sum(COST.decode_step_time(1, 960 + j)
                                           for j in range(1, 50))
    assert need.steps[0][2] == pytest.approx(emit, rel=1e-12)
    got = bound.mean_tct_bound(sessions, COST, 100)
    assert got["which"] == "exclusive phases, m 1"
    assert got["bound_s"] == pytest.approx((need.solo_s + 2 * emit) / 2, rel=1e-12)
    assert got["solo_s"] == pytest.approx(need.solo_s)
    # room for both: nothing excludes, the bound is the solo one
    assert bound.mean_tct_bound(sessions, COST, 200)["which"] == "solo"
    for sched in ("fcfs", "workflow"):
        assert simulated(sessions, 100, sched) >= got["bound_s"] - 1e-9


def test_the_last_prefill_chunk_is_timed_as_a_chunk_not_a_decode(mods):
    _, bound, _ = mods
    # one output: the emitting phase is the last chunk alone; at its least (one token over
    # 959 cached) it reads 959 tokens' KV and writes one, a decode over 960 reads 960 and
    # writes one, so a decode's time would overstate it by one token's KV read
    need = bound.session_needs(one_step("a", 960, 1), COST, 8192)
    assert need.steps[0][2] == COST.prefill_time(1, 959)
    kv_read = COST.kv_bytes_per_token / COST.achievable_hbm_bw
    assert COST.decode_step_time(1, 960) - need.steps[0][2] == pytest.approx(kv_read, rel=1e-3)
    assert need.area == need.steps[0][2] * 60  # 60 own blocks


def test_gpu_time_that_cannot_be_shared_binds_the_window_bound(mods):
    _, bound, _ = mods
    # ten 6000-token prompts at once, one output each: compute-bound prefills queue on the
    # GPU, so the k-th ends no sooner than k prefills' compute (up to the grid of lam)
    sessions = [one_step(f"s{i}", 6000, 1) for i in range(10)]
    two_params, attention, flops = COST._roofline[:3]
    w = (two_params * 5999 + attention * (5999 * 1 + 5999 * 6000 // 2)) / flops
    got = bound.mean_tct_bound(sessions, COST, 4000)
    assert got["which"] == "memory-time"
    assert got["bound_s"] >= 0.95 * w * 11 / 2 > 2 * got["solo_s"]
    assert simulated(sessions, 4000) >= got["bound_s"] - 1e-9


def test_keeping_through_a_pause_costs_memory_time(mods):
    _, bound, _ = mods
    pause = (2.0, 0, 1600)  # 1600 tokens (100 blocks) over a 2 s pause
    two_params, attention, flops = COST._roofline[:3]
    keep = 2.0 / 16 * 1600
    assert bound._pause_cost(pause, 0.0, 16, two_params, attention, flops) == 0.0
    # a huge multiplier: recomputing costs more than keeping, every token is kept
    assert bound._pause_cost(pause, 1e12, 16, two_params, attention, flops) == pytest.approx(
        keep)
    # in between: never more than either way alone
    lam = 1e4
    mixed = bound._pause_cost(pause, lam, 16, two_params, attention, flops)
    redo = lam * (two_params * 1600 + attention * 1600 * 1601 / 2) / flops
    assert 0 < mixed <= min(keep, redo) + 1e-9


@pytest.mark.parametrize("family,frac", [("swe", 0.25), ("bfcl", 0.25), ("web", 0.5)])
def test_no_scheduler_beats_the_bound(mods, family, frac):
    sched, bound, oracle = mods
    sessions = sched.trace(family, 102, 2.0, sessions=8)
    blocks = sched.capacity(sessions, frac)
    cfg = SimConfig(preset=sched.PRESET)
    floor = bound.mean_tct_bound(sessions, cfg.cost, blocks)["bound_s"]
    runs = [simulated(sessions, blocks, "fcfs", "lru"),
            simulated(sessions, blocks, "workflow", "graph"),
            simulated(sessions, blocks, "workflow", "lru", {"admission_order": "fifo"})]
    ocfg = SimConfig(preset=sched.PRESET, num_gpu_blocks=blocks, policy="graph")
    runs.append(oracle.simulator(sessions, ocfg).run().tct_mean_s)
    assert min(runs) >= floor - 1e-9


def test_bad_input_is_refused(mods):
    _, bound, _ = mods
    with pytest.raises(ValueError, match="no sessions"):
        bound.mean_tct_bound([], COST, 10)
    with pytest.raises(ValueError, match="num_blocks"):
        bound.mean_tct_bound([one_step("a", 10, 1)], COST, 0)


def test_the_bench_rows_carry_the_bound(mods):
    sched, _, _ = mods
    row = sched._run(("bfcl", 101, 1.0, 0.25, "fcfs", "lru", None))
    assert 0 < row["tct_bound_mean_s"] <= row["tct_mean_s"]
    assert row["tct_bound_from"] in ("solo", "memory-time") or row[
        "tct_bound_from"].startswith("exclusive phases")
    assert sched.bound(row) == pytest.approx(row["tct_mean_s"] / row["tct_bound_mean_s"])
    old = {k: v for k, v in row.items() if k != "tct_bound_mean_s"}  # a row saved before
    assert sched.bound(old) == pytest.approx(row["tct_mean_s"] / row["tct_unloaded_mean_s"])
