"""SessionGate (kvsaga.integrations.vllm.gate): the connector's workflow-atomic admission,
plain Python, driven with token counts and a clock as the connector drives it."""

from __future__ import annotations

import pytest

from kvsaga.integrations.vllm.gate import SessionGate

BS = 16


def _gate(**kw) -> SessionGate:
    # 20 blocks; growth 16 tokens (1 block) per step until one is observed; one step of it
    # reserved at admission (the rules under test, not the defaults)
    return SessionGate(20, BS, **{"prior_growth_tokens": 16, "horizon_steps": 1.0,
                                  "idle_admit_s": 1.0, **kw})


def _run_step(g: SessionGate, rid: str, sid: str, context: int, now: float,
              expected_s: float | None = 10.0, last: bool = False) -> list[str]:
    g.started(rid)
    return g.finished(rid, sid, context, now, expected_s, last)


def test_admits_while_the_working_sets_fit_then_defers():
    g = _gate()
    assert g.admit("a", "w", 8 * BS, 0, now=0.0)  # 8 + 1 growth = 9 blocks
    g.started("a0")
    assert g.admit("b", "w", 8 * BS, 0, now=0.1)  # 18 <= 20
    g.started("b0")
    assert not g.admit("c", "w", 4 * BS, 0, now=0.2)  # 18 + 5 > 20: waits
    assert g.num_deferrals == 1 and set(g.sessions) == {"a", "b"}
    # an admitted session's next step always goes, whatever the memory
    assert g.admit("a", "w", 30 * BS, 0, now=0.3)


def test_a_shared_prefix_counts_once():
    g = _gate()
    for i, sid in enumerate("abc"):  # 4 shared blocks + 2 own + 1 growth each
        assert g.admit(sid, "w", 6 * BS, 4 * BS, now=float(i))
        g.started(f"{sid}0")
    assert g.committed() == 4 + 3 * 3


def test_waiting_is_bounded_by_idleness_and_by_max_wait():
    g = _gate(idle_admit_s=2.0, max_wait_s=50.0)
    assert g.admit("a", "w", 18 * BS, 0, now=0.0)
    _run_step(g, "a0", "a", 19 * BS, now=1.0, expected_s=100.0)  # paused, nothing runs
    assert not g.admit("b", "w", 4 * BS, 0, now=2.0)  # idle for 1 s only
    assert g.admit("b", "w", 4 * BS, 0, now=3.5)  # idle 2.5 s: the memory would idle
    g2 = _gate(idle_admit_s=1000.0, max_wait_s=5.0)
    assert g2.admit("a", "w", 18 * BS, 0, now=0.0)
    g2.started("a0")  # running, so never idle
    assert not g2.admit("b", "w", 4 * BS, 0, now=1.0)
    assert not g2.admit("b", "w", 4 * BS, 0, now=5.9)
    assert g2.admit("b", "w", 4 * BS, 0, now=6.1)  # waited past max_wait_s


def test_a_session_paused_far_longer_than_expected_is_demoted_for_a_waiting_one():
    g = _gate(demote_factor=2.0, demote_min_s=1.0, idle_admit_s=1e9)
    assert g.admit("a", "w", 10 * BS, 0, now=0.0)
    g.started("x")  # another request keeps the batch busy
    _run_step(g, "a0", "a", 11 * BS, now=1.0, expected_s=3.0)
    assert not g.admit("b", "w", 9 * BS, 0, now=5.0)  # paused 4 s <= 2 x 3 + 1
    assert g.admit("b", "w", 9 * BS, 0, now=8.5)  # paused 7.5 s: a is demoted
    assert set(g.sessions) == {"b"} and g.num_demotions == 1


def test_growth_demotes_the_latest_paused_sessions_and_last_step_ends():
    g = _gate()
    assert g.admit("a", "w", 6 * BS, 0, now=0.0)
    assert g.admit("b", "w", 6 * BS, 0, now=0.1)
    assert _run_step(g, "b0", "b", 7 * BS, now=1.0) == []
    assert _run_step(g, "a0", "a", 7 * BS, now=1.1) == []
    g.admit("a", "w", 8 * BS, 0, now=2.0)
    # a grew by 8 blocks in one step: the contexts as they stand, 15 + 7 > 20
    assert _run_step(g, "a1", "a", 15 * BS, now=3.0) == ["b"]
    assert set(g.sessions) == {"a"}
    assert _run_step(g, "a2", "a", 16 * BS, now=4.0, last=True) == []
    assert g.sessions == {} and g.committed() == 0


