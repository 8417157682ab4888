"""An interrupt (Ctrl-C in a notebook that drives `LLMEngine` and carries on) that lands
inside `step()` must leave the engine able to step on, with the same greedy tokens.

Before the fix, one landing while `HostCopies.wait` blocked on a copy lost the plans not yet
waited on: the next step's forward read blocks the copy thread was still writing (other
tokens, no error). One landing in the output loop, after the forward pass, lost the sampled
token of the rows not yet handled while their K/V stayed counted: every later step raised
`num_tokens must be a positive int, got 0` until the request was aborted.
"""

from __future__ import annotations

import itertools
import threading

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.host_copies import HostCopies
from kvsaga.engine.sampling import SamplingParams
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
    assert [p.loads for _, p in engine.copies.pending]  # before the fix: nothing pending
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
