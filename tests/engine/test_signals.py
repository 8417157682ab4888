"""The resume signal through LLMEngine: a paused session whose blocks went to the host tier
is prefetched back when its next request arrives, and its greedy tokens do not change."""

from __future__ import annotations

import random
import time

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.request import Request
from kvsaga.engine.sampling import SamplingParams
from kvsaga.policy import DEFAULT_POLICY

from .helpers import OffloadSessionBlocksOnly

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
FIRST = list(range(5, 55))  # 50 tokens: 3 full blocks of 16
OBSERVATION = [7, 8, 9, 10]
FILLER = list(range(60, 180))  # 120 tokens: with 2 decoded, the whole 8-block GPU tier


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def make_engine(model_dir, device: str = "cpu", **kw) -> LLMEngine:
    kw.setdefault("kv_memory_bytes", 4 * 2**20)
    return LLMEngine(str(model_dir), device=device, progress=False, **kw)


def run(engine: LLMEngine, ids: list[int], params=GREEDY, **kw) -> Request:
    req = engine.add_request(ids, params, **kw)
    while not req.finished:
        engine.step()
    return req


def two_steps(engine: LLMEngine, between=None) -> tuple[Request, Request]:
    """Session "s": one step, a tool pause (during which `between(engine)` runs), one more."""
    a = run(engine, FIRST, session_id="s", tool="run_tests", expected_s=30.0)
    if between is not None:
        between(engine)
    b = run(engine, FIRST + a.output_ids + OBSERVATION, session_id="s")
    return a, b


def reference(model_dir, device: str = "cpu") -> tuple[list[int], list[int]]:
    """The two steps' greedy tokens with room for everything: no eviction, no offload."""
    a, b = two_steps(make_engine(model_dir, device))
    assert b.num_cached_tokens >= 48
    return a.output_ids, b.output_ids


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_resume_hint_prefetches_offloaded_blocks_before_the_step(model_dir, device):
    bpb = make_engine(model_dir, device, kv_memory_bytes=2**20).spec.bytes_per_block
    rng = random.Random(0)
    # Slow, jittered copies (on CPU; CUDA copies run on their own stream): a forward that
    # did not wait for the prefetch would read blocks still being copied, and its tokens
    # would differ.
    engine = make_engine(model_dir, device, kv_memory_bytes=8 * bpb,
                         host_memory_bytes=16 * bpb,
                         policy=OffloadSessionBlocksOnly(),
                         transfer_delay=lambda: time.sleep(0.01 + rng.random() / 100))
    seen = {}

    def pause(e: LLMEngine) -> None:
        run(e, FILLER, SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
        seen["offloaded"] = e.stats().cache.offloaded_blocks
        seen["started"] = e.resume_hint("s")  # the next request has arrived
        seen["prefetched"] = e.stats().cache.prefetched_blocks

    a, b = two_steps(engine, pause)
    assert seen["offloaded"] >= 3
    assert seen["started"] >= 3 and seen["prefetched"] == seen["started"]
    stats = engine.stats().cache
    assert stats.loaded_blocks >= 3
    # Every hit was on the GPU: the blocks were back before the step's own lookup.
    assert stats.host_hit_tokens == 0 and b.num_cached_tokens >= 48
    assert (a.output_ids, b.output_ids) == reference(model_dir, device)
    engine.manager.check_integrity()


def test_without_the_hint_the_step_loads_the_blocks_itself(model_dir):
    probe = make_engine(model_dir, kv_memory_bytes=2**20)
    bpb = probe.spec.bytes_per_block
    engine = make_engine(model_dir, kv_memory_bytes=8 * bpb, host_memory_bytes=16 * bpb)
    a, b = two_steps(engine, lambda e: run(
        e, FILLER, SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)))
    stats = engine.stats().cache
    assert stats.prefetched_blocks == 0 and stats.host_hit_tokens >= 48
    assert (a.output_ids, b.output_ids) == reference(model_dir)


def test_resume_hint_ignores_unknown_and_running_sessions_and_without_host_tier(model_dir):
    engine = make_engine(model_dir)
    assert engine.resume_hint("nobody") == 0
    req = engine.add_request(FIRST, GREEDY, session_id="s")
    engine.step()
    assert engine.resume_hint("s") == 0  # running: nothing to bring back
    while not req.finished:
        engine.step()
    assert engine.resume_hint("s") == 0  # paused, but there is no host tier
    engine.manager.check_integrity()