def test_admission_reserves_growth_and_the_shrink_counts_contexts_as_they_stand():
    """A session is admitted only with room for horizon_steps of growth, but admitted
    sessions are demoted only once their contexts themselves outgrow the blocks (a
    demotion costs a wait and a recompute); shrink_horizon_steps counts growth there too."""
    for shrink_h, demoted in ((0.0, []), (2.0, []), (3.0, ["b"])):
        g = _gate(horizon_steps=3.0, shrink_horizon_steps=shrink_h)
        assert g.admit("a", "w", 6 * BS, 0, now=0.0)  # 6 + 3 = 9 blocks
        assert g.admit("b", "w", 6 * BS, 0, now=0.1)  # 18 <= 20
        assert not g.admit("c", "w", BS, 0, now=0.2)  # 18 + 4 > 20
        assert _run_step(g, "b0", "b", 7 * BS, now=1.0) == []  # 6 + 3 + 7 + 3 = 19
        # contexts 9 + 7 = 16 fit; with 2 steps of growth (1 block) each 20 fit, 3: 22 not
        g.admit("a", "w", 8 * BS, 0, now=2.0)
        assert _run_step(g, "a0", "a", 9 * BS, now=3.0) == demoted


@pytest.mark.parametrize("kw", [{"capacity": 0}, {"block_size": 1.5}, {"horizon_steps": -1},
                                {"max_wait_s": "x"}, {"demote_factor": float("nan")},
                                {"capacity": True}, {"idle_admit_s": False},
                                {"growth_alpha": 0}, {"growth_alpha": 1.5},
                                {"shrink_horizon_steps": -0.5}, {"room_admit": 1},
                                {"room_steps": -1}, {"room_fit_steps": -1},
                                {"room_fit_steps": "3"}, {"pause_quantile": 1.5},
                                {"pause_quantile": "0.9"}, {"pause_min_observed": 0},
                                {"reserve_wait_factor": -1}, {"reserve_wait_factor": "2"},
                                {"expire_long_hints": 1}])
def test_bad_parameters_are_named(kw):
    args = {"capacity": 20, "block_size": BS, **kw}
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        SessionGate(args.pop("capacity"), args.pop("block_size"), **args)


def test_growth_is_the_schedulers_estimate():
    """The gate learns growth with the workflow scheduler's estimate (kvsaga.scheduler.
    working_set: a plain mean over the first 1 / growth_alpha steps, then an EMA)."""
    g = _gate(growth_alpha=0.5)
    assert g.admit("a", "w", BS, 0, now=0.0)
    for i, context in enumerate((BS, 3 * BS, 4 * BS, 8 * BS)):  # growth 2, 1, 4 blocks
        _run_step(g, f"a{i}", "a", context, now=float(i))
        assert g.admit("a", "w", context, 0, now=float(i) + 0.5)
    # a plain mean of 2 and 1 blocks (1.5), then with weight 1/2: (1.5 + 4) / 2 = 2.75 blocks
    assert g._growth.mean("w") == 2.75 * BS


def test_a_session_vllm_has_room_for_goes_ahead_whatever_the_prediction():
    """The prediction defers c (18 + 5 > 20 blocks), but vLLM has c's blocks free beside
    one step's growth (1 block) of each admitted session: c goes ahead, and the wait and
    the reason are counted. With less spare room, or room_admit off, c waits. (The check
    that c also fits beside the admitted contexts, room_fit_steps, is off here: below.)"""
    def two_admitted(**kw) -> SessionGate:
        g = _gate(**{"room_steps": 1.0, "room_fit_steps": None, **kw})
        for sid, t in (("a", 0.0), ("b", 0.1)):
            assert g.admit(sid, "w", 8 * BS, 0, now=t)
            g.started(f"{sid}0")
        return g

    g = two_admitted()
    assert g.next_step_blocks() == 2
    assert not g.admit("c", "w", 4 * BS, 0, now=0.2, spare_blocks=1)  # growth of 2 not covered
    assert g.num_deferred_with_room == 1  # its own blocks were free, though
    assert not g.admit("c", "w", 4 * BS, 0, now=0.3, spare_blocks=-1)  # no room at all
    assert g.num_deferrals == 2 and g.num_deferred_with_room == 1
    assert g.admit("c", "w", 4 * BS, 0, now=0.7, spare_blocks=2)
    assert set(g.sessions) == {"a", "b", "c"}
    assert g.admitted_by == {"room": 1} and g.wait_s == pytest.approx(0.5)
    off = two_admitted(room_admit=False)
    assert not off.admit("c", "w", 4 * BS, 0, now=0.2, spare_blocks=100)
    wide = two_admitted(room_steps=3.0)  # 3 blocks of growth per admitted session
    assert not wide.admit("c", "w", 4 * BS, 0, now=0.2, spare_blocks=5)
    assert wide.admit("c", "w", 4 * BS, 0, now=0.2, spare_blocks=6)
    # a session that fits the prediction never waits: nothing counted
    g2 = _gate()
    assert g2.admit("a", "w", 4 * BS, 0, now=0.0, spare_blocks=-5)
    assert g2.admitted_by == {} and g2.wait_s == 0.0


