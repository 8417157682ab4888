"""Engine-vs-simulator parity for the priced swaps (`readmit_charge` "room_ranked" ...
"room_returns_queue*", kvsaga/scheduler/room_swap.py): on `stream_held()` the engine makes
the simulator's very admissions where each swap admits (the harness: scheduler_parity.py;
the other schedulers' parity: test_scheduler.py)."""

from __future__ import annotations

import math

import pytest

from kvsaga.sim.tokens import TokenSynthesizer
from tests.engine.helpers import TINY_VOCAB
from tests.engine.scheduler_parity import (
    assert_admits_every_step,
    held_swap_run,
    run_engine_held,
    run_sim,
    stream_held,
)


@pytest.mark.parametrize("params", [
    {"readmit_charge": "room_ranked", "admission_order": "fifo"},
    {"readmit_charge": "room_overdue", "default_pause_s": 0.0}])
def test_room_swap_parity_where_it_admits(tiny_model_dir, monkeypatch, params):
    """`readmit_charge` "room_ranked" / "room_overdue" (round 29, kvsaga/scheduler/
    room_swap.py) on `stream_held()`: with s2 paused, a demoted session's step is admitted
    on room where the shrink its admission makes would demote s2 alone, ranked behind it
    (fifo: s2's next step would queue at its predicted return, 30 s on) / overdue (pauses
    expected to last 0 s), and refused where the shrink could not bring the load within
    the tiers; in both executors, and the engine makes the simulator's very decisions.
    Deadlines are put out of reach (`demote_min_s`): the engine's clock is the wall clock.
    A rule never applied here fails the counts; one the engine ignored, the logs."""
    from kvsaga.scheduler.room_swap import RoomSwap
    charge = params["readmit_charge"]
    answers: list[bool] = []
    rule = RoomSwap._readmits_swap

    def rule_spy(self, req, lookup, now):
        got = rule(self, req, lookup, now)
        if self.readmit_charge == charge and req.session_id in self._deferred:
            answers.append(got)
        return got

    monkeypatch.setattr(RoomSwap, "_readmits_swap", rule_spy)
    sessions = stream_held()
    synth = TokenSynthesizer(vocab_size=TINY_VOCAB)
    params = {**params, "prior_growth_tokens": 16, "growth_charge": "step",
              "demote_min_s": 1e6}
    counts: dict[str, int] = {}
    sim_log = run_sim(sessions, synth, "workflow", params, counts)
    sim_answers, answers[:] = list(answers), []
    assert counts["demoted"] >= 2
    assert {True, False} <= set(sim_answers)
    engine_log = run_engine_held(tiny_model_dir("llama_gqa4_untied"), sessions, synth,
                                 "workflow", params, "s2")
    assert {True, False} <= set(answers)
    answers[:] = []
    assert sim_log != run_sim(sessions, synth, "workflow",
                              {**params, "readmit_charge": "uncached"})
    assert len([sid for a, _ in sim_log for sid in a]) >= 24  # every step admitted
    assert engine_log == sim_log


def test_room_priced_parity_where_it_admits(tiny_model_dir, monkeypatch):
    """`readmit_charge` "room_priced" (round 30, kvsaga/scheduler/room_swap.py) on
    `stream_held()`, as `test_room_swap_parity_where_it_admits`. Its price compares a wait
    learned on the clock (the engine's is the wall clock) with the cost model's seconds, so
    the two executors can agree only where the clock does not decide: the margin is set to 0
    here, so a swap the shrink can bring within is made once a demoted step's wait to be
    admitted again was observed (and longer than 0), and refused before (nothing to price
    with) or where the shrink could not bring the load within. Both answers occur, and the
    engine makes the simulator's very decisions."""
    import kvsaga.scheduler.room_swap as room_swap
    answers: list[tuple[bool, bool]] = []
    rule = room_swap.RoomSwap._readmits_swap

    def rule_spy(self, req, lookup, now):
        got = rule(self, req, lookup, now)
        if self.readmit_charge == "room_priced" and req.session_id in self._deferred:
            answers.append((got, self._readmit_waits.mean(None) is not None))
        return got

    monkeypatch.setattr(room_swap.RoomSwap, "_readmits_swap", rule_spy)
    run = held_swap_run(tiny_model_dir, monkeypatch, "room_priced", [answers])
    (sim_answers,) = run.sim_records
    assert run.counts["demoted"] >= 2
    assert {True, False} <= {a for a, _ in sim_answers}
    assert all(seen for a, seen in sim_answers if a)  # never before a wait was observed
    assert [a for a, _ in answers] == [a for a, _ in sim_answers]
    answers.clear()
    assert_admits_every_step(run)


