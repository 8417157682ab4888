"""A session with no workflow (None: the engine accepts one) counts once in the "gittins"
order's pooled length table, which None keys (session 42's review: counted twice)."""

from __future__ import annotations

from kvsaga.scheduler.session_length import SessionLengthModel


def test_none_workflow_counts_once_in_the_pooled_table():
    named, unnamed = SessionLengthModel(1.0), SessionLengthModel(1.0)
    named.ended_after("w", 0, 3)
    unnamed.ended_after(None, 0, 3)
    assert unnamed.reached[None] == named.reached[None] == [0, 1, 1, 1]
    assert unnamed.ended[None] == named.ended[None] == [0, 0, 0, 1]
    assert set(unnamed.reached) == set(unnamed.ended) == {None}
    # Its estimate is the pooled one, as after a named session of the same length.
    assert unnamed.survival(None, None) == named.survival(None, None)
    unnamed.steps_done(None, 3, 5)  # a live session too
    assert unnamed.reached[None] == [0, 1, 1, 1, 1, 1]
