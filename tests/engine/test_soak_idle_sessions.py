"""A long-running engine ends the sessions its clients abandoned (`session_idle_s`): the
manager's, the policy's and the scheduler's records of a session whose client never came
back stay bounded by the sessions seen within the idle limit, not by every session ever
opened (docs/architecture.md, "Bounded state in a long-running process")."""

from __future__ import annotations

import pytest

from kvsaga.engine.engine import DEFAULT_SESSION_IDLE_S, LLMEngine
from kvsaga.engine.sampling import SamplingParams
from kvsaga.errors import InvalidRequest

GREEDY = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _run(eng: LLMEngine) -> None:
    for _ in range(50):
        if not eng.has_unfinished():
            return
        eng.step()
    raise AssertionError("requests did not finish")


def _engine(tiny_model_dir, clock: Clock, **kw) -> LLMEngine:
    return LLMEngine(tiny_model_dir("llama_gqa4_untied"), device="cpu", progress=False,
                     kv_memory_bytes=2 * 2**20, clock=clock, **kw)


def test_the_default_limit_is_kvsaga_serves_and_a_new_one_drives_the_sweep(tiny_model_dir):
    clock = Clock()
    eng = _engine(tiny_model_dir, clock)
    assert eng.session_idle_s == DEFAULT_SESSION_IDLE_S == 1800.0
    eng.session_idle_s = 60.0  # settable after construction too: the sweep then uses it
    assert eng.session_idle_s == 60.0
    eng.add_request([5, 9, 11, 13], GREEDY, session_id="a")
    _run(eng)  # paused at t = 0
    clock.t = 59.0
    eng.tick()
    assert "a" in eng.manager.sessions and eng.num_expired_sessions == 0  # not before 60 s
    clock.t = 59.0 + 15.0 + 1.0  # past the limit and the next sweep (60 s / 4 after this one)
    eng.tick()
    assert "a" not in eng.manager.sessions and eng.num_expired_sessions == 1


def test_abandoned_sessions_end_after_the_idle_limit(tiny_model_dir):
    clock = Clock()
    eng = _engine(tiny_model_dir, clock, session_idle_s=100.0)
    policy = eng.manager.policy
    live_max = 0
    for i in range(60):  # one new session per 10 s, each paused on a fresh tool, abandoned
        eng.add_request([5 + i % 7, 9, 11, 13], GREEDY, session_id=f"agent-{i}",
                        workflow=f"wf-{i}", tool=f"call_{i}")
        _run(eng)
        clock.t += 10.0
        eng.tick()
        live_max = max(live_max, len(eng.manager.sessions))
    # Within 100 s + one sweep interval (25 s) of its pause: at most 13 sessions alive.
    assert live_max <= 13
    assert eng.num_expired_sessions >= 60 - 13
    assert len(policy.views) <= 13 and len(policy.graph._tracks) <= 13
    core = eng.scheduler.core
    for name in ("sessions", "_started", "_waited", "_steps_seen", "_last_finish"):
        assert len(getattr(core, name)) <= 13, name
    eng.manager.check_integrity()


def test_a_session_that_comes_back_in_time_is_kept_and_none_means_never(tiny_model_dir):
    clock = Clock()
    eng = _engine(tiny_model_dir, clock, session_idle_s=100.0)
    eng.add_request([5, 9, 11, 13], GREEDY, session_id="a")
    _run(eng)
    clock.t += 90.0
    eng.tick()
    assert "a" in eng.manager.sessions  # paused 90 s < 100 s
    ctx = eng.manager.sessions["a"].token_ids
    eng.add_request(list(ctx) + [17], GREEDY, session_id="a")
    _run(eng)
    clock.t += 101.0
    eng.tick()
    assert "a" not in eng.manager.sessions and eng.num_expired_sessions == 1

    never = _engine(tiny_model_dir, clock, session_idle_s=None)
    never.add_request([5, 9, 11, 13], GREEDY, session_id="b")
    _run(never)
    clock.t += 1e9
    never.tick()
    assert "b" in never.manager.sessions and never.num_expired_sessions == 0


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "60", True])
def test_bad_session_idle_is_refused(tiny_model_dir, bad):
    with pytest.raises(InvalidRequest, match="session_idle_s must be a number > 0 or None"):
        _engine(tiny_model_dir, Clock(), session_idle_s=bad)
    eng = _engine(tiny_model_dir, Clock(), session_idle_s=60.0)
    with pytest.raises(InvalidRequest, match="session_idle_s must be a number > 0 or None"):
        eng.session_idle_s = bad
    assert eng.session_idle_s == 60.0


def test_a_preempted_session_waiting_past_the_limit_is_not_ended(tiny_model_dir):
    """A session whose step was preempted waits in the queue with its session paused: the
    sweep must not take it for abandoned, however long it waits (its request is queued)."""
    clock = Clock()
    probe = _engine(tiny_model_dir, clock)
    block = probe.spec.bytes_per_block
    eng = LLMEngine(tiny_model_dir("llama_gqa4_untied"), device="cpu", progress=False,
                    kv_memory_bytes=7 * block, clock=clock, scheduler="fcfs",
                    session_idle_s=10.0)
    long = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    for i in range(5):
        eng.add_request([5 + i, 9, 11, 13, 17, 19, 23, 29] * 3, long, session_id=f"s{i}")
    waited, done = set(), {}
    for _ in range(400):
        if not eng.has_unfinished():
            break
        for out in eng.step():
            if out.finished:
                done[out.request_id] = (out.finish_reason, len(out.token_ids))
        waited |= {r.session_id for r in eng.scheduler.waiting if r.output_ids}  # preempted
        clock.t += 30.0  # every step outlasts the idle limit
    assert eng.scheduler.num_preemptions > 0 and waited
    assert sorted(done.values()) == [("length", 12)] * 5  # none aborted as abandoned
    eng.manager.check_integrity()
