"""An interrupt (Ctrl-C in a notebook that drives `LLMEngine` and carries on) that lands
inside `step()` must leave the engine able to step on, with the same greedy tokens.

Before the fix, one landing while `HostCopies.wait` blocked on a copy lost the plans not yet
waited on: the next step's forward read blocks the copy thread was still writing (other
tokens, no error). One landing in the output loop, after the forward pass, lost the sampled
token of the rows not yet handled while their K/V stayed counted: every later step raised
`num_tokens must be a positive int, got 0` until the request was aborted. Later (review
s46) the same held for an interrupt as `tolist` returned (where a Ctrl-C lands on CUDA), or
inside a row's finish, which even aborting could not clear; the text lost a piece after one
inside the detokenizer, the outputs made before the interrupt never reached the caller, and
a seeded row taken back drew another token.
"""

from __future__ import annotations

import itertools
import threading

import pytest

from kvsaga.config import KVSpec
from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.host_copies import HostCopies
from kvsaga.engine.sampling import SamplingParams
from kvsaga.engine.weights import open_checkpoint
from kvsaga.errors import InvalidRequest
from kvsaga.host_tier import TransferPlan
from tests.engine.helpers import drain

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
BLOCK_BYTES = 8192  # the tiny model's KV block (16 tokens)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def make(model_dir, **kw) -> LLMEngine:
    kw.setdefault("kv_memory_bytes", 4 * 2**20)
    return LLMEngine(str(model_dir), device="cpu", progress=False, **kw)


# -- an interrupt while waiting for host-tier copies ------------------------------------------
class FakeTransfers:
    """`TransferEngine.wait` that records the transfers waited on and raises
    KeyboardInterrupt instead of waiting on `interrupt_at` (once)."""

    cuda = False

    def __init__(self, interrupt_at: str) -> None:
        self.interrupt_at: str | None = interrupt_at
        self.waited: list[str] = []

    def submit(self, plan):
        return None  # (an empty plan)

    def wait(self, t: str) -> None:
        if t == self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt
        self.waited.append(t)


class NoPlans:
    @staticmethod
    def take_transfers():
        return TransferPlan([], [], [], [])


@pytest.mark.parametrize("via", ["wait", "settle"])
def test_an_interrupt_in_wait_keeps_the_plans_not_waited_on(via):
    transfers = FakeTransfers("t2")
    copies = HostCopies(NoPlans(), transfers, on_cut=lambda cut: None)
    copies.pending = [("t1", "p1"), ("t2", "p2"), ("t3", "p3")]
    undone = []
    with pytest.raises(KeyboardInterrupt):
        copies.wait() if via == "wait" else copies.settle(lambda: undone.append(1))
    assert copies.pending == [("t2", "p2"), ("t3", "p3")]  # before the fix: []
    assert copies.failed_plans == [] and transfers.waited == ["t1"]
    assert undone == ([1] if via == "settle" else [])
    copies.wait()
    assert transfers.waited == ["t1", "t2", "t3"] and copies.pending == []


def ticks():
    """A clock that advances 10 ms a call (the policy's choices do not depend on how fast
    the machine runs)."""
    n = itertools.count()
    return lambda: next(n) / 100


def test_the_step_after_an_interrupted_wait_waits_for_the_load(model_dir):
    gate = threading.Event()
    gate.set()
    engine = make(model_dir, kv_memory_bytes=8 * BLOCK_BYTES,
                  host_memory_bytes=16 * BLOCK_BYTES, transfer_delay=gate.wait, clock=ticks())
    assert engine.spec.bytes_per_block == BLOCK_BYTES
    context = list(range(10, 60))
    first = engine.add_request(context, GREEDY, session_id="s", tool="t", expected_s=30.0)
    drain(engine)
    engine.add_request(list(range(60, 180)), GREEDY)  # evicts s's blocks to the host tier
    drain(engine)
    assert engine.manager.stats().offloaded_blocks > 0
    context += first.output_ids + [3, 4]
    gate.clear()  # the load of s's blocks stays in flight
    again = engine.add_request(context, GREEDY, session_id="s")
    transfers = engine.transfers
    real_wait = transfers.wait

    def interrupted(t):
        transfers.wait = real_wait
        raise KeyboardInterrupt  # as Ctrl-C while blocked on the copy

    transfers.wait = interrupted
    with pytest.raises(KeyboardInterrupt):
        engine.step()
    assert any(p.loads for _, p in engine.copies.pending)  # before the fix: nothing pending
    engine.manager.check_integrity()
    gate.set()
    copying = []
    real_run = engine.runner.run

    def run(chunks):
        copying.append(sum(not t.done() for t, _ in engine.copies.pending))
        copying.append(sum(not t.done() for t in transfers._inflight))
        return real_run(chunks)

    engine.runner.run = run
    drain(engine)
    assert copying[1] == 0  # the next forward ran after the load ended
    assert again.num_cached_tokens >= 48
    cold = make(model_dir)
    want = cold.add_request(context, GREEDY)
    drain(cold)
    assert again.output_ids == want.output_ids
    engine.manager.check_integrity()


