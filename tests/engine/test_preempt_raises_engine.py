"""A preempt that raises in the real engine loses no request (review s56 diffcompact2).

The core scheduler popped the victim from `running` before the engine's `preempt`; a raising
policy hook there (here the pool hook `blocks_cached`, in the manager's release: the
preempt is done, the error propagates) left the request in no list, so the engine never
finished it. Now it is requeued as a preempt's retry, and the engine marks it preempted
(WAITING), so an abort while it waits withdraws it. Both cores."""

from __future__ import annotations

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.request import RequestStatus
from kvsaga.engine.sampling import SamplingParams
from tests.engine.scheduler_parity import BUDGET, NUM_BLOCKS
from tests.policy_hooks import CachedFails

PROMPTS = [(30, 12), (18, 20), (40, 8), (25, 15), (12, 30), (35, 10)]


def _engine(tiny_model_dir, core, monkeypatch):
    monkeypatch.setenv("KVSAGA_CORE", core.name)  # (the engine's manager: that core)
    model_dir = tiny_model_dir("llama_gqa4_untied")
    probe = LLMEngine(model_dir, device="cpu", progress=False, kv_memory_bytes=2**20)
    policy = CachedFails()
    engine = LLMEngine(model_dir, device="cpu", progress=False, max_num_seqs=8,
                       max_num_batched_tokens=BUDGET, scheduler="fcfs", policy=policy,
                       kv_memory_bytes=NUM_BLOCKS * probe.spec.bytes_per_block,
                       clock=lambda: 0.0)
    assert (engine.manager._hot is not None) == (core.name == "cpp")
    for i, (n, out) in enumerate(PROMPTS):
        engine.add_request([(7 * i + j) % 50 + 1 for j in range(n)],
                           SamplingParams(max_tokens=out, ignore_eos=True),
                           request_id=f"s{i}", session_id=f"s{i}", last_step=True)
    preempt = engine.scheduler.preempt
    raised = []

    def failing_once(req, now):
        if raised:
            return preempt(req, now)
        raised.append(req)
        policy.fail = True
        try:
            preempt(req, now)
        finally:
            policy.fail = False

    engine.scheduler.preempt = failing_once
    for _ in range(200):
        try:
            engine.step()
        except RuntimeError as e:
            assert "blocks_cached failed" in str(e) and raised
            return engine, raised[0]
    raise AssertionError("no preempt")


def _run_out(engine) -> set[str]:
    done = set()
    for _ in range(500):
        if not engine.has_unfinished():
            break
        done |= {o.request_id for o in engine.step() if o.finished}
    assert not engine.has_unfinished(), "a request was never finished"
    engine.manager.check_integrity()
    return done


@pytest.mark.parametrize("abort", [False, True])
def test_a_raising_preempt_requeues_the_request(tiny_model_dir, core, monkeypatch, abort):
    engine, victim = _engine(tiny_model_dir, core, monkeypatch)
    assert victim.status is RequestStatus.WAITING and victim.num_preemptions == 1
    assert victim in engine.scheduler.waiting and victim not in engine.scheduler.running
    assert not engine.manager.session(victim.session_id).is_running
    engine.manager.check_integrity()
    if abort:  # withdrawn (it had not run again), not finished as a running step
        engine.abort(victim.request_id)
        assert victim not in engine.scheduler.waiting
    done = _run_out(engine)
    expect = {f"s{i}" for i in range(len(PROMPTS))} - ({victim.request_id} if abort else set())
    assert expect <= done
    assert engine.manager.stats().num_used_blocks == 0