def test_room_returns_parity_where_it_admits(tiny_model_dir, monkeypatch):
    """`readmit_charge` "room_returns" (round 31, kvsaga/scheduler/room_swap.py) on
    `stream_held()`, as `test_room_priced_parity_where_it_admits`: the margin is 0 so the
    clock (the engine's is the wall clock; the learned wait and round 23's leave forecast
    are read on it) does not decide, a swap the shrink can bring within is made once a
    demoted step's wait to be admitted again was observed, and refused before or where the
    shrink could not bring the load within. Each priced swap asks the leave forecast when
    the shortage clears for a positive overshoot, in both executors. Both answers occur, and
    the engine makes the simulator's very decisions."""
    import kvsaga.scheduler.room_swap as room_swap
    answers: list[tuple[bool, bool]] = []
    asked: list[float] = []
    rule = room_swap.RoomSwap._readmits_swap
    clears = room_swap.RoomSwap._shortage_clears_at

    def rule_spy(self, req, lookup, now):
        got = rule(self, req, lookup, now)
        if self.readmit_charge == "room_returns" and req.session_id in self._deferred:
            answers.append((got, self._readmit_waits.mean(None) is not None))
        return got

    def clears_spy(self, over, now):
        asked.append(over)
        return clears(self, over, now)

    monkeypatch.setattr(room_swap.RoomSwap, "_readmits_swap", rule_spy)
    monkeypatch.setattr(room_swap.RoomSwap, "_shortage_clears_at", clears_spy)
    run = held_swap_run(tiny_model_dir, monkeypatch, "room_returns", [answers, asked])
    sim_answers, sim_asked = run.sim_records
    assert run.counts["demoted"] >= 2
    assert {True, False} <= {a for a, _ in sim_answers}
    assert all(seen for a, seen in sim_answers if a)  # never before a wait was observed
    assert sim_asked and all(o > 0 for o in sim_asked)
    assert [a for a, _ in answers] == [a for a, _ in sim_answers]
    assert asked == sim_asked
    answers.clear()
    assert_admits_every_step(run)


def test_room_returns_fair_parity_where_it_admits(tiny_model_dir, monkeypatch):
    """`readmit_charge` "room_returns_fair" (round 32, kvsaga/scheduler/room_swap.py) on
    `stream_held()` (one tenant), as `test_room_returns_parity_where_it_admits`: the margin
    is 0, both answers occur, the fairness check is asked of every swap the price allows and
    never refuses one (one tenant: every victim is of the step's own tenant), so the
    simulator schedules exactly as under "room_returns"; the engine makes the simulator's
    very decisions."""
    import kvsaga.scheduler.room_swap as room_swap
    answers: list[bool] = []
    fair: list[bool] = []
    rule = room_swap.RoomSwap._readmits_swap
    check = room_swap.RoomSwap._fair_victims

    def rule_spy(self, req, lookup, now):
        got = rule(self, req, lookup, now)
        if self.readmit_charge == "room_returns_fair" and req.session_id in self._deferred:
            answers.append(got)
        return got

    def fair_spy(self, req, victims):
        got = check(self, req, victims)
        fair.append(got)
        return got

    monkeypatch.setattr(room_swap.RoomSwap, "_readmits_swap", rule_spy)
    monkeypatch.setattr(room_swap.RoomSwap, "_fair_victims", fair_spy)
    run = held_swap_run(tiny_model_dir, monkeypatch, "room_returns_fair", [answers, fair])
    sim_answers, sim_fair = run.sim_records
    assert run.counts["demoted"] >= 2
    assert {True, False} <= set(sim_answers)
    assert sim_fair and all(sim_fair)
    assert sim_fair.count(True) == sim_answers.count(True)
    assert answers == sim_answers and fair == sim_fair
    assert run.sim_log == run_sim(run.sessions, run.synth, "workflow",
                                  {**run.params, "readmit_charge": "room_returns"})
    assert run.engine_log == run.sim_log


