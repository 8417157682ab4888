"""A request's hand-back to the manager that raises (a policy hook) stops that request at
once and waits, out of the core scheduler, without stopping anyone else (review s50
diff-engine, findings 1, 2 and 5).

Finding 1: the pool's `blocks_cached` hook raising inside an abort's `finish_step` (or
`end_session`) leaves the manager's step closed (or the session forgotten), while the
engine kept the request running: every later step raised ("no open step") and every
retried abort too. Finding 2: a hook that keeps failing for one session made every step
raise, so no other session progressed. Finding 5: an id whose request waits for its
hand-back was accepted again."""

from __future__ import annotations

import itertools

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.errors import InvalidRequest
from kvsaga.policy import make_policy
from tests.engine.hand_back_helpers import PROMPT, greedy, tiny_engine


@pytest.fixture
def make(tiny_model_dir):
    return lambda **kw: tiny_engine(tiny_model_dir, **kw)


def fail_for(policy, hook: str, sid: str | None, times: int = 10**9) -> list[int]:
    """`policy.<hook>` raises for session `sid` (any session: None) its next `times`
    calls; `blocks_cached` (a pool hook, no session) for any block. Returns the count
    left (set it to 0 to stop the failures)."""
    real, left = getattr(policy, hook), [times]

    def hooked(first, *a, **k):
        if left[0] and (sid is None or getattr(first, "session_id", None) == sid):
            left[0] -= 1
            raise RuntimeError(f"{hook} failed (simulated)")
        return real(first, *a, **k)
    setattr(policy, hook, hooked)
    return left


def fail_blocks_cached(engine: LLMEngine, policy, times: int = 1) -> list[int]:
    left = fail_for(policy, "blocks_cached", None, times)
    engine.manager.pool.observer = policy  # (the pool binds the hooks at assignment)
    return left


def end_all(engine: LLMEngine) -> None:
    for sid in list(engine.manager.sessions):
        engine.end_session(sid)
    engine.manager.check_integrity()
    assert engine.manager.stats().num_used_blocks == 0
    assert not engine.scheduler.running and not engine._ended


@pytest.mark.parametrize("how", ["abort", "end_session"])
@pytest.mark.parametrize("session_id", ["s1", None])
def test_an_abort_whose_blocks_cached_hook_raises_wedges_nothing(make, how, session_id):
    p = make_policy("lru")
    e = make(policy=p)
    a = e.add_request(PROMPT, greedy(30), session_id=session_id)
    b = e.add_request(PROMPT[:30], greedy(10), session_id="sB")
    e.step()
    e.step()
    fail_blocks_cached(e, p)
    if how == "abort":
        with pytest.raises(RuntimeError, match="simulated"):
            e.abort(a.request_id)
    else:  # (the end completes, the error is the abort's: logged)
        e.end_session(a.session_id)
    assert a.finished and a.finish_reason == "abort"
    assert not any(r is a for r in e.scheduler.running)
    for _ in range(3):
        e.step()  # raised "session 's1' has no open step" (or UnknownSession) here
    e.abort(a.request_id)  # a retry: nothing left to do
    assert not e._ended
    for _ in range(40):
        if not e.has_unfinished():
            break
        e.step()
    assert b.finish_reason == "length" and len(b.output_ids) == 10
    e.manager.check_integrity()
    end_all(e)


CASES = [c for c in itertools.product(
    ["step_finished", "session_ended", "blocks_cached"], ["sampled", "abort", "end_session"],
    [1, 2, 3], [False, True], [False, True])
    if not (c[3] and (c[4] or c[1] == "end_session"))]


@pytest.mark.parametrize(("hook", "action", "at", "oneshot", "last"), CASES)
def test_a_one_time_hook_failure_anywhere_drains_whole(make, hook, action, at, oneshot, last):
    """Each hook failing once, for a's session, at a's sampled end, its abort or its
    session's end, at steps 1 to 3, for a session step, a last step and a one-shot
    request: after the failed call is retried (or the next step runs), everything drains,
    b runs to its end, and no block is left used."""
    p = make_policy("lru")
    e = make(policy=p)
    a = e.add_request(PROMPT, greedy(3), session_id=None if oneshot else "sA", last_step=last)
    b = e.add_request(PROMPT[:30], greedy(6), session_id="sB")
    left = [0]
    for i in range(1, 40):
        if not e.has_unfinished():
            break
        if i == at:
            if hook == "blocks_cached":
                left = fail_blocks_cached(e, p)
            else:
                left = fail_for(p, hook, a.session_id, times=1)
            if action != "sampled":
                def act():
                    if action == "abort":
                        e.abort(a.request_id)
                    else:
                        e.end_session(a.session_id)
                try:
                    act()
                except RuntimeError:
                    act()
        try:
            e.step()
        except RuntimeError as ex:
            assert "simulated" in str(ex)
    assert not e.has_unfinished()
    assert b.finish_reason == "length" and len(b.output_ids) == 6
    assert a.finished
    e.manager.check_integrity()
    left[0] = 0
    end_all(e)


def test_a_hook_that_keeps_failing_for_one_session_stops_no_other(make):
    p = make_policy("lru")
    e = make(policy=p)
    a = e.add_request(PROMPT, greedy(2), session_id="sA")
    b = e.add_request(PROMPT[:30], greedy(20), session_id="sB")
    fail_for(p, "step_finished", "sA")
    raised = 0
    for _ in range(60):
        if not e.has_unfinished():
            break
        try:
            e.step()
        except RuntimeError:
            raised += 1
    assert raised == 1  # the step where a ended; then b went on
    assert b.finish_reason == "length" and len(b.output_ids) == 20
    assert a.finished and e._id_ended(a.request_id)
    with pytest.raises(RuntimeError, match="simulated"):
        e.abort(a.request_id)
    with pytest.raises(RuntimeError, match="simulated"):  # its session waits
        e.add_request(PROMPT + a.output_ids, greedy(2), session_id="sA")
    e.tick()  # (retries, logs)
    # The way out: the session's end does not need the hook that fails.
    assert e.end_session("sA") == []
    assert "sA" not in e.manager.sessions and not e._ended
    e.manager.check_integrity()
    end_all(e)


def test_a_request_id_waiting_for_its_hand_back_is_still_taken(make):
    p = make_policy("lru")
    e = make(policy=p)
    a = e.add_request(PROMPT, greedy(2), request_id="job-1", session_id="sA")
    e.step()
    left = fail_for(p, "step_finished", "sA")
    with pytest.raises(RuntimeError, match="simulated"):
        e.step()
    assert a.finished and "job-1" not in e.requests and e._id_ended("job-1")
    with pytest.raises(InvalidRequest, match="job-1"):
        e.add_request(PROMPT[:30], greedy(1), request_id="job-1", session_id="sB")
    left[0] = 0
    outs = e.step()  # the hand-back completes; a's final output comes once
    assert [(o.request_id, o.finish_reason) for o in outs] == [("job-1", "length")]
    assert not e._ended
    e.add_request(PROMPT[:30], greedy(1), request_id="job-1", session_id="sB")
    e.step()
    end_all(e)
