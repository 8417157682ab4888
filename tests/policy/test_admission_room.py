"""`graph[admission_room=1]`: a demoted session whose step waits for admission is priced by the
room the scheduler lacks for it (kvsaga/policy/admission_room.py), learned from the deficits
told and the admissions seen; off (the default), graph's decisions are unchanged."""
# Every policy here keeps graph's demoted sessions priced (`demoted_release` off, the default
# until session 32): these tests read the option's own pricing of a demoted session.


from __future__ import annotations

import math

import pytest

from kvsaga.policy import GraphPolicy
from kvsaga.policy.admission_room import MAX_TELLS, AdmissionRooms
from tests.policy.helpers import run_step, tokens
from tests.policy.test_scenarios import demoted_on_grep, small_and_big_demoted


def _learned(r: AdmissionRooms, wf: str = "default", per_block: float = 0.01,
             base: float = 1.0) -> None:
    """Four past admissions told deficits -100, 0, 100, 200 blocks at 0 and admitted
    base + per_block x deficit seconds later: the line seconds = base + per_block x d."""
    for i, d in enumerate((-100, 0, 100, 200)):
        r.told(f"past-{wf}-{i}", d, 0.0)
        assert r.admitted(f"past-{wf}-{i}", wf, base + per_block * d)


def test_no_admission_seen_or_no_room_gives_the_fallback():
    r = AdmissionRooms(prior=4.0)
    r.told("d", 30, 0.0)
    assert r.time("d", "default", 0.7) == 0.7  # no data: graph as it was
    _learned(r)
    assert r.time("other", "default", 0.7) == 0.7  # nothing told: its step does not wait


def test_the_time_is_the_learned_line_mixed_by_the_admissions_seen():
    r = AdmissionRooms(prior=4.0)
    _learned(r)
    mx, my, b = r.line("default")
    assert (mx, my) == (pytest.approx(50.0), pytest.approx(1.5))
    # 4 tells, weight 4 / (4 + prior 4): the pooled slope is 0.01 shrunk to 0, the
    # workflow's (the same data) 0.01 shrunk to the pooled one
    w_slope = 4 / (4 + 4.0)
    pooled = w_slope * 0.01
    assert b == pytest.approx(w_slope * 0.01 + (1 - w_slope) * pooled)
    r.told("d", 150, 5.0)
    w = 4 / (4 + 4.0)
    assert r.time("d", "default", 0.2) == pytest.approx(
        w * (1.5 + b * (150 - 50.0)) + (1 - w) * 0.2)
    r.told("d", -1000, 6.0)  # the deficit told last prices it; never below 0 s
    assert r.time("d", "default", 0.2) == pytest.approx(w * max(1.5 + b * -1050, 0.0)
                                                        + (1 - w) * 0.2)
    assert r.admitted("d", "default", 7.0) and r.admissions == 5
    assert r._sums[None][0] == 6  # both tells learned
    assert not r.waiting("d") and not r.admitted("d", "default", 8.0)


def test_a_workflow_line_is_shrunk_towards_the_pooled_one():
    r = AdmissionRooms(prior=2.0)
    _learned(r, "a", per_block=0.01, base=1.0)
    _learned(r, "b", per_block=0.0, base=5.0)
    p = r._sums[None]
    mx, my = p[1] / p[0], p[2] / p[0]
    ax, ay, _ = r.line("a")
    assert ax == pytest.approx((4 * 50.0 + 2.0 * mx) / 6)
    assert ay == pytest.approx((4 * 1.5 + 2.0 * my) / 6)
    assert r.line("never-seen") == pytest.approx((mx, my, r._slope(p, 0.0)))
    assert r.line("b")[2] < r.line("a")[2]  # b's own slope is 0, a's is positive


def test_tells_kept_per_session_are_bounded():
    r = AdmissionRooms(prior=4.0)
    for i in range(MAX_TELLS + 5):
        r.told("d", i, float(i))
    assert len(r._told["d"]) == MAX_TELLS and r._told["d"][0] == (5, 5.0)


def test_none_drops_what_was_told():
    r = AdmissionRooms(prior=4.0)
    r.told("d", 2, 0.0)
    r.told("d", None, 1.0)  # its step left the queue without being admitted
    assert not r.waiting("d") and not r.admitted("d", "default", 2.0)


@pytest.mark.parametrize("prior", [0, -1.0, math.inf, math.nan, "4", True, None])
def test_a_bad_prior_is_refused(prior):
    with pytest.raises(ValueError, match="prior"):
        AdmissionRooms(prior=prior)


@pytest.mark.parametrize("blocks", [1.5, "2", True, math.nan])
def test_a_bad_deficit_is_refused_and_leaves_the_state(blocks):
    r = AdmissionRooms(prior=4.0)
    r.told("d", -3, 0.0)
    with pytest.raises(ValueError, match="blocks"):
        r.told("d", blocks, 1.0)
    assert r.room == {"d": -3} and r._told["d"] == [(-3, 0.0)]


