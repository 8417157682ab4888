"""A hand-back that keeps failing held its session RUNNING in the manager with its blocks,
and the idle sweep ended paused sessions only: a departed client's session was never freed
(review s50 diff-engine2, finding 3). The sweep now also ends a session whose hand-back has
kept failing for longer than `session_idle_s`."""

from __future__ import annotations

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
from kvsaga.policy import make_policy
from tests.engine.hand_back_helpers import PROMPT


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def always_fail(policy, hook: str, sid: str) -> list[bool]:
    """`policy.<hook>` raises for session `sid` while the returned flag is set."""
    real, on = getattr(policy, hook), [True]

    def hooked(session, *a, **k):
        if on[0] and session.session_id == sid:
            raise RuntimeError(f"{hook} failed (simulated)")
        return real(session, *a, **k)
    setattr(policy, hook, hooked)
    return on


@pytest.mark.parametrize("hook", ["step_finished", "session_ended"])
def test_a_hand_back_that_keeps_failing_is_ended_by_the_idle_sweep(tiny_model_dir, hook):
    p, clock = make_policy("lru"), Clock()
    e = LLMEngine(str(tiny_model_dir("llama_gqa4_untied")), device="cpu", progress=False,
                  kv_memory_bytes=4 << 20, policy=p, clock=clock, session_idle_s=10.0)
    # step_finished: a session step (its end is what frees it); session_ended: a one-shot
    # request's hand-back is its session's end, which keeps failing: nothing frees it.
    a = e.add_request(PROMPT, SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True),
                      session_id="sA" if hook == "step_finished" else None)
    always_fail(p, hook, a.session_id)
    with pytest.raises(RuntimeError, match="simulated"):
        while e.has_unfinished():
            e.step()
            clock.t += 0.01
    assert [r.request_id for r in e._ended] == [a.request_id]
    held = e.manager.stats().num_used_blocks
    assert held > 0
    clock.t += 5.0  # not yet past the limit: retried, still pending
    e.tick()
    assert e._ended and e.manager.stats().num_used_blocks == held
    assert e.num_expired_sessions == 0
    clock.t += 6.0
    e.tick()  # session_ended: its end keeps failing too, and ends it all the same
    assert not e._ended and a.session_id not in e.manager.sessions
    assert e.num_expired_sessions == 1
    assert e.manager.stats().num_used_blocks == 0
    e.manager.check_integrity()
    assert not e.scheduler.core.running
