"""`graph[paused_room=1]`: a demoted session still paused on its tool is priced by the room
the scheduler says its step would lack were it queued now (kvsaga/policy/admission_room.py,
a second `AdmissionRooms` that keeps its tells when its step queues); off (the default),
graph's decisions are unchanged."""
# Every policy here keeps graph's demoted sessions priced (`demoted_release` off, the default
# until session 32): these tests read the option's own pricing of a demoted session.


from __future__ import annotations

import pytest

from kvsaga.policy import EvictionPolicy, GraphPolicy
from kvsaga.policy.admission_room import AdmissionRooms
from tests.policy.helpers import run_step, tokens
from tests.policy.test_admission_room import _learned, two_demoted
from tests.policy.test_scenarios import demoted_on_grep


def test_keep_stops_the_pricing_at_none_but_learns_at_the_start():
    r = AdmissionRooms(prior=4.0, keep=True)
    _learned(r)
    r.told("d", 30, 1.0)
    r.told("d", 50, 2.0)
    assert r.waiting("d") and r.time("d", "default", 0.7) != 0.7
    r.told("d", None, 3.0)  # its step queued: no longer priced by it
    assert not r.waiting("d") and r.time("d", "default", 0.7) == 0.7
    before = list(r._sums[None])
    assert r.admitted("d", "default", 4.0) and r.admissions == 5
    after = r._sums[None]
    # both tells learned: (30, 3.0 s) and (50, 2.0 s)
    assert [a - b for a, b in zip(after, before, strict=True)] == pytest.approx(
        [2.0, 80.0, 5.0, 30 * 30 + 50 * 50, 30 * 3.0 + 50 * 2.0])


def test_without_keep_none_drops_the_tells():
    r = AdmissionRooms(prior=4.0)
    r.told("d", 30, 1.0)
    r.told("d", None, 3.0)
    assert not r.admitted("d", "default", 4.0) and r.admissions == 0


@pytest.mark.parametrize("value", ["yes", 2, None])
def test_a_bad_paused_room_flag_is_refused(value):
    with pytest.raises(ValueError, match="paused_room"):
        GraphPolicy(demoted_release=False, paused_room=value)


def test_graph_listens_to_the_paused_room_only_with_its_option():
    off = GraphPolicy(demoted_release=False)
    assert off.session_paused_room.__func__ is EvictionPolicy.session_paused_room
    assert off.paused_rooms is None and "session_paused_room" not in vars(off)
    on = GraphPolicy(demoted_release=False, paused_room=True)
    assert on.session_paused_room == on._paused_room_told
    assert on.rooms is None  # the queued steps' option stays off


@pytest.mark.parametrize("on", [False, True])
def test_the_victim_follows_the_paused_room_told(on):
    """Off, both read the same residual demotion and the small one's cheaper tail goes
    first whatever is told. On, the one told the larger deficit goes first, at the learned
    line's price: with 4 admissions seen (weight 4 / (4 + 4)), mean deficit 50, mean 1.5 s
    and the shrunk slope b, a session told d is priced 0.5 x max(1.5 + b (d - 50), 0) + 0.5 x
    graph's own."""
    victims = {}
    for small_d, big_d in ((-50, 400), (400, -50)):
        policy = GraphPolicy(demoted_release=False, paused_room=on)
        two_demoted(policy, small_d, big_d, paused=True)
        own = GraphPolicy(demoted_release=False)
        two_demoted(own, small_d, big_d, paused=True)
        t_small = policy.deferred_time("small", 0.01, 1.0)
        t_big = policy.deferred_time("big", 0.01, 1.0)
        if on:
            mx, my, b = policy.paused_rooms.line("default")
            for t, d, sid in ((t_small, small_d, "small"), (t_big, big_d, "big")):
                assert t == pytest.approx(0.5 * max(my + b * (d - mx), 0.0)
                                          + 0.5 * own.deferred_time(sid, 0.01, 1.0))
            assert (t_big > t_small) == (big_d > small_d)
        else:
            assert t_big == pytest.approx(t_small)
        victims[small_d, big_d] = policy._owner[policy.choose_victims(1, 1.0)[0]]
    if on:
        assert victims == {(-50, 400): "big", (400, -50): "small"}
    else:
        assert victims == {(-50, 400): "small", (400, -50): "small"}


def test_graph_learns_the_paused_tells_when_the_step_starts():
    """Told 40 blocks at 0.5 while paused, None at 1.0 (its step queued), admitted at 1.5:
    the tell is learned as (40 blocks, 1.0 s); an ended session's tells are forgotten."""
    policy = GraphPolicy(demoted_release=False, paused_room=True)
    m = demoted_on_grep(policy, {"d": tokens(100, 8)})
    policy.session_paused_room(m.sessions["d"], 40, 0.5)
    policy.session_paused_room(m.sessions["d"], None, 1.0)
    policy.session_deferred(m.sessions["d"], False, 1.5)
    run_step(m, "d", tokens(100, 12), now=1.5, tool="grep")
    assert policy.paused_rooms.admissions == 1
    assert policy.paused_rooms._sums[None] == [1.0, 40.0, pytest.approx(1.0), 1600.0,
                                               pytest.approx(40.0)]
    policy.session_paused_room(m.sessions["d"], 10, 2.0)
    m.end_session("d", now=2.5)
    assert not policy.paused_rooms.waiting("d") and "d" not in policy.paused_rooms._told