def test_room_returns_stay_parity_where_it_admits(tiny_model_dir, monkeypatch):
    """`readmit_charge` "room_returns_stay" (round 33, kvsaga/scheduler/room_swap.py) on
    `stream_held()`, as `test_room_returns_parity_where_it_admits`: the margin is 0 so the
    clock (the engine's is the wall clock; the learned wait and the restarted leave forecast
    are read on it) does not decide; a swap the shrink can bring within is made once a
    demoted step's wait to be admitted again was observed, and refused before or where the
    shrink could not bring the load within. Each priced swap asks the leave forecast, with
    the restart, for a positive overshoot in both executors. Both answers occur, and the
    engine makes the simulator's very decisions."""
    import kvsaga.scheduler.leave_forecast as leave_forecast
    import kvsaga.scheduler.room_swap as room_swap
    answers: list[tuple[bool, bool]] = []
    asked: list[tuple[float, bool]] = []
    rule = room_swap.RoomSwap._readmits_swap
    wait_s = leave_forecast.LeaveForecast._leave_wait_s

    def rule_spy(self, req, lookup, now):
        got = rule(self, req, lookup, now)
        if self.readmit_charge == "room_returns_stay" and req.session_id in self._deferred:
            answers.append((got, self._readmit_waits.mean(None) is not None))
        return got

    def wait_spy(self, over, now, restart=False):
        asked.append((over, restart))
        return wait_s(self, over, now, restart)

    monkeypatch.setattr(room_swap.RoomSwap, "_readmits_swap", rule_spy)
    monkeypatch.setattr(leave_forecast.LeaveForecast, "_leave_wait_s", wait_spy)
    run = held_swap_run(tiny_model_dir, monkeypatch, "room_returns_stay", [answers, asked])
    sim_answers, sim_asked = run.sim_records
    assert run.counts["demoted"] >= 2
    assert {True, False} <= {a for a, _ in sim_answers}
    assert all(seen for a, seen in sim_answers if a)  # never before a wait was observed
    assert sim_asked and all(o > 0 and restart for o, restart in sim_asked)
    assert [a for a, _ in answers] == [a for a, _ in sim_answers]
    assert asked == sim_asked
    answers.clear()
    assert_admits_every_step(run)


@pytest.mark.parametrize("charge", ["room_returns_queue", "room_returns_queue_seen",
                                    "room_returns_queue_leave",
                                    "room_returns_queue_corrected"])
