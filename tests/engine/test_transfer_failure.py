"""A host-tier copy that fails must be rolled back: the engine must not meet the same failed
transfer at every later step, and no block the failed plan was to write (host copies of
offloaded blocks, GPU blocks being loaded) may stay indexed, or a later step takes bytes
never written as cached tokens.

Before the fix `step` kept the failed transfer (it was cleared only after a successful
wait), so every later step raised again; and the plan's offloads stayed in the host index,
so a resumed session loaded garbage as 48 cached tokens and generated other tokens.
"""

from __future__ import annotations

import itertools
import random

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
from kvsaga.errors import InvalidRequest
from kvsaga.host_tier import TransferPlan
from kvsaga.manager import KVCacheManager
from tests.engine.helpers import drain, engine_core  # noqa: F401 (`core`)

GREEDY = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
BLOCK_BYTES = 8192  # the tiny model's KV block (16 tokens)
NUM_SESSIONS = 14


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


class FailOnce:
    """The transfer engine's delay hook: raises at the first copy after `arm()`."""

    def __init__(self) -> None:
        self.armed = False
        self.fired = 0

    def arm(self) -> None:
        self.armed = True

    def __call__(self) -> None:
        if self.armed:
            self.armed = False
            self.fired += 1
            raise RuntimeError("simulated copy failure")


def ticks():
    """A clock that advances 10 ms a call: the policy's choices (which victims it
    offloads) do not depend on how fast the machine runs."""
    n = itertools.count()
    return lambda: next(n) / 100


def make(model_dir, hook=None) -> LLMEngine:
    # 24 GPU blocks: the sessions below (4 blocks each) evict each other to the host tier.
    engine = LLMEngine(str(model_dir), device="cpu", progress=False,
                       kv_memory_bytes=24 * BLOCK_BYTES, host_memory_bytes=96 * BLOCK_BYTES,
                       transfer_delay=hook, clock=ticks())
    assert engine.spec.bytes_per_block == BLOCK_BYTES
    return engine


def prompt(i: int) -> list[int]:
    return [(5 + 7 * i + j) % 200 + 3 for j in range(3 * 16 + 2)]


def run(engine: LLMEngine, hook: FailOnce | None, fail_first: int | None,
        fail_resume: int | None):
    """First steps of NUM_SESSIONS sessions, then each session's second step; the copy of
    the step that runs first step `fail_first` (or second step `fail_resume`) fails, and
    that request is aborted. Returns each session's second-step (output, cached tokens)."""
    contexts = {}
    for i in range(NUM_SESSIONS):
        req = engine.add_request(prompt(i), GREEDY, session_id=f"s{i}")
        if i == fail_first:
            hook.arm()
        try:
            drain(engine)
        except RuntimeError as e:
            assert "simulated copy failure" in str(e)
            engine.abort(req.request_id)
            continue
        contexts[i] = prompt(i) + req.output_ids
    out = {}
    for i, ctx in contexts.items():
        req = engine.add_request(ctx + [9, 9, 9], GREEDY, session_id=f"s{i}")
        if i == fail_resume:
            hook.arm()
            with pytest.raises(RuntimeError, match="simulated copy failure"):
                drain(engine)
            engine.manager.check_integrity()
        drain(engine)  # (a request cut back by the rollback runs on)
        out[i] = (req.output_ids, req.num_cached_tokens)
        engine.manager.check_integrity()
    return out


@pytest.fixture(scope="module")
def reference(model_dir):
    engine = make(model_dir)
    out = run(engine, None, None, None)
    assert engine.manager.stats().host_hit_tokens > 0  # the second steps load from the host
    return out


def test_a_failed_copy_is_not_met_again_by_later_steps(model_dir, core):
    hook = FailOnce()
    engine = make(model_dir, hook)
    for i in range(NUM_SESSIONS):
        engine.add_request(prompt(i), GREEDY, session_id=f"s{i}")
        if i == 8:
            hook.arm()
        try:
            drain(engine)
        except RuntimeError:
            break
    assert hook.fired == 1, "no copy ran after the hook was armed"
    for rid in list(engine.requests):
        engine.abort(rid)
    req = engine.add_request([3, 4, 5, 6], GREEDY)
    drain(engine)  # before the fix: every step raised the old transfer's error again
    assert req.finish_reason == "length"
    engine.manager.check_integrity()


def test_failed_offloads_are_not_hit_later(model_dir, core, reference):
    hook = FailOnce()
    engine = make(model_dir, hook)
    out = run(engine, hook, 8, None)
    assert hook.fired == 1
    assert 8 not in out
    for i, (ids, _) in out.items():
        # before the fix: session 0 hit its never-written host copies and said other tokens
        assert ids == reference[i][0], f"session s{i}"


def test_a_failed_load_of_a_running_steps_hits_is_computed_again(model_dir, core,
                                                                 reference):
    hook = FailOnce()
    engine = make(model_dir, hook)
    out = run(engine, hook, None, 0)  # s0's blocks were offloaded long ago
    assert hook.fired == 1
    ids, cached = out[0]
    assert ids == reference[0][0]
    assert cached < reference[0][1]  # the loaded hits were dropped and computed again
    for i in out:
        assert out[i][0] == reference[i][0], f"session s{i}"


