"""A resume hint whose step is aborted before it runs is withdrawn (`resume_withdrawn`): the
session is paused again, priced as it was before the hint."""

from __future__ import annotations

import pytest

from .helpers import build, make, run_step, tokens


def paused_pair(name: str, hint: bool, withdraw: bool):
    """Sessions a and b (paused last, so evicted first), 4 blocks each; b's next step hinted,
    maybe withdrawn."""
    policy = build(name)
    m = make(policy, num_blocks=16)
    run_step(m, "a", tokens(100, 16), now=0.0, tool="t", expected_s=5.0)
    run_step(m, "b", tokens(200, 16), now=1.0, tool="t", expected_s=5.0)
    if hint:
        m.resume_hint("b", now=2.0)
    if withdraw:
        m.resume_withdrawn("b", now=2.0)
    return policy, m


def victim_owners(policy, m) -> list[str | None]:
    return [m.block_owner[b] for b in policy.choose_victims(8, 3.0)]


@pytest.mark.parametrize("name", ["ttl", "graph", "adaptive"])
def test_withdrawn_hint_gives_back_the_order_before_the_hint(name):
    before = victim_owners(*paused_pair(name, hint=False, withdraw=False))
    hinted = victim_owners(*paused_pair(name, hint=True, withdraw=False))
    assert hinted != before  # the hint made b's blocks needed now: a's went first
    assert victim_owners(*paused_pair(name, hint=True, withdraw=True)) == before


@pytest.mark.parametrize("name", ["ttl", "graph"])
def test_withdrawn_hint_marks_the_view_paused_since_its_pause(name):
    policy, m = paused_pair(name, hint=True, withdraw=True)
    v = policy.views["b"]
    assert (v.running, v.imminent, v.needed_now, v.paused_at) == (False, False, False, 1.0)
    assert "b" not in getattr(policy, "_ready", {})  # graph learns no admission wait
    m.check_integrity()


@pytest.mark.parametrize("name", ["lru", "ttl", "graph", "saga", "adaptive"])
def test_withdrawing_without_a_hint_or_on_a_running_session_changes_nothing(name):
    policy, m = paused_pair(name, hint=False, withdraw=True)
    before = victim_owners(*paused_pair(name, hint=False, withdraw=False))
    assert victim_owners(policy, m) == before
    m.begin_step("a", tokens(100, 17), now=4.0)
    m.resume_withdrawn("a", now=4.0)  # running: not paused, a no-op
    assert m.sessions["a"].state.name == "RUNNING"
    if hasattr(policy, "views"):
        assert policy.views["a"].running


@pytest.mark.parametrize("name", ["ttl", "graph"])
def test_a_withdrawn_first_step_pauses_the_session_from_the_withdrawal(name):
    """A first step preempted, then aborted while requeued, has no earlier pause: the view
    pauses at the withdrawal, not at its placeholder (clock time 0), which priced the
    session as idle for the whole clock (a monotonic clock: the host's uptime)."""
    t0 = 50_000.0
    policy = build(name)
    m = make(policy, num_blocks=16)
    run_step(m, "b", tokens(200, 16), now=t0)  # b paused at t0
    m.begin_step("a", tokens(500, 17), now=t0)
    m.allocate_slots("a", 17, now=t0)
    m.preempt("a", now=t0 + 1.0)
    m.resume_withdrawn("a", now=t0 + 2.0)
    v = policy.views["a"]
    assert (v.running, v.needed_now, v.paused_at) == (False, False, t0 + 2.0)
    # a paused after b: b's blocks go first, as for any two sessions paused in that order.
    assert [m.block_owner[b] for b in policy.choose_victims(4, t0 + 3.0)] == ["b"] * 4
    m.check_integrity()


@pytest.mark.parametrize("first", [True, False])
def test_saga_counts_a_withdrawn_sessions_pause_in_its_idle_normalizer(first):
    """saga's largest idle (the oldest live pause, `_pauses`) sees a session paused again
    by `resume_withdrawn`: a search while its step ran dropped its pause from the heap, and a
    first step's pause (from the withdrawal) was never in it."""
    policy = build("saga")
    m = make(policy, num_blocks=16)
    if not first:
        run_step(m, "a", tokens(100, 16), now=0.0)
    st = m.begin_step("a", tokens(100, 17), now=1.0)
    m.allocate_slots("a", 17 - st.num_cached_tokens, now=1.0)
    policy.choose_victims(1, 1.0)  # a search while it runs: its pause is over
    m.preempt("a", now=1.0)
    m.resume_withdrawn("a", now=2.0)
    policy.choose_victims(1, 300.0)
    assert policy._norm[1] >= 128.0  # idle ~300 s (2x levels), not the 1 s of no pause


@pytest.mark.parametrize("name", ["ttl", "graph", "saga"])
def test_a_withdrawn_preempted_step_ending_the_session_is_no_abandonment(name):
    """A resumed step preempted, then aborted while requeued, and the session ended while it
    waited: the policy's execution graph learned its resume and counts no abandonment (its
    track was left running, so the end counted a step that never finished)."""
    policy = build(name)
    m = make(policy, num_blocks=16)
    run_step(m, "a", tokens(100, 16), now=0.0, tool="t", expected_s=5.0)
    st = m.begin_step("a", tokens(100, 17), now=3.0)
    m.allocate_slots("a", 17 - st.num_cached_tokens, now=3.0)
    m.preempt("a", now=4.0)
    m.resume_withdrawn("a", now=5.0)
    m.end_session("a", now=6.0)
    graph = policy.graph.workflows["default"]
    assert (graph.nodes["t"].resumed, graph.nodes["t"].abandoned) == (1, 0)
    assert (graph.num_sessions, graph.num_steps) == (1, 1)  # one completed step
    m.check_integrity()
