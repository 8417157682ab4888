"""The engine and the simulator drive the same core scheduler: for one request stream they
make the very same admissions and preemptions, batch by batch."""

from __future__ import annotations

import dataclasses
import math

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
from kvsaga.scheduler import FCFSScheduler, WorkflowScheduler
from kvsaga.scheduler.decode_stall import DecodeStall
from kvsaga.sim.config import SimConfig
from kvsaga.sim.cost import PRESETS
from kvsaga.sim.simulator import Simulator
from kvsaga.sim.tokens import TokenSynthesizer
from kvsaga.sim.trace import Session, SharedPrefix, Step
from tests.engine.helpers import TINY_VOCAB

NUM_BLOCKS = 14  # 224 tokens: the stream below needs far more at once
BUDGET = 48  # tokens per batch: prompts are prefilled in chunks
# undo_demotion with a growth prior under which `stream()`'s shrink demotes (and the default
# 256-token prior, 16 blocks, keeps the gate shut instead): the parity rows below. With the
# growth counted twice on a running step (`growth_charge` "step", the default, pinned here:
# with "once" the stream's shrink demotes nobody).
UNDO = {"undo_demotion": True, "prior_growth_tokens": 16, "growth_charge": "step"}
# the same prior without the undo: the stream's one demoted session's step comes back
# through the gate's re-admission charge (`readmit_charge`), which these rows set. On this
# stream "full" charges it its whole context and "binding" / "binding_short" answer
# "uncached" (other steps wait); "cost" / "cost_ends" / "cost_leave" / "cost_leave_waits"
# price the trade (their answers read the clock, the engine's the wall clock: on this stream
# no return has found its context lost and no demoted session was admitted again before the
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


def stream() -> list[Session]:
    """Two-step sessions arriving together; their second step follows at once (tool_s 0),
    so both executors queue it at the same batch boundary."""
    shapes = [(30, 4, 12, 3), (18, 6, 20, 5), (40, 3, 8, 4), (25, 5, 15, 6), (12, 7, 30, 2),
              (35, 4, 10, 5)]
    return [Session(id=f"s{i}", workflow="w", arrival_s=0.0,
                    shared_prefix=SharedPrefix("sys", 20),
                    steps=(Step(a, b, "tool", 0.0), Step(c, d)))
            for i, (a, b, c, d) in enumerate(shapes)]


def stream_queue() -> list[Session]:
    """Eight three-step sessions arriving together (tool_s 0), on which the shrink demotes
    three sessions and, at some admission attempts, two demoted sessions' steps wait at
    once: "room_queue" then admits on room (its log differs from "uncached"'s) and the
    default cap's gate "demoted_queue" opens (`test_room_queue_parity_where_two_wait`)."""
    shapes = [((32, 4), (25, 5), (13, 2)), ((19, 5), (20, 5), (35, 3)),
              ((18, 2), (18, 7), (26, 3)), ((40, 6), (23, 2), (17, 2)),
              ((22, 3), (11, 7), (40, 3)), ((24, 7), (26, 7), (23, 6)),
              ((36, 3), (30, 7), (26, 5)), ((17, 6), (30, 2), (22, 7))]
    return [Session(id=f"s{i}", workflow="w", arrival_s=0.0,
                    shared_prefix=SharedPrefix("sys", 20),
                    steps=tuple(Step(a, b, "tool", 0.0) if j < len(sh) - 1 else Step(a, b)
                                for j, (a, b) in enumerate(sh)))
            for i, sh in enumerate(shapes)]


def record(core) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Wrap `core.schedule` to log each call's (admitted, preempted) session ids, and
    `core.admit_waiting` for the admissions the simulator's decode runs ask for alone (one
    batch step each; inside `schedule` it is not logged twice)."""
    log: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    schedule, admit_waiting = core.schedule, core.admit_waiting
    inside = [False]

    def spy(now, executor):
        inside[0] = True
        try:
            out = schedule(now, executor)
        finally:
            inside[0] = False
        if out.admitted or out.preempted:  # the simulator skips calls that decide nothing
            log.append((tuple(r.session_id for r in out.admitted),
                        tuple(r.session_id for r in out.preempted)))
        return out

    def admit_spy(now, budget, executor, out):
        before = len(out.admitted)
        admit_waiting(now, budget, executor, out)
        if not inside[0] and len(out.admitted) > before:
            log.append((tuple(r.session_id for r in out.admitted[before:]), ()))

    core.schedule = spy
    core.admit_waiting = admit_spy
    return log


def run_sim(sessions, synth, scheduler, params=None, demotions=None) -> list:
    """The simulator's admissions log; `demotions` (a dict), when given, gets the workflow
    scheduler's demotion counts."""
    preset = dataclasses.replace(PRESETS["a100-llama3-8b"], block_size=16)
    cfg = SimConfig(preset=preset, num_gpu_blocks=NUM_BLOCKS, max_num_batched_tokens=BUDGET,
                    max_num_seqs=8, resume_hints=False, scheduler=scheduler, policy="lru",
                    scheduler_params=params)
    sim = Simulator(sessions, cfg, synthesizer=synth)
    log = record(sim.scheduler)
    sim.run()
    sim.manager.check_integrity()
    if demotions is not None:
        demotions["demoted"] = getattr(sim.scheduler, "num_demotions", 0)
        demotions["undone"] = getattr(sim.scheduler, "num_undone_demotions", 0)
    return log


