"""The room a waiting demoted context needs (docs/scheduler.md, "What bounds the open goals"):
until its reserve deadline (queueing + `max_wait_s`, as for any session) a smaller session
that fits is admitted into the room it waits for; from the deadline on the reserve holds
(no other session is admitted before it) and the room accumulates for it. Session 56
evaluated starting that reserve sooner for demoted sessions (`readmit_wait_share`); the
fit's rule rejected it (docs/scheduling_fit_history.md, "Session 56, second lane"), so this
is the rule kept."""

from __future__ import annotations

from tests.sched_helpers import ToyRequest
from tests.scheduler.helpers import big_demoted, toks


def _big_waits_then_small(at: float):
    """`big_demoted`'s state (keep and o admitted and paused, big demoted; no growth
    prior), `max_wait_s` 10, big charged its whole context again ("context"): big's next
    step (12 blocks with its reply) queues at 2.0 and does not fit beside keep and o (25
    blocks of 32); a new small session (6 tokens, 2 blocks, fits) queues at 3.0; admission
    is tried at `at`. Returns (scheduler, executor, big's step, who was admitted at `at`)."""
    m, s, ex, step = big_demoted("context", max_wait_s=10.0, prior_growth_tokens=0)
    s.add(step, 2.0)
    out = s.schedule(2.0, ex)
    assert out.admitted == []  # big does not fit
    ex.run(s, out, 2.0)
    s.add(ToyRequest("small", toks(900, 6), max_new=1, last=False, workflow="w",
                     arrival=3.0), 3.0)
    out = s.schedule(at, ex)
    admitted = [r.session_id for r in out.admitted]
    ex.run(s, out, at)
    m.check_integrity()
    return s, ex, step, admitted


def test_before_its_deadline_a_smaller_session_takes_the_room_a_demoted_one_waits_for():
    s, _, _, admitted = _big_waits_then_small(3.5)
    assert admitted == ["small"]
    assert s._deadlines == {"big": 12.0}  # 2.0 + max_wait_s: a demoted session's as any


def test_from_its_deadline_the_reserve_keeps_the_room_for_it():
    """At 12.5 big's reserve holds: small, which fits, waits; once o ends big fits and is
    admitted first, then small."""
    s, ex, step, admitted = _big_waits_then_small(12.5)
    assert admitted == []
    assert s._holding is step
    s.manager.end_session("o", now=13.0)  # o leaves: its room frees
    s.forget_session("o", 13.0)
    out = s.schedule(13.0, ex)
    assert [r.session_id for r in out.admitted] == ["big", "small"]
    ex.run(s, out, 13.0)
    s.manager.check_integrity()
