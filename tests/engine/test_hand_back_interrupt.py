"""An interrupt (a BaseException, e.g. Ctrl-C) during a step's hand-backs, then the session's
`end_session` (review s50 diff-engine2, finding 1): the end dropped from `_ended` a request
that ended in that step but had not left the core scheduler, `forget_session` raised, the
request stayed in the core's running list and every later step raised UnknownSession."""

from __future__ import annotations

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.policy import make_policy
from tests.engine.hand_back_helpers import PROMPT, greedy, tiny_engine


@pytest.fixture
def engine(tiny_model_dir):
    p = make_policy("lru")
    return tiny_engine(tiny_model_dir, policy=p), p


def interrupt_once(obj, name: str, when) -> None:
    """`obj.<name>` raises KeyboardInterrupt at its first call for which `when(*args)`."""
    real, armed = getattr(obj, name), [True]

    def hooked(*a, **k):
        if armed[0] and when(*a):
            armed[0] = False
            raise KeyboardInterrupt("simulated ^C")
        return real(*a, **k)
    setattr(obj, name, hooked)


def check_runs_on(e: LLMEngine) -> None:
    """`end_session` of sB succeeds, a new session's request completes, nothing leaks."""
    e.end_session("sB")
    assert all(r.session_id != "sB" for r in e.scheduler.core.running)
    c = e.add_request(PROMPT[:10], greedy(3), session_id="sC")
    while e.has_unfinished():
        e.step()
    assert c.finished and len(c.output_ids) == 3
    for sid in list(e.manager.sessions):
        e.end_session(sid)
    e.manager.check_integrity()
    assert e.manager.stats().num_used_blocks == 0
    assert not e.scheduler.core.running and not e._ended


def run_until_interrupt(e: LLMEngine) -> None:
    e.add_request(PROMPT[:20], greedy(3), session_id="sA")
    e.add_request(PROMPT[:24], greedy(3), session_id="sB")
    with pytest.raises(KeyboardInterrupt):
        for _ in range(10):
            e.step()


def test_an_interrupt_in_an_earlier_hand_back_then_end_session(engine):
    e, p = engine
    interrupt_once(p, "step_finished", lambda s, *a: s.session_id == "sA")
    run_until_interrupt(e)
    # sB's request ended in the same step: it runs no more, though not handed back yet.
    assert all(r.session_id != "sB" for r in e.scheduler.core.running)
    check_runs_on(e)


def test_an_interrupt_cutting_the_rows_short_then_end_session(engine):
    e, _ = engine
    # The interrupt lands while sB's ending row is recorded: no hand-back ran at all.
    interrupt_once(e, "_output", lambda req, *a: req.session_id == "sB" and req.finished)
    run_until_interrupt(e)
    assert {r.session_id for r in e._ended} == {"sA", "sB"}
    check_runs_on(e)