def test_room_admits_only_a_session_that_fits_beside_the_admitted_contexts():
    """vLLM has room for c now, but a and b (8 blocks each, admitted) will need theirs back:
    room admits c only while c with room_fit_steps steps of growth fits beside their
    contexts as they stand (the shrink's rule), so c is not demoted at its first finish and
    then recomputed. Without the check, room admits it whatever its size."""
    def two_admitted(**kw) -> SessionGate:
        g = _gate(**{"room_steps": 1.0, "room_fit_steps": 1.0, **kw})
        for sid, t in (("a", 0.0), ("b", 0.1)):
            assert g.admit(sid, "w", 8 * BS, 0, now=t)
            _run_step(g, f"{sid}0", sid, 8 * BS, now=t + 0.05)  # paused, 8 blocks each
        return g

    g = two_admitted()
    assert not g.admit("c", "w", 4 * BS, 0, now=0.2, spare_blocks=10)  # 8 + 8 + 4 + 1 > 20
    assert g.num_deferred_with_room == 1 and "c" not in g.sessions
    assert g.admit("c", "w", 3 * BS, 0, now=0.3, spare_blocks=10)  # 8 + 8 + 3 + 1 = 20
    assert g.admitted_by == {"room": 1}
    assert _run_step(g, "c0", "c", 4 * BS, now=0.4) == []  # its first finish demotes nothing
    off = two_admitted(room_fit_steps=None)
    assert off.admit("c", "w", 4 * BS, 0, now=0.2, spare_blocks=10)
    assert _run_step(off, "c0", "c", 5 * BS, now=0.4) == ["c"]  # and demoted at once


def test_a_waiting_session_admitted_by_idleness_or_max_wait_says_so():
    g = _gate(idle_admit_s=2.0, max_wait_s=50.0)
    assert g.admit("a", "w", 18 * BS, 0, now=0.0)
    _run_step(g, "a0", "a", 19 * BS, now=1.0, expected_s=100.0)
    assert not g.admit("b", "w", 4 * BS, 0, now=2.0, spare_blocks=-1)
    assert g.admit("b", "w", 4 * BS, 0, now=3.5, spare_blocks=-1)
    assert g.admitted_by == {"idle": 1} and g.wait_s == pytest.approx(1.5)


def test_a_step_that_rode_along_ends_its_wait():
    """A deferred step the connector lets ride along (unretained) stops waiting then: its
    session's next deferral starts a new wait, so max_wait does not count the time between
    the two steps (before, the first deferral's start stood and the next step went ahead at
    once by max_wait)."""
    g = _gate(idle_admit_s=1000.0, max_wait_s=20.0)
    assert g.admit("a", "w", 18 * BS, 0, now=0.0)
    g.started("a0")  # running: never idle
    assert not g.admit("b", "w", 4 * BS, 0, now=1.0)  # deferred at t=1
    g.rode_along("b", now=2.0)  # ... and ran anyway, unretained
    g.started("b0")
    assert g.finished("b0", "b", 5 * BS, 3.0, 10.0, False) == []  # not admitted: no state
    assert not g.admit("b", "w", 5 * BS, 0, now=100.0)  # a new wait starts here
    assert not g.admit("b", "w", 5 * BS, 0, now=119.0)
    assert g.admit("b", "w", 5 * BS, 0, now=121.0)  # 21 s of this wait > max_wait_s
    assert g.wait_s == pytest.approx(1.0 + 21.0) and g.admitted_by == {"max_wait": 1}


