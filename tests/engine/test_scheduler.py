"""The engine and the simulator drive the same core scheduler: for one request stream they
make the very same admissions and preemptions, batch by batch (the harness:
scheduler_parity.py; the priced swaps' parity: test_scheduler_swap_parity.py)."""

from __future__ import annotations

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.scheduler.decode_stall import DecodeStall
from kvsaga.sim.tokens import TokenSynthesizer
from tests.engine.helpers import TINY_VOCAB
from tests.engine.scheduler_parity import (
    frozen_clock,
    run_engine,
    run_sim,
    stream,
    stream_queue,
)

# undo_demotion with a growth prior under which `stream()`'s shrink demotes (and the default
# 256-token prior, 16 blocks, keeps the gate shut instead): the parity rows below. With the
# growth counted twice on a running step (`growth_charge` "step", the default, pinned here:
# with "once" the stream's shrink demotes nobody).
UNDO = {"undo_demotion": True, "prior_growth_tokens": 16, "growth_charge": "step"}
# the same prior without the undo: the stream's one demoted session's step comes back
# through the gate's re-admission charge (`readmit_charge`), which these rows set. On this
# stream "full" charges it its whole context and "binding" / "binding_short" answer
# "uncached" (other steps wait); "cost" / "cost_ends" / "cost_leave" / "cost_leave_waits"
# price the trade (their answers read the clock, the engine's `frozen_clock` there: on this
# stream no return has found its context lost and no demoted session was admitted again before the
# one return, so the churn is priced at 0 s and all answer "uncached" whatever the clock;
# "room_queue" too: one demoted session's step waits at a time, never the two it needs, so
# its room branch is tested on `stream_queue()` below);
# none changes the admissions (the unit tests in tests/scheduler/test_readmit_binding*.py
# and test_readmit_charge_cost.py cover the decisions): these rows check that the engine
# and the simulator run the same code to the same log with each value.
READMIT = [{"readmit_charge": c, "prior_growth_tokens": 16, "growth_charge": "step"}
           for c in ("full", "binding", "binding_short", "cost", "cost_ends", "cost_leave",
                     "cost_leave_waits", "room_queue")]

# The prefill cap while a step decodes (`decode_prefill_tokens`, kvsaga/scheduler/
# decode_stall.py), ungated and gated (`decode_prefill_when`), with the growth prior under
# which the stream's shrink demotes a session (so "demoted" opens: its step waits to be
# admitted again; and "recompute" finds a step whose evicted context is computed again). On
# this stream each row's log differs from the same parameters without the cap, and each gated
# row's from the ungated cap's (asserted on the simulator), so an executor that ignored either
# parameter would log other admissions than the simulator.
# CAP_BASE turns the cap off (on by default since session 25, gated "demoted_queue").
CAP_BASE = {"prior_growth_tokens": 16, "growth_charge": "step", "decode_prefill_tokens": 0}
CAP = [{**CAP_BASE, "decode_prefill_tokens": 16, "decode_prefill_when": when}
       for when in ("always", "demoted", "recompute")]


@pytest.mark.parametrize("scheduler,params", [
    ("fcfs", None), ("workflow", None),
    ("workflow", {"admission_order": "predicted"}),
    ("workflow", {"admission_order": "predicted", "aging_s": 1.0}),
    ("workflow", {"admission_order": "gittins"}),
    ("workflow", {"growth_quantile": 0.9, "growth_prior_steps": 0.0}),
    ("workflow", {"growth_charge": "remaining", "growth_reserve": 1.0}),
    ("workflow", {"growth_charge": "remaining", "paused_reserve": True}),
    ("workflow", {"paused_reserve": "short"}),
    ("workflow", {"growth_charge": "once"}),
    ("workflow", {"growth_charge": "prompt"}),
    ("workflow", {"growth_charge": "prompt", "prior_growth_tokens": 16}),
    ("workflow", {"shrink_order": "least_work"}),
    ("workflow", {"readmit_cost": "uncached"}),
    ("workflow", UNDO),
    ("workflow", {**UNDO, "shrink_after": 1.0}),
    *[("workflow", p) for p in READMIT], *[("workflow", p) for p in CAP]])
def test_engine_and_simulator_make_the_same_admissions(tiny_model_dir, scheduler, params):
    """The two `UNDO` rows: with a 16-token growth prior the stream's shrink demotes a
    session whose next step comes back with its context cached, and the undo admits it
    again (asserted on the simulator's counts), so the engine must demote and undo alike;
    with `shrink_after` the same demotion is withheld (the session had been away 0 s), so
    parity covers the withholding. Not covered: a demotion `shrink_after` allows (the
    stream has none, and the engine's clock here reads 0 s throughout, so `now - paused_at`
    against an expected pause would differ between the executors).

    The engine runs on `frozen_clock`, not the wall clock: the simulator's clock is simulated
    time (well under `aging_s` on this stream), and on a loaded machine a step that waited
    over 1 s of wall time aged ahead of the others in the engine alone (the `aging_s` 1.0
    row's logs then differed at the 9th admission; with the wall clock run 200x fast its
    logs differ from the first)."""
    sessions = stream()
    synth = TokenSynthesizer(vocab_size=TINY_VOCAB)
    model_dir = tiny_model_dir("llama_gqa4_untied")
    counts: dict[str, int] = {}
    sim_log = run_sim(sessions, synth, scheduler, params, counts)
    if params == UNDO:
        assert counts["demoted"] >= 1 and counts["undone"] >= 1
    elif params == {**UNDO, "shrink_after": 1.0}:
        assert counts["demoted"] == 0
    elif params in READMIT:
        assert counts["demoted"] >= 1  # a demoted session's step came back to the gate
    elif params in CAP:  # the cap, and its gate, change this stream's admissions
        assert counts["demoted"] >= 1
        assert sim_log != run_sim(sessions, synth, scheduler, CAP_BASE)
        if params != CAP[0]:
            assert sim_log != run_sim(sessions, synth, scheduler, CAP[0])
    engine_log = run_engine(model_dir, sessions, synth, scheduler, params, clock=frozen_clock)
    admitted = [sid for a, _ in sim_log for sid in a]
    assert len(admitted) >= 12  # every step admitted, retries included
    if scheduler == "fcfs":
        assert any(p for _, p in sim_log)  # the stream makes fcfs preempt
    assert engine_log == sim_log