# -- an interrupt in the output loop ----------------------------------------------------------
PROMPTS = [[5, 6, 7, 8], [9, 10, 11, 12], list(range(20, 57))]


@pytest.fixture(scope="module")
def uninterrupted(model_dir) -> list[tuple[list[int], str]]:
    engine = make(model_dir)
    reqs = [engine.add_request(p, GREEDY) for p in PROMPTS]
    drain(engine)
    return [(r.output_ids, r.text) for r in reqs]


@pytest.mark.parametrize("at_step", [1, 2], ids=["prefill", "decode"])
@pytest.mark.parametrize("at_row", [2, 3])
def test_an_interrupt_in_the_output_loop_leaves_the_engine_usable(model_dir, uninterrupted,
                                                                  at_step, at_row):
    engine = make(model_dir)
    reqs = [engine.add_request(p, GREEDY) for p in PROMPTS]
    for _ in range(at_step - 1):
        engine.step()
    real = engine._advance
    calls = [0]

    def advance(*args):
        calls[0] += 1
        if calls[0] == at_row:
            raise KeyboardInterrupt
        return real(*args)

    engine._advance = advance
    with pytest.raises(KeyboardInterrupt):
        engine.step()
    engine._advance = real
    engine.manager.check_integrity()
    drain(engine)  # before the fix: every step raised InvalidRequest (num_tokens 0)
    assert [(r.output_ids, r.text) for r in reqs] == uninterrupted
    assert all(r.finish_reason == "length" for r in reqs)
    engine.manager.check_integrity()
    assert engine.manager.stats().num_used_blocks == 0


# -- an interrupt anywhere in the output phase ------------------------------------------------
class Seen:
    """What a streaming caller got from `step()`: each request's deltas and finished outputs."""

    def __init__(self) -> None:
        self.streamed: dict[str, str] = {}
        self.finished: dict[str, int] = {}

    def take(self, outputs) -> None:
        for o in outputs:
            self.streamed[o.request_id] = self.streamed.get(o.request_id, "") + o.delta
            self.finished[o.request_id] = self.finished.get(o.request_id, 0) + o.finished


class WaitsThenInterrupted:
    """`out.token_ids` whose `tolist` returns into an interrupt (on CUDA the host first
    waits for the forward pass there, so that is where a Ctrl-C lands)."""

    def __init__(self, t) -> None:
        self.t = t

    def tolist(self):
        self.t.tolist()
        raise KeyboardInterrupt


def at_tolist(engine, reqs):
    real = engine.runner.run

    def run(chunks):
        del engine.runner.run
        sampled, out = real(chunks)
        out.token_ids = WaitsThenInterrupted(out.token_ids)
        return sampled, out

    engine.runner.run = run


def nth_call(obj, name, n):
    """Make `obj.name` raise KeyboardInterrupt at its `n`th call (then the real one)."""
    real = getattr(obj, name)
    calls = [0]

    def wrapped(*args, **kw):
        calls[0] += 1
        if calls[0] == n:
            delattr(obj, name)
            raise KeyboardInterrupt
        return real(*args, **kw)

    setattr(obj, name, wrapped)


def in_detokenizer(engine, reqs):
    """Interrupted once the detokenizer took the token, before its text comes back."""
    detok = reqs[1].detokenizer
    real = detok._decode

    def interrupted(ids):
        detok._decode = real
        raise KeyboardInterrupt

    detok._decode = interrupted


def at_detokenizer(engine, reqs):
    nth_call(reqs[1].detokenizer, "add", 1)