def _pause(g: SessionGate, sid: str, rid: str, start: float, pause: float,
           expected_s: float | None = None) -> float:
    """Session `sid` runs a step finishing at `start`, pauses `pause` s and comes back."""
    assert g.admit(sid, "w", 2 * BS, 0, now=start)
    _run_step(g, rid, sid, 2 * BS, start, expected_s=expected_s)
    assert g.admit(sid, "w", 3 * BS, 0, now=start + pause)
    return start + pause


def test_an_unhinted_pause_expires_past_the_workflows_observed_quantile():
    """A client that sends only its session id never says which step is its last: the gate
    learns the workflow's pauses (finish to next step) and demotes an unhinted session paused
    past their `pause_quantile` quantile, so it holds no memory a waiting session needs."""
    g = _gate(pause_quantile=0.5, pause_min_observed=3)
    t = 0.0
    for i, pause in enumerate((1.0, 2.0)):
        t = _pause(g, "x", f"x{i}", t, pause) + 0.1
    assert g.pause_limit("w") is None  # two observed, three needed
    t = _pause(g, "x", "x2", t, 3.0) + 0.1  # the median of 1, 2, 3 s: 2 s
    assert g.pause_limit("w") == pytest.approx(2.0)
    _run_step(g, "x3", "x", 3 * BS, t, expected_s=None)  # x's last step (it never says so)
    assert g.expire(t + 1.9) == [] and "x" in g.sessions
    assert g.expire(t + 2.1) == ["x"] and "x" not in g.sessions
    assert g.num_expired == g.num_demotions == 1
    # it comes back after all: a new admission, and its long pause is observed
    assert g.admit("x", "w", 4 * BS, 0, now=t + 10.0)
    assert g.pause_limit("w") == pytest.approx(2.5)  # median of 1, 2, 3, 10


def test_pauses_hinted_short_running_steps_and_other_workflows_do_not_expire():
    g = _gate(pause_quantile=0.5, pause_min_observed=1)
    _pause(g, "x", "x0", 0.0, 1.0)  # limit 1 s for workflow w
    assert g.admit("h", "w", 2 * BS, 0, now=0.0)
    _run_step(g, "h0", "h", 2 * BS, 1.0, expected_s=0.5)  # hinted: the deadline of admit
    g.started("x1")  # x runs: not paused
    assert g.admit("o", "other", 2 * BS, 0, now=1.0)  # no pause of its workflow observed
    _run_step(g, "o0", "o", 2 * BS, 1.0, expected_s=None)
    assert g.expire(100.0) == [] and set(g.sessions) == {"x", "h", "o"}


@pytest.mark.parametrize("expire_long_hints", [True, False])
def test_a_pause_hinted_longer_than_the_usual_ones_expires_past_them(expire_long_hints):
    """A client's hint says x's tool takes 30 s, longer than the workflow's observed pauses
    (limit 1 s). Kept admitted for its hinted pause (demoted only past 4 x 30 + 10 s), x
    held the room a waiting session needed; it expires past the limit as an unhinted pause
    would, and the waiting one is admitted by the predicted fit. A pause hinted within the
    limit keeps its deadline (`test_pauses_hinted_short_...`). Off: the earlier rule."""
    g = _gate(pause_quantile=0.5, pause_min_observed=1, idle_admit_s=1000.0,
              expire_long_hints=expire_long_hints)
    _pause(g, "x", "x0", 0.0, 1.0)  # limit 1 s for workflow w
    g.started("x1")
    g.finished("x1", "x", 15 * BS, 1.0, 30.0, False)  # 16 of 20 blocks, hinted 30 s
    g.started("busy")  # another request runs: the batch never idles
    assert not g.admit("b", "w", 6 * BS, 0, now=1.5)
    assert g.expire(1.5) == []  # 0.5 s: within the usual pauses
    assert g.expire(2.5) == (["x"] if expire_long_hints else [])
    assert g.admit("b", "w", 6 * BS, 0, now=2.5) is expire_long_hints
    assert g.num_expired == int(expire_long_hints)