def run_engine(model_dir, sessions, synth, scheduler, params=None,
               held: str | None = None) -> list:
    """Drive `sessions` through a real LLMEngine and return its admission log; with
    `held`, that session's second step is submitted only once the engine has nothing
    else unfinished (the simulator's long tool call)."""
    probe = LLMEngine(model_dir, device="cpu", progress=False, kv_memory_bytes=2**20)
    engine = LLMEngine(model_dir, device="cpu", progress=False, max_num_seqs=8,
                       max_num_batched_tokens=BUDGET, scheduler=scheduler, policy="lru",
                       scheduler_params=params,
                       kv_memory_bytes=NUM_BLOCKS * probe.spec.bytes_per_block)
    assert engine.manager.num_gpu_blocks == NUM_BLOCKS
    cls = {"fcfs": FCFSScheduler, "workflow": WorkflowScheduler}[scheduler]
    assert type(engine.scheduler.core) is cls
    log = record(engine.scheduler.core)
    by_id = {s.id: s for s in sessions}
    context: dict[str, list[int]] = {s.id: [] for s in sessions}

    def submit(s: Session, k: int) -> None:
        # The context so far (with the model's own outputs), then the step's input as the
        # simulator synthesizes it: the same token counts and the same sharing.
        step = s.steps[k]
        new = s.prompt_length(k) - len(context[s.id])
        prompt = context[s.id] + synth.prompt_token_ids(s, k)[-new:].tolist()
        context[s.id] = prompt
        engine.add_request(prompt, SamplingParams(max_tokens=step.output_tokens,
                                                  ignore_eos=True),
                           request_id=f"{s.id}/{k}", session_id=s.id, workflow=s.workflow,
                           tool=step.tool, last_step=k == s.num_steps - 1)

    later: list[tuple[Session, int]] = []
    for s in sessions:
        submit(s, 0)
    while engine.has_unfinished() or later:
        if not engine.has_unfinished():
            submit(*later.pop())
        for out in engine.step():
            sid, k = out.request_id.split("/")
            if out.finished and int(k) + 1 < by_id[sid].num_steps:
                context[sid] = context[sid] + out.token_ids
                if sid == held and int(k) == 0:
                    later.append((by_id[sid], 1))
                else:
                    submit(by_id[sid], int(k) + 1)
    engine.manager.check_integrity()
    return log


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
    stream has none, and the engine's clock is the wall clock, so `now - paused_at`
    against an expected pause would differ between the executors)."""
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
    engine_log = run_engine(model_dir, sessions, synth, scheduler, params)
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


def stream_held() -> list[Session]:
    """`stream_queue()` with session s2 away 1,000 s after its first step: while the others
    run, s2 is an admitted paused session the shrink may demote (on the tool_s-0 streams no
    session is paused at an admission attempt). Its next step comes back once every other
    session has ended, in both executors (`run_engine_held`)."""
    out = stream_queue()
    s = out[2]
    out[2] = dataclasses.replace(s, steps=(dataclasses.replace(s.steps[0], tool_s=1000.0),
                                           *s.steps[1:]))
    return out


def run_engine_held(model_dir, sessions, synth, scheduler, params, held: str) -> list:
    """`run_engine`, with session `held`'s second step submitted only once the engine has
    nothing else unfinished (the simulator's long tool call)."""
    return run_engine(model_dir, sessions, synth, scheduler, params, held=held)


@dataclasses.dataclass
class HeldSwapRun:
    """`held_swap_run`'s result: the trace, the parameters, the simulator's counts, log and
    spy entries (`sim_records`, one list per spy), and the engine's log."""

    sessions: list
    synth: TokenSynthesizer
    params: dict
    counts: dict[str, int]
    sim_log: list
    sim_records: list[list]
    engine_log: list


def held_swap_run(tiny_model_dir, monkeypatch, charge: str, records: list[list],
                  extra: dict | None = None) -> HeldSwapRun:
    """A priced swap's `readmit_charge` on `stream_held()`, in the simulator, then the engine:
    the price's margin 0 (so the clock, the wall clock in the engine, does not decide),
    fifo admission, deadlines out of reach. `records` are the spies' lists, patched in by
    the caller: each is copied after the simulator's run and cleared, so afterwards it
    holds the engine's entries. `extra`: more parameters, over those."""
    import kvsaga.scheduler.room_swap as room_swap
    monkeypatch.setattr(room_swap, "PRICED_MARGIN", 0.0)
    sessions = stream_held()
    synth = TokenSynthesizer(vocab_size=TINY_VOCAB)
    params = {"readmit_charge": charge, "admission_order": "fifo",
              "prior_growth_tokens": 16, "growth_charge": "step", "demote_min_s": 1e6,
              **(extra or {})}
    counts: dict[str, int] = {}
    sim_log = run_sim(sessions, synth, "workflow", params, counts)
    sim_records = [list(r) for r in records]
    for r in records:
        r.clear()
    engine_log = run_engine_held(tiny_model_dir("llama_gqa4_untied"), sessions, synth,
                                 "workflow", params, "s2")
    return HeldSwapRun(sessions, synth, params, counts, sim_log, sim_records, engine_log)


def assert_admits_every_step(run: HeldSwapRun) -> None:
    """The charge decided something (its log differs from "uncached"'s), every step was
    admitted, and the engine made the simulator's very decisions."""
    assert run.sim_log != run_sim(run.sessions, run.synth, "workflow",
                                  {**run.params, "readmit_charge": "uncached"})
    assert len([sid for a, _ in run.sim_log for sid in a]) >= 24
    assert run.engine_log == run.sim_log


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