INTERRUPTS = {  # where: (step it lands in, one-shot sessions, patch)
    "tolist": (3, True, at_tolist),
    "finish entry": (6, True, lambda e, r: nth_call(e, "_hand_back", 2)),
    "end_session in finish": (6, True, lambda e, r: nth_call(e.manager, "end_session", 2)),
    "finish_step in finish": (6, False, lambda e, r: nth_call(e.manager, "finish_step", 2)),
    "detokenizer entry": (3, True, at_detokenizer),
    "detokenizer, the token taken": (3, True, in_detokenizer),
}


@pytest.mark.parametrize("where", list(INTERRUPTS))
def test_an_interrupt_anywhere_in_the_output_phase_leaves_every_row_whole(model_dir,
                                                                        uninterrupted, where):
    """Before the fix each of these left the engine raising at every later step
    (`num_tokens must be a positive int, got 0` or `num_tokens 1 exceeds the 0 tokens`), or
    (detokenizer) lost a piece of the text; and the outputs of the rows recorded before the
    interrupt never reached the caller."""
    at_step, one_shot, patch = INTERRUPTS[where]
    engine = make(model_dir)
    reqs = [engine.add_request(p, GREEDY, **({} if one_shot else {"session_id": f"s{i}"}))
            for i, p in enumerate(PROMPTS)]
    seen = Seen()
    for _ in range(at_step - 1):
        seen.take(engine.step())
    patch(engine, reqs)
    with pytest.raises(KeyboardInterrupt):
        engine.step()
    engine.manager.check_integrity()
    steps = 0
    while engine.has_unfinished():
        seen.take(engine.step())
        steps += 1
    assert steps == 7 - at_step  # the step cut short runs again, once
    assert [(r.output_ids, r.text) for r in reqs] == uninterrupted
    assert all(r.finish_reason == "length" for r in reqs)
    assert seen.streamed == {r.request_id: r.text for r in reqs}
    assert seen.finished == {r.request_id: 1 for r in reqs}
    engine.manager.check_integrity()
    assert engine.manager.stats().num_used_blocks == 0
    assert not engine.scheduler.running and not engine.requests
    if not one_shot:  # each session paused, its step finished
        assert all(not engine.manager.sessions[f"s{i}"].is_running for i in range(3))
        more = [engine.add_request([1, 2], GREEDY, session_id=f"s{i}") for i in range(3)]
        drain(engine)  # each session takes its next step and runs it to its end
        assert all(len(r.output_ids) == 6 and r.finish_reason == "length" for r in more)
        engine.manager.check_integrity()


def test_outputs_made_before_the_interrupt_come_with_the_next_step(model_dir):
    """Every request finishes in the interrupted step: the driver still steps once more
    (`has_unfinished`) and gets the finished outputs (before the fix: never)."""
    engine = make(model_dir)
    reqs = [engine.add_request(p, GREEDY) for p in PROMPTS]
    seen = Seen()
    for _ in range(5):
        seen.take(engine.step())
    real = engine._output
    calls = [0]

    def output(*args):
        calls[0] += 1
        if calls[0] == 3:  # the last row, recorded and finished
            del engine._output
            raise KeyboardInterrupt
        return real(*args)

    engine._output = output
    with pytest.raises(KeyboardInterrupt):
        engine.step()
    assert all(r.finished for r in reqs)
    assert engine.has_unfinished()
    outs = engine.step()
    assert [o.request_id for o in outs] == [r.request_id for r in reqs]
    seen.take(outs)
    assert seen.finished == {r.request_id: 1 for r in reqs}
    assert seen.streamed == {r.request_id: r.text for r in reqs}
    assert not engine.has_unfinished() and engine.step() == []


SEEDED = SamplingParams(max_tokens=6, temperature=1.0, seed=1234, ignore_eos=True)


def raise_as_run_returns(engine, reqs):
    real = engine.runner.run

    def run(chunks):
        del engine.runner.run
        real(chunks)  # sampled: the generators drew
        raise KeyboardInterrupt

    engine.runner.run = run


@pytest.mark.parametrize("patch", [raise_as_run_returns, at_tolist],
                         ids=["forward", "tolist"])
def test_a_seeded_row_taken_back_draws_the_same_token_again(model_dir, patch):
    """Before the fix the rows taken back drew again from generators already advanced."""
    def run(interrupt):
        engine = make(model_dir)
        reqs = [engine.add_request(p, SEEDED) for p in PROMPTS]
        engine.step()
        engine.step()
        if interrupt:
            patch(engine, reqs)
            with pytest.raises(KeyboardInterrupt):
                engine.step()
        drain(engine)
        return [r.output_ids for r in reqs]

    assert run(True) == run(False)