def test_an_ended_session_no_longer_blocks_a_waiting_one():
    """The defect this rule fixes: a finished session (no `last_step`) filled the blocks and
    a new one waited for them until the batch had idled; once the pause is past what the
    workflow shows, the new one is admitted by the predicted fit, without waiting."""
    g = _gate(pause_quantile=0.9, pause_min_observed=2, idle_admit_s=1000.0)
    for i in range(2):
        _pause(g, "x", f"x{i}", float(i), 0.5)
    g.started("x2")
    g.finished("x2", "x", 15 * BS, 2.0, None, False)  # x's last step; 16 of 20 blocks
    g.started("busy")  # another request runs: the batch never idles
    assert not g.admit("b", "w", 6 * BS, 0, now=2.2)  # x's pause is still a usual one
    assert g.expire(3.0) == ["x"]
    assert g.admit("b", "w", 6 * BS, 0, now=3.0) and g.admitted_by == {"fit": 1}


def test_the_returning_session_never_expires_at_its_own_admission():
    """The connector expires sessions right before it asks `admit` for a step: the session
    whose step that is has just come back, however long it paused, and keeps its place."""
    g = _gate(pause_quantile=0.5, pause_min_observed=1)
    _pause(g, "x", "x0", 0.0, 1.0)  # limit 1 s
    _run_step(g, "x1", "x", 3 * BS, 1.0, expected_s=None)
    assert g.expire(10.0, returning="x") == [] and "x" in g.sessions
    assert g.admit("x", "w", 4 * BS, 0, now=10.0) and g.num_demotions == 0
    assert g.expire(10.0) == []  # running again: nothing to expire


def test_pauses_of_sessions_that_never_return_are_not_kept_forever():
    g = _gate()
    g.pauses.PAUSED_TRACKED = 4
    for i in range(10):  # one-step sessions that never come back (no last_step)
        g.started(f"r{i}")
        g.finished(f"r{i}", f"s{i}", BS, float(i), None, False)
    assert list(g.pauses.paused_since) == ["s6", "s7", "s8", "s9"]  # the latest, oldest first
    g.started("r10")
    g.finished("r10", "s7", BS, 10.0, None, False)  # s7 paused again: timed from now, last
    assert list(g.pauses.paused_since) == ["s6", "s8", "s9", "s7"]


def test_the_reserved_growth_gives_way_once_the_waiting_costs_more_than_a_recompute():
    """c fits beside the admitted contexts as they stand (10 of 20 blocks) but not beside
    their reserved growth (horizon 8 steps of one block). The reservation insures c against
    a later demotion, i.e. against recomputing c's own 4 blocks (64 tokens, 0.64 s at 10 ms a
    token): c is admitted once the sessions waiting have together waited
    reserve_wait_factor (2) x that, 1.28 s; d, which would not fit beside the contexts as
    they stand, is never admitted this way. Without a step-cost fit (token_s None), or with
    the rule off, the reservation holds."""
    def one_admitted(**kw) -> SessionGate:
        g = _gate(**{"horizon_steps": 8.0, "idle_admit_s": 1e9, "max_wait_s": 1e9, **kw})
        assert g.admit("a", "w", 10 * BS, 0, now=0.0)
        _run_step(g, "a0", "a", 10 * BS, now=0.1)  # paused, 10 blocks (+ 8 reserved)
        g.started("busy")  # another request runs: never idle
        return g

    g = one_admitted()
    assert not g.admit("c", "w", 4 * BS, 0, now=1.0, token_s=0.01)  # its wait begins
    assert not g.admit("d", "w", 11 * BS, 0, now=1.5, token_s=0.01)  # 10 + 11 > 20
    # c waited 1.0 s, d 0.5 s: 1.5 s >= 1.28 s; d still does not fit beside a's context
    assert not g.admit("d", "w", 11 * BS, 0, now=2.0, token_s=0.01)
    assert g.admit("c", "w", 4 * BS, 0, now=2.0, token_s=0.01)
    assert g.admitted_by == {"waited": 1} and set(g.sessions) == {"a", "c"}
    before = one_admitted()
    assert not before.admit("c", "w", 4 * BS, 0, now=1.0, token_s=0.01)
    assert not before.admit("c", "w", 4 * BS, 0, now=2.2, token_s=0.01)  # 1.2 s < 1.28 s
    assert before.admit("c", "w", 4 * BS, 0, now=2.3, token_s=0.01)  # alone, 1.3 s
    for g2, token_s in ((one_admitted(), None), (one_admitted(reserve_wait_factor=None), 0.01)):
        assert not g2.admit("c", "w", 4 * BS, 0, now=1.0, token_s=token_s)
        assert not g2.admit("c", "w", 4 * BS, 0, now=40.0, token_s=token_s)  # a not overdue
        assert g2.admitted_by == {}


