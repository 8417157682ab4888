"""An interrupt (Ctrl-C) while a step hands its copy plan to the transfer engine
(`HostCopies.submit`, after the manager's `take_transfers`) must not lose the plan.

Before the fix (review s50 hosttier, finding 1) a KeyboardInterrupt there left the plan in
neither `pending` nor `failed_plans`: its host copies and its GPU load targets stayed indexed
over bytes never written (no copy ran), and a later session took those host blocks as hits
and generated other tokens, with no error. One after the copies were queued left them
running with nothing waiting on them. And `drop_failed` emptied its list before dropping, so
an interrupt during one plan's drop lost the plans after it.
"""

from __future__ import annotations

import itertools

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.host_copies import HostCopies
from kvsaga.engine.sampling import SamplingParams
from kvsaga.pool import FREE
from tests.engine.helpers import drain

GREEDY = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
BLOCK_BYTES = 8192  # the tiny model's KV block (16 tokens)
NUM_SESSIONS = 14
INTERRUPTED = 8  # the session whose first step's plan (with offloads) is interrupted


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def ticks():
    n = itertools.count()
    return lambda: next(n) / 100


def prompt(i: int) -> list[int]:
    return [(5 + 7 * i + j) % 200 + 3 for j in range(3 * 16 + 2)]


def interrupt(engine: LLMEngine, where: str, seen: dict) -> None:
    """Arm one KeyboardInterrupt, for the next plan with offloads, at `where`:
    - "before": as `TransferEngine.submit` is entered (nothing queued);
    - "refused": in the CPU worker queue's `put`, before it queued the plan;
    - "queued": in that `put`, after it queued the plan (its copies may run);
    - "returned": once `TransferEngine.submit` returned (the copies started), before
      `HostCopies.submit` recorded the plan as pending."""
    tr = engine.transfers
    if where in ("before", "returned"):
        real = tr.submit

        def submit(plan):
            if seen.get("armed") and plan.offloads:
                seen.update(armed=False, plan=plan)
                if where == "before":
                    raise KeyboardInterrupt
                seen["transfer"] = t = real(plan)
                engine.copies.pending = InterruptedAppend(engine.copies.pending)
                return t
            return real(plan)

        tr.submit = submit
    else:
        jobs = tr._jobs
        real_put = jobs.put

        def put(job, *a, **kw):
            plan = job[0] if isinstance(job, tuple) else None
            if seen.get("armed") and plan is not None and plan.offloads:
                seen.update(armed=False, plan=plan, transfer=job[1])
                if where == "queued":
                    real_put(job, *a, **kw)
                raise KeyboardInterrupt
            return real_put(job, *a, **kw)

        jobs.put = put


def interrupt_first_drop(engine: LLMEngine, seen: dict) -> None:
    """Arm a second KeyboardInterrupt with the first: the step's way out
    (`HostCopies.drop_failed`) is interrupted as it enters its first `drop_transfer`."""
    manager = engine.manager
    real = manager.drop_transfer

    def drop_transfer(plan):
        if seen.get("drop_armed"):
            seen["drop_armed"] = False
            raise KeyboardInterrupt
        seen.setdefault("dropped", []).append(plan)
        return real(plan)

    manager.drop_transfer = drop_transfer


