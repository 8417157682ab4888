"""`WorkflowScheduler(readmit_charge="cost_leave" / "cost_leave_waits")`: round 22's hold
trade (`WorkingSetGate._churn_outweighs_wait`) with the wait from per-session predictions of
when admitted contexts leave (`kvsaga.scheduler.leave_forecast`); "cost_leave_waits" adds
each victim's learned re-admission wait to the churn. Both answers of each trade on one
state, the prediction's parts (no cycle seen, the residual steps, the demotion deadline),
what is learned (finish-to-finish cycles, re-admission waits), the decisions equal to the
charge picked, the values' check, the server entry point (the engine's:
tests/engine/test_scheduler.py), and the scheduler state machine with them on under every
policy."""

from __future__ import annotations

import math

import pytest

from kvsaga.scheduler.leave_forecast import _Means
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.demoting_machine import DEMOTING, assert_reaches_both_answers, machines
from tests.scheduler.helpers import manager, toks, wf
from tests.scheduler.readmit_common import assert_refused_and_off_by_default, assert_serve_takes
from tests.scheduler.test_readmit_binding_short import _roomier
from tests.scheduler.test_readmit_charge_cost import _back, _picked


def _cycle(s, seconds: float | None) -> None:
    """Replace what the scheduler learned of step cycles: none (`seconds` None), or one
    finish-to-finish cycle of `seconds` of the toy workflow ("default")."""
    s._cycles = _Means()
    if seconds is not None:
        s._cycles.observe("default", seconds)


def _leave_back(charge: str, cycle: float | None, readmit_wait: float | None = None,
                deadline: float = 500.0):
    """test_readmit_charge_cost's state (a demoted and back at 3.0, b admitted and paused
    since its finish at 0.0, the tiers one block short of a's whole context beside b's, one
    earlier return seen half lost) with b's demotion deadline at `deadline`, the learned
    cycle `cycle` and, if given, one re-admission wait of `readmit_wait` seconds seen."""
    s, ex, a3 = _back(charge, deadline=deadline)
    _cycle(s, cycle)
    s._readmit_waits = _Means()
    if readmit_wait is not None:
        s._readmit_waits.observe(None, readmit_wait)
    return s, ex, a3


@pytest.mark.parametrize("cycle,picked", [
    (None, "uncached"),  # no cycle seen: b's leave unknown, the wait inf
    (100.0, "uncached"),  # b expected to end at 0 + 1 x 100 s: a wait of 97 s beats the churn
    (1.0, "full"),  # b expected to have ended by now (0 + 1 s < 3): the wait is 0 s
])
def test_cost_leave_holds_only_while_the_churn_outweighs_the_predicted_leave(cycle, picked):
    s, ex, a3 = _leave_back("cost_leave", cycle)
    lk = s.lookup(a3)
    assert s._tiers_short(a3.num_tokens)
    assert _picked(s, a3, lk) == picked
    b = s.sessions["b"]
    want = math.inf if cycle is None else max(0.0 + 1 * cycle, 3.0)
    assert s._leave_at("b", b, 3.0) == want
    assert s._leave_wait_s(1, 3.0) == want - 3.0
    assert s._leave_wait_s(10 ** 6, 3.0) == math.inf  # b alone never frees that


@pytest.mark.parametrize("charge,picked", [
    ("cost_leave", "uncached"),  # recomputation alone (milliseconds) < a 97 s wait
    ("cost_leave_waits", "full"),  # + b's expected 1000 s wait to be admitted again
])
def test_cost_leave_waits_adds_the_victims_readmission_wait(charge, picked):
    s, ex, a3 = _leave_back(charge, 100.0, readmit_wait=1000.0)
    assert _picked(s, a3, s.lookup(a3)) == picked
    assert s._victims(["b"], 1) == 1 and s._victims(["b"], 0) == 0
    assert s._readmit_wait_s() == 1000.0
    assert s._churn_s(["b"], 1) < 97.0 < s._churn_s(["b"], 1) + 1000.0


def test_cost_leave_waits_without_a_readmission_seen_is_cost_leave():
    s, ex, a3 = _leave_back("cost_leave_waits", 100.0)
    assert s._readmit_wait_s() == 0.0
    assert _picked(s, a3, s.lookup(a3)) == "uncached"