def test_an_aborted_deferred_session_stops_counting_as_waiting():
    """The reserve_wait rule sums every waiting session's wait: a session whose request is
    aborted while the gate defers it (vLLM reports it finished, never allocated) must end its
    wait there, or its ever-growing stale wait makes every later session's reservation
    "paid" at its first probe."""
    g = _gate(horizon_steps=8.0, idle_admit_s=1e9, max_wait_s=1e9)
    assert g.admit("a", "w", 10 * BS, 0, now=0.0)
    _run_step(g, "a0", "a", 10 * BS, now=0.1)  # paused, 10 blocks (+ 8 reserved)
    g.started("busy")  # another request runs: never idle
    assert not g.admit("d", "w", 11 * BS, 0, now=1.0, token_s=0.01)  # d waits
    assert g.finished("d0", "d", 11 * BS, 1.1, None, False) == []  # d aborted, not admitted
    # c's own wait is 0 s < 2 x 0.64 s: without d's stale 3.9 s it is deferred
    assert not g.admit("c", "w", 4 * BS, 0, now=5.0, token_s=0.01)
    assert g.admitted_by == {} and set(g.sessions) == {"a"}


def test_a_zero_token_cost_prices_no_recompute_and_pays_no_reservation():
    """StepCost.fit clamps its per-token slope at 0: with token_s 0 every wait would cover
    "2 x 0 s" of recompute and the reservation would give way at every first probe."""
    g = _gate(horizon_steps=8.0, idle_admit_s=1e9, max_wait_s=1e9)
    assert g.admit("a", "w", 10 * BS, 0, now=0.0)
    _run_step(g, "a0", "a", 10 * BS, now=0.1)
    g.started("busy")
    assert not g.admit("c", "w", 4 * BS, 0, now=1.0, token_s=0.0)
    assert not g.admit("c", "w", 4 * BS, 0, now=5.0, token_s=0.0)
    assert g.admitted_by == {}


# -- admission order (gate_order) -------------------------------------------------------------
def _order_gate(**kw) -> SessionGate:
    # 20 blocks, no growth reserved, and only the fit lets a waiting session in (no room,
    # idleness, max_wait_s or reservation rule), so two sessions compete for one place
    return _gate(horizon_steps=0.0, room_admit=False, idle_admit_s=1e9, max_wait_s=1e9,
                 reserve_wait_factor=None, **kw)


def _long_and_short_wait(g: SessionGate, short_at: float = 0.0) -> None:
    """a (15 blocks) runs; long session L (12 blocks, a first step) and short session S
    (10 blocks, its last step) are deferred; then a ends and one of L, S fits, not both."""
    assert g.admit("a", "w", 15 * BS, 0, now=0.0)
    g.started("a0")
    assert not g.admit("L", "w", 12 * BS, 0, now=0.0)
    assert not g.admit("S", "w", 10 * BS, 0, now=short_at, last_step=True)
    g.new_step()
    _run_step(g, "a0", "a", 16 * BS, now=short_at, last=True)


@pytest.mark.parametrize("order", ["fifo", "predicted"])
def test_the_predicted_order_lets_a_short_session_in_before_a_long_one_asked_first(order):
    g = _order_gate(admission_order=order, prior_steps=4.0)
    _long_and_short_wait(g)
    # vLLM asks in its queue order: L first. FIFO admits it; "predicted" ranks S (one step
    # left) ahead, and S and L do not fit together, so L yields
    assert g.admit("L", "w", 12 * BS, 0, now=1.0) is (order == "fifo")
    assert g.admit("S", "w", 10 * BS, 0, now=1.0, last_step=True) is (order == "predicted")
    assert g.order.num_yielded == (order == "predicted")
    if order == "predicted":  # once S has ended, L gets in
        g.started("s0")
        _run_step(g, "s0", "S", 11 * BS, now=2.0, last=True)
        assert g.admit("L", "w", 12 * BS, 0, now=2.0)
        assert set(g.sessions) == {"L"} and g.order.waiting == {}


def test_aging_lets_a_long_session_that_waited_go_before_a_newer_short_one():
    # aging_s 1: L deferred 5 s before S; L's predicted work (4 steps of 12 blocks) is
    # e^2.3 times S's, worth 2.3 s of waiting only
    g = _order_gate(admission_order="predicted", prior_steps=4.0, aging_s=1.0)
    _long_and_short_wait(g, short_at=5.0)
    assert not g.admit("S", "w", 10 * BS, 0, now=6.0, last_step=True)  # yields to L
    assert g.admit("L", "w", 12 * BS, 0, now=6.0)
    assert g.order.num_yielded == 1