@pytest.mark.parametrize("policy", ["ttl", "graph"])
def test_a_step_aborted_before_it_ran_withdraws_its_resume_hint(model_dir, policy):
    # kvsaga-serve sends the hint as the step is added; its client gave up while it queued.
    engine = make_engine(model_dir, policy=policy)
    run(engine, FIRST, session_id="s", tool="t", expected_s=5.0)
    view = engine.manager.policy.views["s"]
    paused_at = view.paused_at
    engine.add_request(FIRST + [3, 4], GREEDY, request_id="next", session_id="s")
    engine.resume_hint("s")
    assert view.needed_now
    engine.abort("next")
    assert engine.manager.sessions["s"].state.name == "PAUSED"
    assert (view.imminent, view.needed_now, view.paused_at) == (False, False, paused_at)
    assert "s" not in getattr(engine.manager.policy, "_ready", {})
    engine.manager.check_integrity()


def view_state(engine: LLMEngine) -> tuple:
    v = engine.manager.policy.views["s"]
    return v.running, v.imminent, v.needed_now, v.paused_at, v.tool, v.hint


def preempted_then_aborted(model_dir, policy: str, paused: list | None = None) -> LLMEngine:
    """Session "s": one step (the policy's view of its pause then appended to `paused`),
    then its next one preempted (fcfs, 7 blocks: "other" and it outgrow them as they decode;
    the newest goes) and aborted while it waits to be retried."""
    bpb = make_engine(model_dir, kv_memory_bytes=2**20).spec.bytes_per_block
    engine = make_engine(model_dir, policy=policy, scheduler="fcfs", kv_memory_bytes=7 * bpb)
    short = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    first = run(engine, FIRST, short, session_id="s", tool="t", expected_s=5.0)
    if paused is not None:
        paused.append(view_state(engine))
    long = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    engine.add_request(list(range(200, 247)), long, request_id="other")
    nxt = engine.add_request(FIRST + first.output_ids + [3, 4, 5], long, request_id="next",
                             session_id="s")
    while not nxt.num_preemptions:
        engine.step()
    assert nxt.status.name == "WAITING"
    engine.abort("next")
    return engine


@pytest.mark.parametrize("policy", ["ttl", "graph"])
def test_a_step_preempted_then_aborted_leaves_the_session_paused_at_its_last_step(
        model_dir, policy):
    # The manager tells policies nothing at a preemption: the view said running (its blocks
    # needed now) after the abort too, until the session's next step or idle end. Now it is
    # the view of the pause after the last completed step: paused since that step's end.
    paused = []
    engine = preempted_then_aborted(model_dir, policy, paused)
    assert engine.manager.sessions["s"].state.name == "PAUSED"
    assert paused[0][:3] == (False, False, False)
    assert view_state(engine) == paused[0]
    assert engine.manager.policy.idle_s("s", engine.clock()) > 0
    engine.manager.check_integrity()


def test_a_preempted_step_aborted_goes_back_in_the_adaptive_shadows(model_dir):
    engine = preempted_then_aborted(model_dir, "adaptive")
    policy = engine.manager.policy
    assert policy._shadows  # the real cache released the step's blocks at its preemption
    for sh in policy._shadows:
        assert "s" not in sh._running and not sh.policy.views["s"].needed_now
        sh.check_integrity()
    engine.manager.check_integrity()


def test_end_session_aborts_its_request_and_forgets_it(model_dir):
    engine = make_engine(model_dir)
    run(engine, FIRST, session_id="s")
    req = engine.add_request(FIRST + [3, 4], GREEDY, session_id="s")
    engine.step()
    assert engine.end_session("s") == [req.request_id]
    assert req.finish_reason == "abort" and "s" not in engine.manager.sessions
    assert engine.end_session("s") == []  # unknown: ignored
    assert not engine.has_unfinished() and engine.stats().cache.num_used_blocks == 0
    engine.manager.check_integrity()


def test_end_session_of_a_paused_session_frees_its_admission(model_dir):
    # Moving a paused session to another replica ends it here: the workflow scheduler must
    # stop counting it admitted (holding working-set room), not wait to demote it.
    engine = make_engine(model_dir, scheduler="workflow")
    run(engine, FIRST, session_id="s", tool="t", expected_s=1000.0)
    assert "s" in engine.scheduler.core.sessions
    assert engine.end_session("s") == []  # nothing in flight
    assert "s" not in engine.scheduler.core.sessions
    assert engine.scheduler.core._committed == 0


def test_public_limits_and_stats(model_dir):
    engine = make_engine(model_dir, max_num_seqs=5, max_num_batched_tokens=64)
    assert (engine.max_num_seqs, engine.max_num_batched_tokens) == (5, 64)
    engine.add_request(FIRST, GREEDY)
    st = engine.stats()
    assert (st.num_waiting, st.num_running, st.policy) == (1, 0, DEFAULT_POLICY)
    assert st.bytes_per_block == engine.spec.bytes_per_block