def run(model_dir, where: str | None, interrupt_drop: bool = False):
    """Each session's second turn (tokens, cached tokens) after `NUM_SESSIONS` first turns
    on a small GPU tier, one first-turn step interrupted at `where` (then stepped on), and
    what the interrupted step left (`seen`; with `interrupt_drop`, its drop of the failed
    plan is interrupted too, and `seen["next"]` is what the next step left)."""
    engine = LLMEngine(str(model_dir), device="cpu", progress=False,
                       kv_memory_bytes=24 * BLOCK_BYTES, host_memory_bytes=96 * BLOCK_BYTES,
                       clock=ticks())
    seen: dict = {}
    if where is not None:
        interrupt(engine, where, seen)
    if interrupt_drop:
        interrupt_first_drop(engine, seen)
    context = {}
    for i in range(NUM_SESSIONS):
        req = engine.add_request(prompt(i), GREEDY, session_id=f"s{i}")
        if i == INTERRUPTED and where is not None:
            seen["armed"] = True
            seen["drop_armed"] = interrupt_drop
        while engine.has_unfinished():
            try:
                engine.step()
            except KeyboardInterrupt:
                seen["after"] = after_interrupt(engine, seen["plan"])
                engine.manager.check_integrity()
                continue
            if "after" in seen and "next" not in seen:
                seen["next"] = after_interrupt(engine, seen["plan"])
        context[i] = prompt(i) + req.output_ids
    out = {}
    for i in range(NUM_SESSIONS):
        req = engine.add_request(context[i] + [9, 9, 9], GREEDY, session_id=f"s{i}")
        drain(engine)
        out[i] = (req.output_ids, req.num_cached_tokens)
    engine.manager.check_integrity()
    return out, seen, engine.manager.stats().host_hit_tokens


def after_interrupt(engine: LLMEngine, plan) -> dict:
    """Right after the interrupted step: whether the plan is pending (to be waited on) and
    which of its offloads' host blocks are still indexed (each must hold the bytes its copy
    wrote, or be dropped: FREE)."""
    host = engine.manager.host
    return {
        "pending": any(p is plan for _, p in engine.copies.pending),
        "failed_left": len(engine.copies.failed_plans),
        "indexed": [hb for _, hb in plan.offloads if host.pool.state[hb] != FREE],
    }


@pytest.fixture(scope="module")
def clean(model_dir):
    out, _, host_hits = run(model_dir, None)
    assert host_hits > 0  # the second turns take host hits: the scenario can see the bug
    return out


@pytest.mark.parametrize("where", ["before", "refused", "queued", "returned"])
def test_an_interrupt_at_the_hand_over_loses_no_plan(model_dir, clean, where):
    out, seen, _ = run(model_dir, where)
    assert "after" in seen, "the interrupt did not fire"
    after = seen["after"]
    assert after["failed_left"] == 0  # the step dropped what it had to
    if where == "returned":  # its copies run: waited on by the next step
        assert after["pending"]  # before the fix: False (nothing waited for them)
    else:  # no copy ran (or it might not have, and it was stopped): dropped
        assert not after["pending"]
        assert after["indexed"] == []  # before the fix: every offload's host block
        if where == "queued":  # failed, and the worker is done with it (skipped or ran)
            assert seen["transfer"].error is not None and seen["transfer"].done()
    # before the fix ("before", "refused"): a second turn took a host block never written
    # (the cached tokens differ: the copies dropped are computed again)
    assert {i: ids for i, (ids, _) in out.items()} == {i: ids for i, (ids, _) in clean.items()}


def test_a_failed_plan_whose_drop_was_interrupted_is_dropped_by_the_next_step(model_dir, clean):
    """A second Ctrl-C, in the failing step's own drop of its plan (review s50 diff-host 1):
    the plan stays in `failed_plans`, and the next step drops it before it schedules (before
    the fix nothing did: every later step succeeded, the plan's never-written host copies
    stayed indexed, and a second turn took them as hits and generated other tokens)."""
    out, seen, _ = run(model_dir, "before", interrupt_drop=True)
    assert seen["after"]["failed_left"] == 1  # the interrupted drop kept it (none lost)
    assert seen["next"]["failed_left"] == 0  # before the fix: 1, for ever
    assert any(p is seen["plan"] for p in seen.get("dropped", []))
    assert {i: ids for i, (ids, _) in out.items()} == {i: ids for i, (ids, _) in clean.items()}


