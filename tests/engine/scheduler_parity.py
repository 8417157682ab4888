"""The engine-vs-simulator parity harness (tests/engine/test_scheduler*.py): request
streams, the admissions log both executors are spied into, and one run of each."""

from __future__ import annotations

import dataclasses

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
from kvsaga.scheduler import FCFSScheduler, WorkflowScheduler
from kvsaga.sim.config import SimConfig
from kvsaga.sim.cost import PRESETS
from kvsaga.sim.simulator import Simulator
from kvsaga.sim.tokens import TokenSynthesizer
from kvsaga.sim.trace import Session, SharedPrefix, Step
from tests.engine.helpers import TINY_VOCAB

NUM_BLOCKS = 14  # 224 tokens: the stream below needs far more at once
BUDGET = 48  # tokens per batch: prompts are prefilled in chunks


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


def frozen_clock() -> float:
    """An engine clock that never advances: every wait, pause and queue time reads 0 s,
    however slow the machine (`run_engine`'s `clock`)."""
    return 0.0


def run_engine(model_dir, sessions, synth, scheduler, params=None,
               held: str | None = None, clock=None) -> list:
    """Drive `sessions` through a real LLMEngine and return its admission log; with
    `held`, that session's second step is submitted only once the engine has nothing
    else unfinished (the simulator's long tool call). `clock`: the engine's (None: its
    default, the wall clock)."""
    probe = LLMEngine(model_dir, device="cpu", progress=False, kv_memory_bytes=2**20)
    timing = {} if clock is None else {"clock": clock}
    engine = LLMEngine(model_dir, device="cpu", progress=False, max_num_seqs=8,
                       max_num_batched_tokens=BUDGET, scheduler=scheduler, policy="lru",
                       scheduler_params=params,
                       kv_memory_bytes=NUM_BLOCKS * probe.spec.bytes_per_block, **timing)
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
    import kvsaga.scheduler.swap_pricing as swap_pricing  # the priced rules read it there
    monkeypatch.setattr(swap_pricing, "PRICED_MARGIN", 0.0)
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
