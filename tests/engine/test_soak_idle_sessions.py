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