@pytest.mark.parametrize("value", ["yes", 2, None])
def test_a_bad_admission_room_flag_is_refused(value):
    with pytest.raises(ValueError, match="admission_room"):
        GraphPolicy(demoted_release=False, admission_room=value)


def two_demoted(policy: GraphPolicy, small_blocks: int, big_blocks: int,
                paused: bool = False):
    """`small` (2 blocks) and `big` (5 blocks) paused on a 0.1 s tool at 0, demoted at 0.3;
    told deficits `small_blocks` and `big_blocks` as steps waiting in the queue
    (`session_admission_room`, learner `rooms`) or, `paused`, as sessions still on their
    tool (`session_paused_room`, learner `paused_rooms`); four admissions seen along
    seconds = 1 + 0.01 x deficit."""
    m = small_and_big_demoted(policy)
    rooms = policy.paused_rooms if paused else policy.rooms
    if rooms is not None:
        _learned(rooms)
    tell = policy.session_paused_room if paused else policy.session_admission_room
    tell(m.sessions["small"], small_blocks, 0.5)
    tell(m.sessions["big"], big_blocks, 0.5)
    return m


@pytest.mark.parametrize("on", [False, True])
def test_the_victim_follows_the_room_told(on):
    """Off, both demoted sessions read the same residual demotion and the small one's
    cheaper tail goes first whatever is told. On, the session told the larger deficit (back
    later) goes first: the victim changes with the signal alone, so a policy that ignored
    it would fail one of the two."""
    victims = {}
    for small_d, big_d in ((-50, 400), (400, -50)):
        policy = GraphPolicy(demoted_release=False, admission_room=on)
        two_demoted(policy, small_d, big_d)
        t_small = policy.deferred_time("small", 0.01, 1.0)
        t_big = policy.deferred_time("big", 0.01, 1.0)
        if on:
            assert (t_big > t_small) == (big_d > small_d)
        else:
            assert policy.rooms is None and t_big == pytest.approx(t_small)
        victims[small_d, big_d] = policy._owner[policy.choose_victims(1, 1.0)[0]]
    if on:
        assert victims == {(-50, 400): "big", (400, -50): "small"}
    else:
        assert victims == {(-50, 400): "small", (400, -50): "small"}


def test_graph_learns_a_room_when_the_step_starts_and_forgets_an_ended_session():
    policy = GraphPolicy(demoted_release=False, admission_room=True)
    m = demoted_on_grep(policy, {"d": tokens(100, 8)})
    policy.session_admission_room(m.sessions["d"], 40, 0.5)
    policy.session_deferred(m.sessions["d"], False, 1.5)
    run_step(m, "d", tokens(100, 12), now=1.5, tool="grep")  # admitted 1 s later
    assert policy.rooms.admissions == 1
    assert policy.rooms._sums[None] == [1.0, 40.0, pytest.approx(1.0), 1600.0,
                                        pytest.approx(40.0)]
    policy.session_admission_room(m.sessions["d"], 10, 2.0)
    m.end_session("d", now=2.5)
    assert not policy.rooms.waiting("d") and "d" not in policy.rooms._told


def test_graph_listens_to_the_room_only_with_its_option():
    """Off, graph's room hook is the base class's no-op, so the scheduler measures no room
    for it (`AdmissionOrder._tell_rooms`); on, it is graph's own. Either way it is a plain
    attribute a caller may replace (the spy pattern of the scheduler's tests)."""
    from kvsaga.policy import EvictionPolicy
    off = GraphPolicy(demoted_release=False)
    assert off.session_admission_room.__func__ is EvictionPolicy.session_admission_room
    on = GraphPolicy(demoted_release=False, admission_room=True)
    assert on.session_admission_room == on._room_told
    assert "session_admission_room" not in vars(off)  # off: nothing set on the instance
    calls: list[int | None] = []
    for policy in (off, on):
        policy.session_admission_room = lambda s, blocks, now: calls.append(blocks)
        policy.session_admission_room(None, 3, 0.0)
    assert calls == [3, 3]


def test_the_keys_follow_a_later_room_tell():
    """The same two demoted sessions, on one policy: told the deficits one way, then the
    other, after a victim search between (which keyed them): the victim follows the second
    tell (a tell marks the session's keys for recomputing). All at one instant: a later
    search would re-key the timed sessions anyway."""
    policy = GraphPolicy(demoted_release=False, admission_room=True)
    m = two_demoted(policy, -50, 400)
    assert policy._owner[policy.choose_victims(1, 1.0)[0]] == "big"
    policy.session_admission_room(m.sessions["small"], 400, 1.0)
    policy.session_admission_room(m.sessions["big"], -50, 1.0)
    assert policy._owner[policy.choose_victims(1, 1.0)[0]] == "small"