def test_a_waiting_session_vllm_stopped_asking_about_holds_nobody_back():
    g = _order_gate(admission_order="predicted", prior_steps=4.0)
    _long_and_short_wait(g)
    g.new_step()
    g.new_step()  # S not asked about for two engine steps (say, aborted)
    assert g.admit("L", "w", 12 * BS, 0, now=1.0)
    assert g.order.num_yielded == 0


def test_a_waiting_session_not_asked_about_since_the_step_before_is_dropped():
    """One vLLM aborts while deferred, never reported, must not stay in the waiting order
    (memory, and every probe sorts it) once it can no longer hold anyone back."""
    g = _order_gate(admission_order="predicted", prior_steps=4.0)
    _long_and_short_wait(g)  # L, S asked about in engine step 0; now step 1
    assert set(g.order.waiting) == {"L", "S"}  # asked in the step before: kept
    assert not g.admit("L", "w", 12 * BS, 0, now=1.0)  # S still ranks ahead: L yields
    g.new_step()  # step 2: S not asked about in step 1 or 2
    assert set(g.order.waiting) == {"L"}
    assert g.admit("L", "w", 12 * BS, 0, now=2.0)  # nobody ahead of it now
    assert g.order.waiting == {} and g.order.num_yielded == 1
    assert not g.admit("S", "w", 10 * BS, 0, now=3.0, last_step=True)  # asked again: back
    assert set(g.order.waiting) == {"S"}


def test_an_aborted_step_is_not_counted_nor_learned_as_a_session_end():
    """vLLM reports a step aborted before its allocation as finished (never `started`): it
    is no step done, and a `last_step` hint on it teaches no session length."""
    g = _order_gate(admission_order="predicted", prior_steps=1.0)
    assert g.admit("x", "w", BS, 0, now=0.0)
    _run_step(g, "x0", "x", 2 * BS, now=0.5)  # one step done
    assert g.admit("x", "w", 2 * BS, 0, now=1.0)
    g.finished("x1", "x", 2 * BS, 1.5, None, False)  # admitted, aborted before allocation
    assert g.order.done["x"] == ("w", 1)
    assert g.admit("x", "w", 2 * BS, 0, now=2.0, last_step=True)
    g.finished("x2", "x", 2 * BS, 2.5, None, True)  # its hinted last step, aborted
    assert g.order.lengths.counts == {} and "x" not in g.order.done and g.sessions == {}


def test_a_yielding_session_is_admitted_past_max_wait():
    g = _gate(horizon_steps=0.0, room_admit=False, idle_admit_s=1e9, max_wait_s=5.0,
              reserve_wait_factor=None, admission_order="predicted", prior_steps=4.0)
    _long_and_short_wait(g)
    assert not g.admit("L", "w", 12 * BS, 0, now=4.0)  # yields to S
    g.new_step()
    assert g.admit("S", "w", 10 * BS, 0, now=4.0, last_step=True)
    g.started("s0")
    assert g.admit("L", "w", 12 * BS, 0, now=5.5)  # S runs; L waited 5.5 s > max_wait_s
    assert g.admitted_by["max_wait"] == 1


def test_session_lengths_are_learned_from_last_steps():
    g = _order_gate(admission_order="predicted", prior_steps=1.0)
    for i in range(3):  # three sessions of 3 steps end
        sid = f"x{i}"
        for k in range(3):
            assert g.admit(sid, "w", BS, 0, now=float(k))
            _run_step(g, f"{sid}-{k}", sid, 2 * BS, now=float(k) + 0.5, last=k == 2)
    assert g.order.lengths.counts == {"w": {3: 3}}
    assert g.order.done == {}
    # a new session: (3 x 3 + 1 prior step) / 4 steps left expected
    assert g.order.lengths.remaining("w", 0, g.order.prior_steps) == pytest.approx(2.5)


@pytest.mark.parametrize("kw", [{"admission_order": "lifo"}, {"aging_s": 0},
                                {"aging_s": float("inf")}, {"prior_steps": 0.5},
                                {"prior_steps": True}])
