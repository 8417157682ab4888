"""The scope of `max_backfill` (docs/scheduler.md, "What bounds the open goals"): it bounds
the sessions admitted ahead of a waiting session while that session is the HEAD, counted per
session over its wait. A session queued behind another head that does not fit is passed by
the same backfills uncounted, and is passed up to `max_backfill` times again once it is the
head: over a chain of heads the passes add up (fresh seed 240, bfcl 1x 25%: one waited
behind two big demoted heads, 32 passes). Session 56 evaluated counting them for every
session queued ahead of the backfilled one (`backfill_bound` "queue"); the fit's rule
rejected it (docs/scheduling_fit_history.md, "Session 56"), so this is the rule kept."""

from __future__ import annotations

from tests.sched_helpers import ToyRequest
from tests.scheduler.helpers import a_paused, toks


def test_a_session_passed_behind_an_earlier_head_is_passed_again_as_the_head():
    """a paused and admitted (7 blocks of 16 with its growth), `max_backfill` 2, queue order
    ("fifo"): big (10 blocks) and mid (11) wait, neither fits; s1 and s2 (one block each) are
    admitted past both (big's bound; mid, not the head, is not counted). Then big leaves and
    mid is the head: s3 is admitted past it, its first counted pass."""
    m, s, ex = a_paused(max_backfill=2)
    big = ToyRequest("big", toks(100, 30), max_new=1)
    mid = ToyRequest("mid", toks(200, 36), max_new=1)
    s1, s2 = (ToyRequest(f"s{i}", toks(300 + 10 * i, 4), max_new=1) for i in (1, 2))
    for r in (big, mid, s1, s2):
        s.add(r, 1.0)
    out = s.schedule(1.0, ex)
    assert [r.session_id for r in out.admitted] == ["s1", "s2"]
    ex.run(s, out, 1.0)
    assert s.waiting == [big, mid]
    assert s._backfills_past == {"big": 2}  # mid's passes behind big are not counted
    s.finish(big, 2.0, ended=True)  # big is cancelled while it waits
    s3 = ToyRequest("s3", toks(500, 4), max_new=1, arrival=2.0)
    s.add(s3, 2.0)
    out = s.schedule(2.0, ex)
    assert [r.session_id for r in out.admitted] == ["s3"]  # mid passed a third time
    assert s.waiting == [mid]
    assert s._backfills_past == {"mid": 1}
