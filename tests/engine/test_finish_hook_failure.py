"""A request's end whose hand-back to the manager raises (a policy hook) leaves no ghost.

Review s50 (engine finding 1): `_finish` marked the request FINISHED and dropped it from
`engine.requests` before the manager's `finish_step` / `end_session`, whose policy hook may
raise (the manager then changes nothing). The request kept running in the manager and the
core scheduler, decoding to max_tokens with "abort" outputs; a retried abort did nothing, the
session's next request was refused, `end_session` then wedged every later step, and a
failure repeated on the sampled-finish path broke every later step too."""

from __future__ import annotations

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.policy import make_policy
from tests.engine.hand_back_helpers import PROMPT, greedy, tiny_engine


@pytest.fixture
def make(tiny_model_dir):
    return lambda **kw: tiny_engine(tiny_model_dir, **kw)


def drain(engine: LLMEngine, limit: int = 300) -> list:
    outs = []
    for _ in range(limit):
        if not engine.has_unfinished():
            return outs
        outs += engine.step()
    raise AssertionError("the engine did not drain")


def fail(policy, hook: str, times: int = 1) -> list[int]:
    """Make `policy.<hook>` raise its next `times` calls; returns the count left."""
    real, left = getattr(policy, hook), [times]

    def hooked(*a, **k):
        if left[0]:
            left[0] -= 1
            raise RuntimeError(f"{hook} failed (simulated)")
        return real(*a, **k)
    setattr(policy, hook, hooked)
    return left


def reference(make, prompt: list[int], n: int) -> list[int]:
    e = make()
    r = e.add_request(prompt, greedy(n))
    drain(e)
    return r.output_ids


@pytest.mark.parametrize(("session_id", "hook"), [(None, "session_ended"),
                                                  ("s1", "step_finished")])
def test_an_abort_whose_hook_raises_stops_the_request_and_its_hand_back_is_retryable(
        make, session_id, hook):
    p = make_policy("lru")
    e = make(policy=p)
    a = e.add_request(PROMPT, greedy(8), session_id=session_id)
    e.step()
    e.step()
    fail(p, hook)
    with pytest.raises(RuntimeError, match="simulated"):
        e.abort(a.request_id)
    # Stopped here and in the core scheduler; the manager's part (unchanged: the step is
    # open) waits for a retry, and the session stays busy.
    assert a.finished and a.request_id not in e.requests
    assert not any(r is a for r in e.scheduler.running)
    assert e.manager.sessions[a.session_id].is_running
    assert e._session_busy(a.session_id)
    e.abort(a.request_id)  # the retry works
    assert a.finished and a.finish_reason == "abort" and a.request_id not in e.requests
    assert not any(r is a for r in e.scheduler.running)
    assert drain(e) == []  # no further output for it
    e.manager.check_integrity()
    if session_id is not None:
        e.end_session(session_id)
    assert e.manager.stats().num_used_blocks == 0


def test_end_session_after_a_failed_abort_ends_it_and_the_others_progress(make):
    ref_b = reference(make, PROMPT[:30], 20)
    p = make_policy("lru")
    e = make(policy=p)
    a = e.add_request(PROMPT, greedy(50), session_id="s1")
    b = e.add_request(PROMPT[:30], greedy(20), session_id="s2")
    e.step()
    e.step()
    fail(p, "step_finished")
    with pytest.raises(RuntimeError, match="simulated"):
        e.abort(a.request_id)
    assert e.end_session("s1") == []  # (a stopped at its abort; the end completes it)
    assert "s1" not in e.manager.sessions and a.finish_reason == "abort"
    outs = drain(e)
    assert {o.request_id for o in outs} == {b.request_id}
    assert b.output_ids == ref_b and b.finish_reason == "length"
    e.manager.check_integrity()
    e.end_session("s2")
    assert e.manager.stats().num_used_blocks == 0


def test_the_sessions_next_step_is_accepted_after_the_aborts_retry(make):
    p = make_policy("lru")
    e = make(policy=p)
    a = e.add_request(PROMPT, greedy(50), session_id="s1")
    e.step()
    e.step()
    fail(p, "step_finished")
    with pytest.raises(RuntimeError, match="simulated"):
        e.abort(a.request_id)
    e.abort(a.request_id)
    nxt = e.add_request(PROMPT + a.output_ids + [5], greedy(4), session_id="s1")
    drain(e)
    assert nxt.finish_reason == "length" and len(nxt.output_ids) == 4
    assert nxt.num_cached_tokens > 0
    e.manager.check_integrity()


@pytest.mark.parametrize("failures", [1, 2, 3])
def test_a_sampled_finish_whose_hand_back_raises_is_retried_and_the_batch_stays_whole(
        make, failures):
    """Request a ends at its 2nd token in a batch with b; its `step_finished` raises
    `failures` times. Every row is still recorded (b's too), the step raises, each later
    step retries a's hand-back first (logging, not raising, while the hook does: b goes
    on), and then all goes on: a's finish is delivered once, b matches a run alone, no
    block is leaked."""
    ref_b = reference(make, PROMPT[:30], 8)
    p = make_policy("lru")
    e = make(policy=p)
    a = e.add_request(PROMPT, greedy(2), session_id="sA")
    b = e.add_request(PROMPT[:30], greedy(8), session_id="sB")
    e.step()  # both prefilled, one token each
    fail(p, "step_finished", failures)
    outs = []
    with pytest.raises(RuntimeError, match="simulated"):
        outs += e.step()
    for _ in range(failures - 1):
        outs += e.step()  # the retry raises inside: logged
    assert e._id_ended(a.request_id)  # (the next retry succeeds)
    assert a.finished and a.finish_reason == "length" and len(a.output_ids) == 2
    assert len(b.output_ids) == 1 + failures  # b progressed at every step, a's too
    outs += drain(e)
    mine = [o for o in outs if o.request_id == a.request_id]
    assert [o.finish_reason for o in mine] == ["length"] and mine[0].token_ids == a.output_ids
    assert b.output_ids == ref_b
    assert not e.manager.sessions["sA"].is_running
    e.manager.check_integrity()
    e.end_session("sA")
    e.end_session("sB")
    assert e.manager.stats().num_used_blocks == 0


def test_an_abort_or_end_session_completes_an_ended_requests_hand_back(make):
    """Instead of the next step, an abort (what `LLM` and kvsaga-serve do after a failed
    step) or `end_session` completes a hand-back that raised."""
    for how in ("abort", "end_session"):
        p = make_policy("lru")
        e = make(policy=p)
        a = e.add_request(PROMPT, greedy(2), session_id="sA")
        e.step()
        fail(p, "step_finished")
        with pytest.raises(RuntimeError, match="simulated"):
            e.step()
        assert e.has_unfinished()
        if how == "abort":
            e.abort(a.request_id)
            assert not e.manager.sessions["sA"].is_running
        else:
            assert e.end_session("sA") == []
            assert "sA" not in e.manager.sessions
        assert not any(r is a for r in e.scheduler.running)
        assert [o.finish_reason for o in drain(e)] == ["length"]  # a's, delivered once
        assert not e.has_unfinished()
        e.manager.check_integrity()
