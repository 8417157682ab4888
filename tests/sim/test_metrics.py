"""kvsaga.sim.metrics: the usage recorder's time integrals."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from kvsaga.pool import BlockPool
from kvsaga.sim.compare import peak_prompt_working_set, peak_working_set
from kvsaga.sim.cost import attention_pairs
from kvsaga.sim.metrics import UsageRecorder
from kvsaga.sim.simulator import SimConfig, simulate
from kvsaga.sim.trace import Session, SharedPrefix, Step
from kvsaga.sim.workloads import generate


def test_live_share_integrates_live_blocks_capped_at_the_pool():
    pool = BlockPool(10)
    rec = UsageRecorder(pool)
    rec.live_blocks = 4
    rec.advance(2.0)  # 4 blocks x 2 s
    rec.live_blocks = 25  # more live context than the pool: counts as the whole pool
    rec.advance(3.0)  # 10 x 1 s
    rec.live_blocks = 0
    rec.advance(5.0)
    assert rec.live_s == pytest.approx(18.0)
    assert rec.active_s == rec.occupied_s == 0.0  # nothing allocated


@pytest.mark.parametrize("family", ["swe", "web", "bfcl", "assistant"])
@pytest.mark.parametrize("num_gpu_blocks", [None, 750])
def test_utilization_exceeds_the_live_share_only_by_shared_prefixes(family, num_gpu_blocks):
    """Blocks in use belong to live sessions' contexts, or are a shared prefix cached between
    the sessions that hit it: at any time at most each prefix's full blocks more."""
    sessions = generate(family, 6, seed=3, scale=0.05)
    cfg = SimConfig(num_gpu_blocks=num_gpu_blocks)
    r = simulate(sessions, cfg)
    bs = cfg.cost.kv_spec.block_size
    prefixes = {(s.tenant, s.shared_prefix.group): s.shared_prefix.tokens // bs
                for s in sessions}
    assert 0 < r.kv_live_share <= 1
    assert r.kv_utilization <= r.kv_live_share + sum(prefixes.values()) / r.num_gpu_blocks
    # Without shared prefixes, nothing but live contexts is used: the decoded tokens' blocks
    # are live too (they were left out, and utilization passed the live share).
    bare = [dataclasses.replace(s, shared_prefix=SharedPrefix(s.id, 0)) for s in sessions]
    r = simulate(bare, cfg)
    assert r.kv_utilization <= r.kv_live_share * (1 + 1e-9)


def test_a_decoding_step_is_live():
    """One session decoding 2000 tokens from a 16-token prompt: every block it holds is
    live, decoded ones included (the live share read 0.005 against a utilization of 0.32)."""
    s = Session("a", "w", 0.0, SharedPrefix("g", 0), (Step(16, 2000),))
    r = simulate([s], SimConfig(num_gpu_blocks=200, scheduler="fcfs"))
    assert r.kv_utilization > 0.3
    assert r.kv_live_share == pytest.approx(r.kv_utilization, rel=1e-9)
    assert r.peak_live_blocks == -(-(16 + 1999) // 16)  # the last output has no KV


def test_a_paused_context_is_live_without_its_last_output():
    """Step(32, 1) pauses 10 s with 32 tokens of KV (2 blocks); its 33rd token, the output,
    gets KV only in the next prompt, so the pause counts 2 blocks, not 3. By hand, with the
    cost model's step times."""
    n = 10
    cfg = SimConfig(num_gpu_blocks=n, scheduler="fcfs")
    c = cfg.cost
    s = Session("a", "w", 0.0, SharedPrefix("g", 0), (Step(32, 1, "t", 10.0), Step(16, 1)))
    r = simulate([s], cfg)
    d0 = c._step_time(32, attention_pairs(32, 0), 0, 0, 0)
    d1 = c._step_time(17, attention_pairs(17, 32), 32, 0, 0)
    span = d0 + 10 + d1
    assert r.makespan_s == pytest.approx(span, rel=1e-12)
    hand = (2 * d0 + 2 * 10 + 4 * d1) / (n * span)  # 49 tokens: 4 blocks in the last step
    assert r.kv_live_share == pytest.approx(hand, rel=1e-9)
    assert r.kv_utilization == pytest.approx(hand, rel=1e-9)


def _paused_beside_a_long_decode() -> list[Session]:
    """A pauses 30 s holding 33 tokens of KV (3 blocks) while B's one step, a 16-token
    prompt and 800 outputs, reaches 815 tokens of KV (51 blocks): 54 blocks at once."""
    a = Session("A", "w", 0.0, SharedPrefix("g", 0), (Step(32, 2, "t", 30.0), Step(16, 1)))
    b = Session("B", "w", 0.01, SharedPrefix("h", 0), (Step(16, 800),))
    return [a, b]


def test_the_peak_working_set_is_what_a_pool_needs_to_recompute_nothing():
    sessions = _paused_beside_a_long_decode()
    base = SimConfig(scheduler="fcfs", policy="lru")
    assert peak_working_set(sessions, base) == 3 + 51  # was 4: B's decode left out
    # Its old measure, which the benchmarks' capacity grids are shares of: A's 34-token
    # context at its finish (3 blocks) and B's prompt (1 block).
    assert peak_prompt_working_set(sessions, base) == 4
    at = {n: simulate(sessions, dataclasses.replace(base, num_gpu_blocks=n))
          for n in (53, 54)}
    assert at[54].recomputed_tokens == 0 < at[53].recomputed_tokens


@pytest.mark.parametrize("times", [
    [0.1 * k + 0.013 * k * k for k in range(1, 40)],  # a run's step ends: arrays
    [0.5, 0.5, 0.7, 0.7, 0.9, 1.3, 1.3, 2.0, 2.5, 3.1],  # repeated ends add nothing
    [0.5, 0.4, 0.9, 1.3, 1.2, 2.0, 2.2, 2.4, 2.6, 3.0],  # falling: step by step
    # Falls that no later rise in the same counts cancels (one at step 4, where the counts
    # change, and one at the end): summing the negative differences would show.
    [0.5, 0.6, 0.9, 1.3, 1.2, 2.0, 2.2, 2.4, 2.6, 3.0, 2.9],
    [0.2, 0.3],  # too short for arrays
])
def test_advance_through_equals_advance_step_by_step(times):
    # (first step, active, cached, live blocks): live past the pool's 10 counts as 10.
    counts = ([(0, 3, 2, 7), (4, 5, 1, 9), (7, 6, 0, 12)] if len(times) > 7
              else [(0, 3, 2, 7)])
    recs = []
    for _ in range(2):
        pool = SimpleNamespace(num_blocks=10, num_active=0, num_cached=0, reused_s=0.0)
        rec = UsageRecorder(pool)
        rec.live_blocks = 7
        rec.advance(0.05)
        recs.append(rec)
    each, through = recs
    bounds = [c[0] for c in counts[1:]] + [len(times)]
    for (first, active, cached, live), end in zip(counts, bounds, strict=True):
        each.pool.num_active, each.pool.num_cached = active, cached  # as the pool's counts
        each.live_blocks = live
        for t in times[first:end]:
            each.advance(t)
    through.advance_through(times, counts)
    for name in ("active_s", "occupied_s", "live_s", "_last", "now"):
        assert getattr(through, name) == getattr(each, name), name  # to the bit
