"""`readmit_charge` "room_returns_queue_steps" (kvsaga/scheduler/room_forecast.py, session 33,
`--fit` round 38): "room_returns_queue" whose gain (the refused demoted step's forecast wait
for its room) is read off the load's forecast path: each step queued or running frees its
growth charge less its reply at its predicted finish, each paused session's next step takes
its growth charge at its predicted return and frees it a step time later, each session frees
the rest at its predicted leave; the wait is the first time the freed blocks reach the
overshoot. The forecast pinned on a constructed state, its fallbacks, what is learned, the
decision, names and the state machines."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from kvsaga.scheduler.room_forecast import READMIT_ROOM_RETURNS_QUEUE_STEPS
from kvsaga.scheduler.room_swap import READMIT_ROOM_RETURNS_QUEUES, READMIT_ROOM_SWAP
from tests.sched_helpers import ToyRequest
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.helpers import BS, manager, toks, wf
from tests.scheduler.readmit_common import assert_value_named
from tests.scheduler.test_room_returns_queue import _swap
from tests.scheduler.test_room_swap import _queued

S = READMIT_ROOM_RETURNS_QUEUE_STEPS


def test_steps_is_named_among_the_swap_values():
    assert S == "room_returns_queue_steps" and READMIT_ROOM_SWAP[-4] == S
    assert READMIT_ROOM_RETURNS_QUEUES[-4] == S


def _state(paused_growth=False):
    """A scheduler with two admitted sessions, its forecasts' inputs pinned:
    "a", a step running since 1.0 (mean step time 2 s: finishes at 3.0), context 4 blocks,
    charged 7 (3 of growth), a mean reply of 1 block (after its finish: 5 blocks), leaving
    at 10.0; "p", paused, context 6 blocks, charged 6, back at 2.0 with a next step charged
    9 (3 of growth, freed again at 4.0), leaving at 20.0. The events: (2.0, -3), (3.0, +2),
    (4.0, +3), (10.0, +5), (20.0, +6): freed -3, -1, 2, 7, 13."""
    s = wf(manager(64), readmit_charge=S, paused_growth=paused_growth)
    a = SimpleNamespace(workflow="w", context=4 * BS, shared=0, active=True, on_prompt=True,
                        blocks=7, steps=1, tool=None)
    p = SimpleNamespace(workflow="w", context=6 * BS, shared=0, active=False,
                        on_prompt=False, blocks=6, steps=1, tool=None)
    s.sessions = {"a": a, "p": p}
    s._step_start["a"] = 1.0
    s._step_times.observe("w", 2.0)
    s._leave_at = lambda sid, info, now, restart=False: {"a": 10.0, "p": 20.0}[sid]
    s._return_at = lambda sid: {"p": 2.0}.get(sid)
    s._working_set = lambda workflow, context, steps, tool=None, phase="admitted": (
        -(-context // BS) + 3)
    s._reply_tokens = lambda workflow, tool, otherwise: float(BS)
    s._swap_gain_s = lambda over, now: -1.0  # the default's gain: a marker
    return s


@pytest.mark.parametrize("over,wait", [
    (0, 0.0), (-2, 0.0), (1, 2.5), (2, 2.5), (3, 8.5), (7, 8.5), (8, 18.5), (13, 18.5),
    (14, math.inf)])
def test_the_wait_is_the_first_time_the_freed_blocks_reach_the_overshoot(over, wait):
    s = _state()
    assert s._release_wait_s(over, 1.5) == wait
    assert sorted(s._release_events(1.5)) == [(2.0, -3), (3.0, 2), (4.0, 3), (10.0, 5),
                                               (20.0, 6)]


def test_a_step_past_its_expected_finish_is_restarted_and_a_queued_one_starts_now():
    """At 4.0 a's step (admitted at 1.0, 2 s expected) is past its finish: predicted at
    4.0 + 2; p's return is past too (at 4.0, its step freed at 6.0). A step still queued
    (not on its prompt) is predicted to finish a step time from now."""
    s = _state()
    assert sorted(s._release_events(4.0)) == [(4.0, -3), (6.0, 2), (6.0, 3), (10.0, 5),
                                               (20.0, 6)]
    assert s._release_wait_s(2, 4.0) == 2.0
    s.sessions["a"].on_prompt = False
    assert (3.5, 2) in s._release_events(1.5)


def test_a_paused_session_back_after_its_leave_or_charged_its_growth_takes_nothing():
    s = _state()
    s._return_at = lambda sid: {"p": 25.0}.get(sid)  # after its leave at 20.0
    assert sorted(s._release_events(1.5)) == [(3.0, 2), (10.0, 5), (20.0, 6)]
    assert s._release_wait_s(1, 1.5) == 1.5
    s = _state()
    s.sessions["p"].blocks = 9  # its growth charged while paused (`paused_growth`)
    assert (2.0, 0) in s._release_events(1.5) and s._release_wait_s(1, 1.5) == 1.5


def test_fallbacks_to_the_defaults_gain():
    s = _state()
    s._step_times = type(s._step_times)()  # no step time seen yet
    assert s._release_events(1.5) is None and s._release_wait_s(3, 1.5) == -1.0
    s = _state()
    s.shrink_on = "contexts"  # the growth is not in that measure
    assert s._release_wait_s(3, 1.5) == -1.0
    s = _state()
    s._leave_at = lambda sid, info, now, restart=False: math.inf  # no cycle seen
    assert s._release_wait_s(3, 1.5) == math.inf
    assert s._release_wait_s(2, 1.5) == 2.5  # the finish and p's step free 2 before any leave


def test_step_times_are_learned_from_admission_to_finish_and_dropped_on_leave():
    s = wf(manager(64), readmit_charge=S)
    req = ToyRequest("x", toks(0, 8), workflow="w")
    s._step_admitted(req, 1.0)
    assert s._step_start["x"] == 1.0
    s._step_done(req, False, 3.5)
    assert "x" not in s._step_start and s._step_times.mean("w") == pytest.approx(2.5)
    assert s._step_times.mean("other") == pytest.approx(2.5)  # pooled until its own
    s._step_admitted(req, 4.0)
    s._session_left("x")
    assert "x" not in s._step_start
    s._step_done(req, True, 9.0)  # no admission recorded: nothing learned
    assert s._step_times.sums["w"][1] == 1


@pytest.mark.parametrize("gain,made", [(1e9, True), (0.0, False)])
def test_the_step_release_gain_decides(gain, made):
    """The swap is priced with `_release_wait_s`, not the default's gain: with the victims'
    waits 0, a huge release wait swaps and a 0 one refuses."""
    _, s, _, big2 = _queued(S, 10.0)
    lookup, victims, over = _swap(s, big2)
    asked = []
    s._release_wait_s = lambda over_, now: asked.append((over_, now)) or gain

    def default_gain(over_, now):
        raise AssertionError("the default's gain is not read")
    s._swap_gain_s = default_gain
    s._victim_wait_s = lambda *a, **k: 0.0
    assert s._swap_pays_queue(big2, lookup, victims, over, 3.0) is made
    assert asked == [(over, 3.0)]


def test_value_is_named_and_refused_values_name_it():
    assert_value_named(S, "room_returns_queue_step", "steps")


globals().update(machines("room_returns_queue_steps", {**DEMOTING, "readmit_charge": S}))