def test_engine_rejects_bad_scheduler_names_and_params(tiny_model_dir):
    model_dir = tiny_model_dir("llama_gqa4_untied")
    with pytest.raises(ValueError, match="unknown scheduler 'lifo'"):
        LLMEngine(model_dir, device="cpu", progress=False, scheduler="lifo")
    with pytest.raises(ValueError, match="no parameter 'bogus'"):
        LLMEngine(model_dir, device="cpu", progress=False, scheduler_params={"bogus": 1})
    with pytest.raises(ValueError, match="readmit_charge must be one of .*cost, cost_ends, "
                                         "cost_leave, cost_leave_waits, got 'price'"):
        LLMEngine(model_dir, device="cpu", progress=False, scheduler="workflow",
                  scheduler_params={"readmit_charge": "price"})
    for value in ("cost", "cost_ends", "cost_leave", "cost_leave_waits"):
        eng = LLMEngine(model_dir, device="cpu", progress=False, scheduler="workflow",
                        scheduler_params={"readmit_charge": value})
        assert eng.scheduler.core.readmit_charge == value


def test_room_queue_parity_where_two_wait(tiny_model_dir, monkeypatch):
    """`readmit_charge` "room_queue" with the default cap (128 tokens, gated
    "demoted_queue") where two demoted sessions' steps wait at once: the rule answers True
    (its room branch) and False, the cap's gate opens, in both executors, and the engine
    makes the simulator's very decisions. A rule or gate that never took its branch here
    fails the counts; one the engine ignored, the logs."""
    answers: list[tuple[str, bool]] = []
    rule, gate = DecodeStall._readmits_on_room, DecodeStall._cap_open

    def rule_spy(self, queued=0):
        got = rule(self, queued)
        answers.append(("room", got))
        return got

    def gate_spy(self):
        got = gate(self)
        answers.append((self.decode_prefill_when, got))
        return got

    monkeypatch.setattr(DecodeStall, "_readmits_on_room", rule_spy)
    monkeypatch.setattr(DecodeStall, "_cap_open", gate_spy)
    sessions = stream_queue()
    synth = TokenSynthesizer(vocab_size=TINY_VOCAB)
    params = {"readmit_charge": "room_queue", "prior_growth_tokens": 16,
              "growth_charge": "step"}
    counts: dict[str, int] = {}
    sim_log = run_sim(sessions, synth, "workflow", params, counts)
    sim_answers, answers[:] = list(answers), []
    assert counts["demoted"] >= 2
    assert ("room", True) in sim_answers and ("room", False) in sim_answers
    assert ("demoted_queue", True) in sim_answers
    engine_log = run_engine(tiny_model_dir("llama_gqa4_untied"), sessions, synth, "workflow",
                            params)
    assert ("room", True) in answers and ("demoted_queue", True) in answers
    answers[:] = []
    assert sim_log != run_sim(sessions, synth, "workflow",
                              {**params, "readmit_charge": "uncached"})
    assert len([sid for a, _ in sim_log for sid in a]) >= 24  # every step admitted
    assert engine_log == sim_log


@pytest.mark.parametrize("charge", ["room_fits", "room_contexts"])
def test_room_whole_parity_where_it_admits(tiny_model_dir, monkeypatch, charge):
    """`readmit_charge` "room_fits" / "room_contexts" (round 28) on `stream_queue()`: a
    demoted session's step is admitted on room where its whole context fits beside the
    admitted sets and refused by that test elsewhere ("room_fits"; "room_contexts", the
    looser test, admits at every such return of this stream: its refusal is
    tests/scheduler/test_room_whole.py's), in both executors, and the engine makes the
    simulator's very decisions. A rule never applied here fails the counts; one the engine
    ignored, the logs."""
    answers: list[bool] = []
    rule = DecodeStall._readmits_whole

    def rule_spy(self, req, lookup):
        got = rule(self, req, lookup)
        if self.readmit_charge == charge and req.session_id in self._deferred:
            answers.append(got)
        return got

    monkeypatch.setattr(DecodeStall, "_readmits_whole", rule_spy)
    sessions = stream_queue()
    synth = TokenSynthesizer(vocab_size=TINY_VOCAB)
    params = {"readmit_charge": charge, "prior_growth_tokens": 16, "growth_charge": "step"}
    counts: dict[str, int] = {}
    sim_log = run_sim(sessions, synth, "workflow", params, counts)
    sim_answers, answers[:] = list(answers), []
    assert counts["demoted"] >= 2
    both = {True, False} if charge == "room_fits" else {True}
    assert both <= set(sim_answers)
    engine_log = run_engine(tiny_model_dir("llama_gqa4_untied"), sessions, synth, "workflow",
                            params)
    assert both <= set(answers)
    answers[:] = []
    assert sim_log != run_sim(sessions, synth, "workflow",
                              {**params, "readmit_charge": "uncached"})
    assert len([sid for a, _ in sim_log for sid in a]) >= 24  # every step admitted
    assert engine_log == sim_log