def test_room_returns_queue_parity_where_it_admits(tiny_model_dir, monkeypatch, charge):
    """`readmit_charge` "room_returns_queue" (round 34, kvsaga/scheduler/room_swap.py) on
    `stream_held()`, as the other priced swaps' parity tests: the margin is 0, so a swap
    whose victims are forecast to find their room back before they return (s2, held away
    until the others end, is expected back 30 s on) is made once the leave forecast knows a
    step cycle (a finite gain), and refused before that or where the shrink could not bring
    the load within. The "predicted" order with `readmit_order` "first" (demoted steps ahead
    of every new session) keeps the new sessions waiting here out of s2's queue (under
    "fifo" they all sort ahead of it, and their room, which the admitted sessions alone
    never free, makes its forecast wait inf: no swap). The engine's forecasts are read on
    the wall clock, so the two executors can agree only where it does not decide: every
    swap priced here has its victims' waits at 0 in both. Both answers occur, the same
    swaps are priced alike, and the engine makes the simulator's very decisions.
    "room_returns_queue_seen" (the gain at most the wait to be admitted again seen so far)
    swaps only once such a wait was seen: here no demoted step is admitted again before the
    swap, so each executor's scheduler starts with one wait of 1 s seen, and the bounded
    value then decides as the other. "room_returns_queue_leave" (session 32: the steps
    queued ahead of a victim leave again in its forecast) reads the same waits here (no
    step sorts ahead of s2) and is checked alike, its own forecast spied.
    "room_returns_queue_corrected" (session 32: the gain times the scheduler's observed error
    of it, learned on each executor's own clock) is checked alike: here no pricing is
    refused at a finite gain, so nothing is learned in either executor; each scheduler starts
    with one error of 1/4 observed (a factor of 1/2, applied at every pricing in both), and
    a swap priced with a finite gain and its victims' waits at 0 against a margin of 0 is
    made whatever the positive factor, so the decisions are round 34's. Learning from
    refusals is the unit tests' (tests/scheduler/test_room_returns_queue_corrected.py)."""
    import kvsaga.scheduler.room_swap as room_swap
    answers: list[bool] = []
    priced: list[tuple[bool, bool, bool]] = []
    rule = room_swap.RoomSwap._readmits_swap
    pays = room_swap.RoomSwap._swap_pays_queue

    def rule_spy(self, req, lookup, now):
        got = rule(self, req, lookup, now)
        if self.readmit_charge == charge and req.session_id in self._deferred:
            answers.append(got)
        return got

    def pays_spy(self, req, lookup, victims, over, now):
        got = pays(self, req, lookup, victims, over, now)
        wait = (self._victim_wait_leave_s if charge == "room_returns_queue_leave"
                else self._victim_wait_s)
        waits = [wait(req, v, victims, over, now) for v in victims]
        gain = self._swap_gain_s(over, now)
        priced.append((got, math.isfinite(gain), all(w == 0.0 for w in waits),
                       self._readmit_waits.mean(None) is not None,
                       len(self._gain_priced), self._gain_factor(req.workflow)))
        return got

    monkeypatch.setattr(room_swap.RoomSwap, "_readmits_swap", rule_spy)
    monkeypatch.setattr(room_swap.RoomSwap, "_swap_pays_queue", pays_spy)
    if charge == "room_returns_queue_seen":
        import kvsaga.scheduler.leave_forecast as leave_forecast
        init = leave_forecast.LeaveForecast._init_leave_forecast

        def init_seen(self):
            init(self)
            self._readmit_waits.observe(None, 1.0)
        monkeypatch.setattr(leave_forecast.LeaveForecast, "_init_leave_forecast", init_seen)
    if charge == "room_returns_queue_corrected":
        init_swap = room_swap.RoomSwap._init_room_swap

        def init_error(self):
            init_swap(self)
            self._gain_errors.observe(None, math.log(0.25))
        monkeypatch.setattr(room_swap.RoomSwap, "_init_room_swap", init_error)
    run = held_swap_run(tiny_model_dir, monkeypatch, charge, [answers, priced],
                        {"admission_order": "predicted", "readmit_order": "first"})
    sim_answers, sim_priced = run.sim_records
    assert run.counts["demoted"] >= 2
    assert {True, False} <= set(sim_answers)
    assert sim_priced and any(got for got, *_ in sim_priced)
    assert all(finite and zero for got, finite, zero, *_ in sim_priced if got)
    if charge == "room_returns_queue_seen":
        assert all(seen for got, _, _, seen, *_ in sim_priced if got)
    if charge == "room_returns_queue_corrected":
        assert all(f == pytest.approx(0.5) for *_, f in sim_priced)
    assert answers == sim_answers and priced == sim_priced
    answers.clear()
    assert_admits_every_step(run)