def test_an_interrupt_after_a_failed_copy_drops_only_the_plans_waited_on():
    """Before the fix the plans put back in `pending` (maybe still copying) were handed to
    `drop_transfer` at once, and the copy's RuntimeError was lost."""

    class Copy:  # a `Transfer` that has ended (t1 failed)
        def __init__(self, name: str) -> None:
            self.name = name
            self.error = RuntimeError(f"copy {name} failed") if name == "t1" else None

        def done(self) -> bool:
            return True

    class Transfers:
        cuda = False

        def __init__(self) -> None:
            self.waited: list[str] = []
            self.submitted = 3

        def submit(self, plan):
            self.submitted += 1
            return Copy(f"t{self.submitted}")

        def wait(self, t) -> None:
            if t.error is not None:
                raise t.error
            if t.name == "t2" and "t1" not in self.waited:
                self.waited.append("t1")
                raise KeyboardInterrupt
            self.waited.append(t.name)

    class Plan(str):  # a `TransferPlan` that loads nothing, named
        loads = ()

    class Manager:
        def __init__(self) -> None:
            self.dropped: list[str] = []
            self.plans = iter([Plan("p4"), Plan("p5")])

        def take_transfers(self):
            return next(self.plans)

        def drop_transfer(self, plan):
            self.dropped.append(plan)
            return {}

    manager, transfers = Manager(), Transfers()
    copies = HostCopies(manager, transfers, on_cut=lambda cut: None)
    copies.pending = [(Copy(f"t{i}"), Plan(f"p{i}")) for i in (1, 2, 3)]
    with pytest.raises(KeyboardInterrupt):
        copies.settle()
    assert manager.dropped == ["p1"]  # before the fix: p1 to p4, p2 to p4 still pending
    assert [p for _, p in copies.pending] == ["p2", "p3", "p4"]
    # The next wait waits on every plan (none dropped as done by `submit`), then fails as
    # the interrupted one would have: every plan after the failed copy is dropped.
    with pytest.raises(RuntimeError, match="copy t1 failed"):  # before the fix: no error
        copies.settle()
    assert transfers.waited == ["t1", "t2", "t3", "t4", "t5"]
    assert manager.dropped == ["p1", "p2", "p3", "p4", "p5"] and copies.pending == []


@pytest.mark.parametrize("kw", [
    {"block_size": 0}, {"block_size": "16"}, {"kv_memory_bytes": -5},
    {"host_memory_bytes": -1}, {"policy": "no-such-policy"}, {"policy": "belady"},
    {"scheduler": "no-such"}, {"scheduler_params": {"bogus": 1}},
    {"scheduler_params": {"max_num_seqs": 2}},
])
def test_bad_engine_arguments_are_refused_before_the_weights_load(monkeypatch, kw):
    """Before the fix these loaded the weights first, some then raising a ValueError."""
    import kvsaga.engine.engine as engine_module

    def load_model(*args, **kwargs):
        raise AssertionError("the weights loaded")

    monkeypatch.setattr(engine_module, "load_checkpoint", load_model)
    name = next(iter(kw)) if "scheduler_params" not in kw else next(iter(kw["scheduler_params"]))
    with pytest.raises(InvalidRequest, match=name.replace("_", ".")):
        LLMEngine("any", device="cpu", progress=False, **kw)


@pytest.mark.parametrize("kw,name", [({"kv_memory_bytes": 1}, "kv_memory_bytes"),
                                     ({"host_memory_bytes": 1}, "host_memory_bytes")])
def test_a_budget_that_holds_no_block_is_refused_before_the_weights_load(model_dir,
                                                                        monkeypatch, kw, name):
    """The block's bytes come from the checkpoint's config: a budget below one block was
    refused only once the weights had loaded (seconds to minutes, and kvsaga-serve then blamed
    the model)."""
    from kvsaga.engine.weights import Checkpoint

    def weights(*args, **kwargs):
        raise AssertionError("the weights loaded before the budget was checked")

    monkeypatch.setattr(Checkpoint, "weights", weights)
    c = open_checkpoint(model_dir).config
    block = KVSpec(c.num_layers, c.num_kv_heads, c.head_dim, "float32", 16).bytes_per_block
    with pytest.raises(InvalidRequest, match=f"^{name}=1 holds no KV block of {block} bytes$"):
        make(model_dir, **kw)