def test_random_copy_failures_with_prefetches_change_no_output(model_dir, core):
    """Copies fail at random (about 1 in 12) while sessions resume two at a time, each
    announced by a resume hint (its prefetch is a plan of its own, waited on by the next
    step with the step's plan); a failed step is retried, not aborted. Every step's
    tokens are the clean run's, and the pool is intact after every step. (With only the
    wedge fixed, the old code gives other tokens here.)"""
    def run(p: float):
        rng = random.Random(3)

        def delay():
            if p and rng.random() < p:
                raise RuntimeError("simulated copy failure")

        engine = LLMEngine(str(model_dir), device="cpu", progress=False,
                           kv_memory_bytes=20 * BLOCK_BYTES,
                           host_memory_bytes=40 * BLOCK_BYTES, transfer_delay=delay,
                           clock=ticks(), policy="lru")  # (lru offloads every victim)
        order = random.Random(4)
        ctx = {i: [(5 + 7 * i + j) % 200 + 3 for j in range(2 * 16 + 5)] for i in range(8)}
        outs, failures = [], 0
        for _ in range(3):
            ids = list(ctx)
            order.shuffle(ids)
            for k in range(0, len(ids), 2):
                reqs = []
                for i in ids[k:k + 2]:
                    engine.resume_hint(f"s{i}")
                    reqs.append((i, engine.add_request(ctx[i], GREEDY, session_id=f"s{i}")))
                for _ in range(200):
                    if not engine.has_unfinished():
                        break
                    try:
                        engine.step()
                    except RuntimeError as e:
                        assert "simulated copy failure" in str(e)
                        failures += 1
                    engine.manager.check_integrity()
                for i, r in reqs:
                    outs.append((i, r.output_ids))
                    ctx[i] = ctx[i] + r.output_ids + [9, 9]
        return outs, failures, engine.manager.stats().host_hit_tokens

    ref, _, host_hits = run(0.0)
    assert host_hits > 0
    got, failures, _ = run(1 / 12)
    assert failures > 0
    assert got == ref


def test_plans_that_ended_well_are_not_kept_between_steps(model_dir):
    """A driver that only ticks while idle submits prefetch plans and never steps: the
    engine keeps only the plans it may still have to wait on (or drop)."""
    engine = make(model_dir)
    engine.manager.take_transfers = lambda: TransferPlan([(0, 0)], [], [1], [])
    for _ in range(50):
        engine.copies.submit()
        engine.copies.pending[-1][0]._done.wait()
    assert len(engine.copies.pending) == 1
    engine.step()  # waits for the last one
    assert engine.copies.pending == []


# -- the manager's side -------------------------------------------------------------------
def manager(core_name: str, num_gpu: int = 8, num_host: int = 8) -> KVCacheManager:
    from kvsaga.config import KVSpec

    return KVCacheManager(KVSpec(1, 1, 4, "float32", 4), num_gpu, policy="lru",
                          num_host_blocks=num_host, core=core_name, clock=lambda: 0.0)


def offload_and_prefetch(mgr: KVCacheManager):
    """s0 computes 3 full blocks, pauses; s1 evicts them to the host tier; s0's prefetch
    loads them back. Returns the offload plan and the prefetch's plan."""
    mgr.begin_step("s0", list(range(13)))
    mgr.allocate_slots("s0", 13)
    mgr.finish_step("s0")
    mgr.begin_step("s1", list(range(100, 129)))
    mgr.allocate_slots("s1", 29)  # 8 blocks: s0's go
    offload = mgr.take_transfers()
    assert len(offload.offloads) == 3
    mgr.finish_step("s1")
    assert mgr.prefetch("s0") == 3
    return offload, mgr.take_transfers()


def test_drop_transfer_frees_a_prefetchs_blocks_and_the_host_copies(core):
    mgr = manager(core)
    offload, load = offload_and_prefetch(mgr)
    loaded = [g for _, g in load.loads]
    assert all(mgr.pool.block_hash[g] is not None for g in loaded)
    assert mgr.drop_transfer(load) == {}
    assert all(mgr.pool.state_name(g) == "free" for g in loaded)
    mgr.check_integrity()
    assert mgr.lookup("s0", list(range(13))).num_cached_tokens == 12  # host copies remain
    mgr.drop_transfer(offload)
    assert len(mgr.host.index) == 0
    mgr.check_integrity()
    assert mgr.begin_step("s0", list(range(13))).num_cached_tokens == 0


def test_drop_transfer_cuts_back_a_running_step_that_hit_the_loads(core):
    mgr = manager(core)
    offload, _ = offload_and_prefetch(mgr)  # (the prefetch's copy succeeded)
    mgr.end_session("s1")
    mgr.take_transfers()
    # s0 resumes on blocks loaded by a plan whose copy then failed: a stand-in plan naming
    # those blocks with their generations now.
    start = mgr.begin_step("s0", list(range(14)))
    assert start.num_cached_tokens == 12
    gen = mgr.pool.generation
    plan = TransferPlan([], [(0, g) for g in start.block_ids[1:]], [],
                        [gen[g] for g in start.block_ids[1:]])
    assert mgr.drop_transfer(plan) == {"s0": 4}
    assert mgr.num_computed_tokens("s0") == 4
    mgr.check_integrity()
    mgr.allocate_slots("s0", 10)
    mgr.check_integrity()


def test_drop_transfer_leaves_a_reused_target_and_refuses_a_plan_without_generations(core):
    mgr = manager(core)
    _, load = offload_and_prefetch(mgr)
    stale = TransferPlan([], load.loads, [],
                         [g + 1 for g in load.load_generations])  # reused since
    before = [mgr.pool.block_hash[g] for _, g in load.loads]
    assert mgr.drop_transfer(stale) == {}
    assert [mgr.pool.block_hash[g] for _, g in load.loads] == before
    with pytest.raises(InvalidRequest, match="generations"):
        mgr.drop_transfer(TransferPlan(load.offloads, load.loads))
    assert [mgr.pool.block_hash[g] for _, g in load.loads] == before
    mgr.check_integrity()