@pytest.mark.parametrize("way", ["tick", "resume_hint", "settle_transfers"])
def test_a_failed_plan_left_is_dropped_first_by_every_way_in(model_dir, way):
    """A failed plan left in `failed_plans` (its drop interrupted) is dropped before the
    manager may plan a copy or hit a host block: by `tick` before the policy's prefetches,
    by `resume_hint` before the session's reloads, by `settle_transfers` before its plan."""
    engine = LLMEngine(str(model_dir), device="cpu", progress=False,
                       kv_memory_bytes=24 * BLOCK_BYTES, host_memory_bytes=96 * BLOCK_BYTES,
                       clock=ticks())
    engine.add_request(prompt(0), GREEDY, session_id="s0")
    drain(engine)  # s0: paused, known to the manager
    manager, log, failed = engine.manager, [], object()
    for name in ("tick", "resume_hint", "take_transfers"):
        real = getattr(manager, name)
        setattr(manager, name, lambda *a, _n=name, _r=real, **kw: (log.append(_n), _r(*a, **kw))[1])
    manager.drop_transfer = lambda plan: (log.append(plan), {})[1]
    engine.copies.failed_plans = [failed]
    getattr(engine, way)(*(("s0",) if way == "resume_hint" else ()))
    assert log and log[0] is failed  # before the fix: never dropped (or after the manager)
    assert engine.copies.failed_plans == []


# -- HostCopies with fakes -------------------------------------------------------------------
class Plan(str):
    """A `TransferPlan` stand-in, named, with one load."""

    loads = ("load",)


class Manager:
    def __init__(self, interrupt_drop_of: str | None = None) -> None:
        self.dropped: list[str] = []
        self.plans = iter([Plan("p1"), Plan("p2")])
        self.interrupt_drop_of = interrupt_drop_of

    def take_transfers(self):
        return next(self.plans)

    def drop_transfer(self, plan):
        self.dropped.append(plan)
        if plan == self.interrupt_drop_of:
            self.interrupt_drop_of = None
            raise KeyboardInterrupt  # Ctrl-C inside the drop (once)
        return {f"s-{plan}": 16}


class Transfers:
    cuda = False

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse

    def submit(self, plan):
        if self.refuse:  # `TransferEngine.submit` interrupted: none of the copies runs
            raise KeyboardInterrupt
        return f"t-{plan}"


@pytest.mark.parametrize("alone", [False, True])
def test_a_plan_whose_submit_was_interrupted_is_failed_and_dropped(alone):
    manager = Manager()
    copies = HostCopies(manager, Transfers(refuse=True), on_cut=lambda cut: None)
    with pytest.raises(KeyboardInterrupt):
        copies.submit_alone() if alone else copies.submit()
    if alone:  # (a resume hint or an idle tick: no step to drop it)
        assert manager.dropped == ["p1"] and copies.failed_plans == []
    else:  # the step's (or settle's) way out drops it
        assert copies.failed_plans == ["p1"]  # before the fix: [] (lost)
        copies.drop_failed()
        assert manager.dropped == ["p1"]
    assert copies.pending == []


class InterruptedAppend(list):
    """A `pending` whose first append is interrupted before it appends (as Ctrl-C between
    `TransferEngine.submit`'s return and the append)."""

    fired = False

    def append(self, item) -> None:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        super().append(item)


def test_a_plan_interrupted_after_its_copies_started_stays_pending():
    manager = Manager()
    copies = HostCopies(manager, Transfers(refuse=False), on_cut=lambda cut: None)
    copies.pending = InterruptedAppend()
    with pytest.raises(KeyboardInterrupt):
        copies.submit()
    assert list(copies.pending) == [("t-p1", "p1")]  # before the fix: [] (never waited on)
    assert copies.failed_plans == [] and manager.dropped == []


def test_an_interrupt_inside_drop_failed_keeps_the_plans_not_dropped():
    manager = Manager(interrupt_drop_of="p1")
    cuts: list[dict] = []
    copies = HostCopies(manager, Transfers(refuse=False), on_cut=cuts.append)
    copies.failed_plans = [Plan("p1"), Plan("p2")]
    with pytest.raises(KeyboardInterrupt):
        copies.drop_failed()
    assert copies.failed_plans == ["p1", "p2"]  # before the fix: [] (p2 never dropped)
    copies.drop_failed()  # the next way out drops them (p1 again: its drop was cut short)
    assert manager.dropped == ["p1", "p1", "p2"] and copies.failed_plans == []
    assert cuts == [{"s-p1": 16, "s-p2": 16}]
