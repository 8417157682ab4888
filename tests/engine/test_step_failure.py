"""A forward pass that raises (a CUDA OOM, a kernel error, an interrupt) must leave no block it
never wrote in the prefix cache, and must leave the engine able to step on: its requests
are retried by the next step, or aborted by the caller, with the pool intact.

Before the fix the pass's full blocks stayed indexed (slots are registered at allocation),
so a later request with the same prefix hit unwritten K/V and silently got other tokens,
and a request left queued had its tokens counted as computed, so every later step raised.
"""

from __future__ import annotations

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
from tests.engine.helpers import drain, engine_core  # noqa: F401 (`core`)

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
PROMPT = [(7 + 13 * i) % 250 + 3 for i in range(50)]  # 3 full blocks of 16 and 2 tokens


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def make(model_dir, **kw) -> LLMEngine:
    kw.setdefault("kv_memory_bytes", 4 * 2**20)
    return LLMEngine(str(model_dir), device="cpu", progress=False, **kw)


def fail_pass(engine: LLMEngine, *which: int) -> list[int]:
    """Make the runner's forward passes numbered `which` (1 = the next) raise; returns the
    list the calls are counted in."""
    real = engine.runner.run
    calls = [0]

    def run(chunks):
        calls[0] += 1
        if calls[0] in which:
            raise RuntimeError("CUDA error: out of memory (simulated)")
        return real(chunks)

    engine.runner.run = run
    return calls


@pytest.fixture(scope="module")
def reference(model_dir) -> list[int]:
    engine = make(model_dir)
    req = engine.add_request(PROMPT, GREEDY)
    drain(engine)
    return req.output_ids


def test_aborted_after_a_failed_prefill_leaves_no_unwritten_block_cached(model_dir, core,
                                                                         reference):
    engine = make(model_dir)
    assert engine.manager.core.name == core
    fail_pass(engine, 1)
    first = engine.add_request(PROMPT, GREEDY)
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.step()
    engine.manager.check_integrity()
    engine.abort(first.request_id)  # what AsyncEngine does with a failed step's requests
    engine.manager.check_integrity()
    assert engine.manager.stats().num_used_blocks == 0
    again = engine.add_request(PROMPT, GREEDY)
    drain(engine)
    assert again.num_cached_tokens == 0  # before the fix: 48, hits on unwritten blocks
    assert again.output_ids == reference
    engine.manager.check_integrity()


@pytest.mark.parametrize("failing", [1, 2, 3, 5], ids=["chunk0", "chunk1", "last-chunk",
                                                        "decode"])
def test_a_failed_pass_is_retried_by_the_next_step(model_dir, core, reference, failing):
    # Chunks of 24 tokens: pass 1 computes tokens 0-23, pass 2 tokens 24-47 (from inside a
    # block), pass 3 the last two and samples, pass 5 is the second decode.
    engine = make(model_dir, max_num_batched_tokens=24)
    calls = fail_pass(engine, failing)
    req = engine.add_request(PROMPT, GREEDY)
    for _ in range(failing - 1):
        engine.step()
    known = engine.manager.sessions.get(req.session_id)
    computed = known.num_computed if known is not None else 0
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.step()
    assert calls[0] == failing
    engine.manager.check_integrity()
    # The pass's tokens are uncomputed again (before the fix every later step raised).
    assert engine.manager.num_computed_tokens(req.session_id) == computed
    drain(engine)
    assert req.output_ids == reference
    engine.manager.check_integrity()
    assert engine.manager.stats().num_used_blocks == 0
    # What the finished request left cached was all written: a hit gives the same tokens.
    again = engine.add_request(PROMPT, GREEDY)
    drain(engine)
    assert again.num_cached_tokens == 48
    assert again.output_ids == reference


def test_a_hit_taken_on_a_block_of_the_failed_pass_is_taken_back(model_dir, core, reference):
    # Two requests with one prompt admitted in one step: the second hits the first's blocks,
    # indexed by the first's allocation in the same step, before the pass that fails.
    engine = make(model_dir, scheduler="fcfs")
    fail_pass(engine, 1)
    a = engine.add_request(PROMPT, GREEDY)
    b = engine.add_request(PROMPT, GREEDY)
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.step()
    assert b.num_cached_tokens == 48  # the case at hand: hits on unwritten blocks
    engine.manager.check_integrity()
    assert engine.manager.num_computed_tokens(b.session_id) == 0
    assert len(engine.manager.index) == 0  # nothing the pass should have written is found
    drain(engine)
    assert a.output_ids == reference
    assert b.output_ids == reference
    engine.manager.check_integrity()
    assert engine.manager.stats().num_used_blocks == 0


