"""`max_backfill` bounds how many sessions are admitted ahead of ONE waiting session
(`WorkflowScheduler`'s docstring). Until session 55 the count was kept for the last head
passed only: a second head passed in between (a session that sorted ahead of it, then left
or was admitted) restarted the first head's count at 0, so it could be passed without bound
until the reserve (`max_wait_s`) held. At fresh seed 240, bfcl 1x 25%, the session over the
p95 TCT was passed 55 times with `max_backfill` 16 (docs/scheduler.md, "What bounds the open
goals", "Why 240 bfcl 1x 25% reads 0.65x")."""

from __future__ import annotations

from tests.sched_helpers import ToyRequest
from tests.scheduler.helpers import a_paused, toks


def big_passed_once():
    """a paused, admitted (7 blocks with its growth) by a scheduler with `max_backfill` 1 in
    queue order ("fifo", `wf`'s default); at t=1 big (10 blocks: 17 > 16) waits at the head
    and s1 is admitted past it, once: big's bound. Returns (m, s, ex, big)."""
    m, s, ex = a_paused(max_backfill=1)
    big = ToyRequest("big", toks(100, 30), max_new=1)
    s1 = ToyRequest("s1", toks(300, 4), max_new=1)
    for r in (big, s1):
        s.add(r, 1.0)
    out = s.schedule(1.0, ex)
    assert [r.session_id for r in out.admitted] == ["s1"]  # big passed once: its bound
    ex.run(s, out, 1.0)
    return m, s, ex, big


def test_a_head_passed_max_backfill_times_is_not_passed_again_after_another_head():
    """big waits at the head and is passed once (its bound); then mid, a resumed step of a
    session not admitted here (which queues ahead of the new sessions), does not fit either
    and is passed once; mid is cancelled; big is the head again, already passed once: no
    session may go ahead of it any more (the old code had restarted its count at 0)."""
    m, s, ex, big = big_passed_once()
    assert s.waiting == [big]
    mid = ToyRequest("mid", toks(200, 36), max_new=1, resumed=True, arrival=2.0)
    s2 = ToyRequest("s2", toks(400, 4), max_new=1, arrival=2.0)
    for r in (mid, s2):
        s.add(r, 2.0)
    assert s.waiting[0] is mid  # ahead of the new sessions
    out = s.schedule(2.0, ex)
    assert [r.session_id for r in out.admitted] == ["s2"]  # passed mid, the head
    ex.run(s, out, 2.0)
    assert s.waiting == [mid, big]
    s.finish(mid, 3.0, ended=True)  # mid is cancelled while it waits
    assert s.waiting == [big]
    s3 = ToyRequest("s3", toks(500, 4), max_new=1, arrival=3.0)
    s.add(s3, 3.0)
    out = s.schedule(3.0, ex)
    assert out.admitted == []  # big was passed once already: s3 waits behind it
    assert s.waiting == [big, s3]


def test_the_count_is_per_wait_and_ends_with_it():
    """A session's count ends when it leaves the queue (admitted or cancelled): the table
    keeps nothing for sessions no longer waiting."""
    m, s, ex, big = big_passed_once()
    assert s._backfills_past == {"big": 1}
    s.finish(big, 2.0, ended=True)
    assert s._backfills_past == {}