def test_bad_order_parameters_are_rejected(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        _gate(**kw)


def test_a_waited_admission_can_require_the_new_sessions_own_growth_to_fit():
    """reserve_fit_steps: a session let in by the reserve_wait rule must fit with that many
    steps of its own growth beside the admitted contexts as they stand. c (4 blocks) fits
    beside a's 10 with no growth (the default, 0) or with 6 steps of one block (20 of 20),
    not with 7 (21): it then waits however long the others have waited."""
    def waited(steps: float) -> SessionGate:
        g = _gate(horizon_steps=8.0, idle_admit_s=1e9, max_wait_s=1e9, reserve_fit_steps=steps)
        assert g.admit("a", "w", 10 * BS, 0, now=0.0)
        _run_step(g, "a0", "a", 10 * BS, now=0.1)  # paused, 10 blocks (+ 8 reserved)
        g.started("busy")
        assert not g.admit("c", "w", 4 * BS, 0, now=1.0, token_s=0.01)  # its wait begins
        return g

    for steps in (0.0, 6.0):
        g = waited(steps)
        assert g.admit("c", "w", 4 * BS, 0, now=2.3, token_s=0.01)  # 1.3 s >= 1.28 s
        assert g.admitted_by == {"waited": 1}
    g = waited(7.0)
    assert not g.admit("c", "w", 4 * BS, 0, now=2.3, token_s=0.01)
    assert not g.admit("c", "w", 4 * BS, 0, now=50.0, token_s=0.01)
    assert g.admitted_by == {} and set(g.sessions) == {"a"}
    with pytest.raises(ValueError, match="reserve_fit_steps"):
        _gate(reserve_fit_steps=-1)


@pytest.mark.parametrize("arrived", [False, True])
def test_a_step_reported_arrived_is_counted_and_never_demoted_while_it_waits(arrived):
    """b then a admitted; a's step finished (paused, 6 blocks) and its next step, 8 blocks,
    is reported arrived (`KVSagaScheduler`'s `gate_arrivals`) before vLLM asks about it.
    b's finish at 15 blocks outgrows the 20: unreported, a looks paused and the shrink
    demotes it, the latest admitted; reported, a counts its 8 blocks and b goes instead."""
    g = _gate()
    assert g.admit("b", "w", 6 * BS, 0, now=0.0)
    g.started("b0")
    assert g.admit("a", "w", 6 * BS, 0, now=0.1)
    _run_step(g, "a0", "a", 6 * BS, now=1.0)
    g.arrived("x", 4 * BS, 1.5)  # not admitted: nothing to count
    assert "x" not in g.sessions
    if arrived:
        g.arrived("a", 8 * BS, 1.5)
        assert g.sessions["a"].paused_at is None and g.sessions["a"].context == 8 * BS
    assert g.finished("b0", "b", 15 * BS, 2.0, 10.0, False) == (["b"] if arrived else ["a"])
    if arrived:
        assert g.expire(1e6) == [] and "a" in g.sessions  # not paused: nothing to expire



def test_a_step_reported_arrived_ends_its_pause_then_not_at_vllms_first_question():
    """Review s49 gate finding 6: `arrived` said the step's pause was over, but the pause
    log timed it to vLLM's first question (`admit`), so a 1 s tool pause whose step then
    waited 7 s unasked in vLLM's queue was learned as an 8 s pause, and the workflow's
    expiry limit (`pause_quantile`) grew by the queue wait. A step aborted after it arrived
    is not learned again at its resend."""
    g = SessionGate(100, BS, pause_min_observed=1, idle_admit_s=1e9)
    assert g.admit("a", "w", 4 * BS, 0, 0.0)
    _run_step(g, "a0", "a", 5 * BS, now=1.0)  # its pause starts at 1.0
    g.arrived("a", 6 * BS, 2.0)  # KVSagaScheduler: the next step reached vLLM at 2.0
    assert g.admit("a", "w", 6 * BS, 0, 9.0)  # vLLM first asks about it at 9.0
    assert list(g.pauses.observed["w"]) == [1.0] and g.pause_limit("w") == 1.0
    _run_step(g, "a1", "a", 7 * BS, now=10.0)
    g.arrived("a", 8 * BS, 10.5)
    g.finished("a2", "a", 8 * BS, 11.0, None, False)  # aborted before vLLM allocated it
    assert g.admit("a", "w", 8 * BS, 0, 14.0)  # resent: its pause was learned at arrival
    assert list(g.pauses.observed["w"]) == [1.0, 0.5]