@pytest.mark.parametrize("starts,error", [
    (["s"], "starts must be a mapping"),
    ({"s": 41}, "start 41 of session 's'"),
    ({"s": -1}, "start -1 of session 's'"),
    ({"s": True}, "start True of session 's'"),
    ({"s": 8, "paused": 0}, "has no open step"),
    ({"s": 8, "gone": 0}, "gone"),
])
def test_discard_writes_refuses_bad_input_and_changes_nothing(core, starts, error):
    from kvsaga.config import KVSpec
    from kvsaga.errors import KVSagaError
    from kvsaga.manager import KVCacheManager

    mgr = KVCacheManager(KVSpec(2, 2, 8, block_size=16), 16, clock=lambda: 0.0)
    mgr.begin_step("paused", list(range(20)))
    mgr.allocate_slots("paused", 20)
    mgr.finish_step("paused")
    mgr.begin_step("s", list(range(100, 140)))
    mgr.allocate_slots("s", 40)
    before = (mgr.num_computed_tokens("s"), mgr.block_table("s"), sorted(mgr.index.items()))
    with pytest.raises(KVSagaError, match=error):
        mgr.discard_writes(starts)
    assert (mgr.num_computed_tokens("s"), mgr.block_table("s"),
            sorted(mgr.index.items())) == before
    mgr.check_integrity()
    mgr.discard_writes({"s": 20})  # inside block 1: block 0 stays indexed, 1 and 2 do not
    assert mgr.num_computed_tokens("s") == 20 and mgr.block_table("s") == before[1][:2]
    assert len(mgr.index) == 2  # the paused session's full block, and s's first
    mgr.check_integrity()


def test_a_failed_pass_bills_no_tenant_for_its_chunks(model_dir):
    # Two tenants compete under Agent Fair Share of compute (on by default); the second
    # step's pass fails. The core scheduler had billed the step's prefill chunks to their
    # tenants' service when it granted them; before the fix the bills stayed, so a tenant
    # was held back afterwards for tokens never computed.
    engine = make(model_dir, max_num_batched_tokens=24)
    core = engine.scheduler.core
    assert core.share_step_tokens
    other = [(11 + 7 * i) % 250 + 3 for i in range(50)]
    a = engine.add_request(PROMPT, GREEDY, salt="A")
    b = engine.add_request(other, GREEDY, salt="B")
    engine.step()
    served = dict(core._served)
    real, billed = engine.runner.run, []

    def run(chunks):
        billed.append(dict(core._served))
        raise RuntimeError("CUDA error: out of memory (simulated)")
    engine.runner.run = run
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.step()
    assert billed[0] != served  # the step's chunks were billed as they were granted
    assert dict(core._served) == served  # ... and taken back
    engine.runner.run = real
    engine.manager.check_integrity()
    drain(engine)
    assert a.output_ids and b.output_ids and a.finish_reason == b.finish_reason == "length"
    engine.manager.check_integrity()


def test_a_policy_hook_that_raises_at_admission_leaves_the_request_queued(model_dir, core,
                                                                          reference):
    # The policy's `step_started` raises while the step is admitted: the manager takes the
    # `begin_step` back and the core scheduler keeps the step queued, so the failed
    # `LLMEngine.step` is retried by the next (before: the session stayed RUNNING with its
    # references held, and the request was out of the queue, never run).
    from kvsaga.policy import LRUPolicy

    class Once(LRUPolicy):
        failed = False

        def step_started(self, session, now):
            if not self.failed:
                self.failed = True
                raise RuntimeError("step_started failed (a policy bug)")
            super().step_started(session, now)

    engine = make(model_dir, policy=Once())
    req = engine.add_request(PROMPT, GREEDY)
    with pytest.raises(RuntimeError, match="step_started failed"):
        engine.step()
    engine.manager.check_integrity()
    assert req.session_id not in engine.manager.sessions
    drain(engine)
    assert req.output_ids == reference
    engine.manager.check_integrity()


def test_discard_writes_inside_a_shared_hit_cuts_back_to_its_start(core):
    """A start inside a block the session took as a prefix hit (another session wrote it,
    so it has no owner): that block, unindexed, stayed as the session's partial tail without
    being its own; at the pause it was CACHED with no hash and no session's tail, which
    check_integrity refuses. The session goes back to the block's start, as a session whose
    hit the pass wrote does."""
    from kvsaga.config import KVSpec
    from kvsaga.manager import KVCacheManager

    mgr = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 8, core=core, clock=lambda: 0.0)
    mgr.begin_step("a", [1, 2, 3, 4, 5])
    mgr.allocate_slots("a", 5)
    mgr.finish_step("a")
    hit = mgr.begin_step("b", [1, 2, 3, 4, 9])
    assert hit.num_cached_tokens == 4 and mgr.block_owner[hit.block_ids[0]] is None
    mgr.discard_writes({"b": 2})
    assert mgr.num_computed_tokens("b") == 0 and mgr.block_table("b") == []
    assert len(mgr.index) == 0
    mgr.check_integrity()
    mgr.finish_step("b")
    mgr.check_integrity()
    again = mgr.begin_step("b", [1, 2, 3, 4, 9])
    assert again.num_cached_tokens == 0
    mgr.allocate_slots("b", 5)
    mgr.finish_step("b")
    mgr.check_integrity()