def test_a_paused_session_leaves_by_its_demotion_deadline_if_sooner():
    s, ex, a3 = _leave_back("cost_leave", 100.0, deadline=5.0)
    b = s.sessions["b"]
    assert not b.active and s._leave_at("b", b, 3.0) == 5.0  # not 100.0
    b.demote_at = 500.0
    assert s._leave_at("b", b, 3.0) == 100.0


def test_the_residual_steps_scale_the_predicted_leave():
    """Expected steps left from the admission order's table: with one finished session of
    the toy workflow that took 5 steps, b (1 step done) has (1 + 4) / 2 steps left (the
    prior session ends at its next step)."""
    s, ex, a3 = _leave_back("cost_leave", 10.0)
    b = s.sessions["b"]
    assert s._steps_seen["b"] == 1 and s._leave_at("b", b, 3.0) == 10.0
    s._lengths.observe("default", 5)
    assert s._leave_at("b", b, 3.0) == pytest.approx(0.0 + 2.5 * 10.0)


@pytest.mark.parametrize("charge,cycle,wait,picked", [
    ("cost_leave", None, None, "uncached"),
    ("cost_leave", 1.0, None, "full"),
    ("cost_leave_waits", 100.0, 1000.0, "full"),
    ("cost_leave_waits", 100.0, None, "uncached"),
])
def test_cost_leave_decides_as_the_charge_it_picks(charge, cycle, wait, picked):
    """The same state under the value and under the charge it picks decides alike
    (admissions, the books, demotions)."""
    got = []
    for c in (charge, picked):
        s, ex, a3 = _leave_back(c, cycle, wait)
        out = s.schedule(3.0, ex)
        got.append(([r.session_id for r in out.admitted], s._committed, s.num_demotions))
    assert got[0] == got[1]


def test_cycles_and_readmission_waits_are_learned():
    """A session's finish-to-finish time is a cycle of its workflow (its first finish
    starts none), an end ends its count; a demoted session's wait from its step's queueing
    to its admission is a re-admission wait; a new session's first admission is not."""
    s, ex, a3 = _back("cost_leave")  # a finished at 0.0 and 1.0 (demoted, back at 3.0)
    assert s._cycles.sums == {"default": [1.0, 1], None: [1.0, 1]}
    assert s._last_finish == {"a": 1.0, "b": 0.0}
    before = list(s._readmit_waits.sums.get(None, [0.0, 0]))
    _roomier(s, 10)  # room for a: it is admitted again at 4.0
    out = s.schedule(4.0, ex)
    assert a3 in out.admitted
    assert s._readmit_waits.sums[None] == [before[0] + 4.0 - a3.arrival, before[1] + 1]
    m = manager(16)
    s = wf(m, readmit_charge="cost_leave")
    ex = ToyExecutor(m)
    s.add(ToyRequest("n", toks(0, 10), max_new=1, last=True), 1.0)
    ex.run(s, s.schedule(1.5, ex), 1.5)
    assert s._readmit_waits.sums == {} and s._cycles.sums == {} and s._last_finish == {}


@pytest.mark.parametrize("value", ["cost_leave", "cost_leave_waits"])
def test_cost_leave_values_are_named_and_reach_kvsaga_serve(value):
    """(`LLMEngine(scheduler_params=...)`: tests/engine/test_scheduler.py.)"""
    assert_refused_and_off_by_default("leave")
    assert_serve_takes(value, "leave")


@pytest.mark.parametrize("value", ["cost_leave", "cost_leave_waits"])
def test_the_state_machine_reaches_both_answers_of_the_trade(monkeypatch, value):
    """Over the machine's derandomized runs the trade is priced and answers both ways, the
    books holding after every rule; as test_readmit_charge_cost's reach test, the churn is
    priced at 100 s a demoted context plus a second a token lost and the machine runs at
    3/4 of its pool (the default prices of its tens of tokens never outweigh a wait)."""
    import kvsaga.scheduler.working_set_gate as gate

    class Pricey:
        def recompute_s(self, num_tokens, context_tokens):
            return 100.0 + num_tokens
    monkeypatch.setattr(gate, "PrefillCost", Pricey)
    assert_reaches_both_answers(monkeypatch, "_leave_trade", {
        **DEMOTING, "readmit_charge": value, "overcommit": 0.75})


for _value in ("cost_leave", "cost_leave_waits"):
    globals().update(machines(f"readmit_{_value}", {**DEMOTING, "readmit_charge": _value}))
