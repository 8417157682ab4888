"""An offline `LLM` call whose requests all wait for admission sleeps between steps instead
of spinning: the workflow scheduler holds a new session back while a paused one may return
(up to `idle_admit_s`), and before the fix the call stepped the engine thousands of times a
second meanwhile, each step returning nothing. Counted in steps, not timed."""

from __future__ import annotations

import pytest

from kvsaga.engine.admission_wait import AdmissionBackoff
from kvsaga.engine.llm import LLM
from kvsaga.engine.sampling import SamplingParams

GREEDY = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
FIRST = "the first agent reads the repository and plans a change to the parser " * 2
SECOND = "a second agent starts a new task on the web and looks for the answer " * 2


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def test_a_call_waiting_for_admission_sleeps_instead_of_spinning(model_dir):
    probe = LLM(str(model_dir), device="cpu", progress=False, kv_memory_bytes=4 * 2**20)
    bytes_per_block = probe.engine.spec.bytes_per_block
    alone = probe.session("s1").generate(SECOND, GREEDY).token_ids
    # 20 blocks: once the first session pauses on its tool, the workflow scheduler holds
    # the second back for it until the GPU has idled `idle_admit_s` with it away.
    llm = LLM(str(model_dir), device="cpu", progress=False,
              kv_memory_bytes=20 * bytes_per_block, max_num_seqs=8,
              scheduler_params={"idle_admit_s": 0.5})
    first = llm.session("s0")
    first.generate(FIRST, GREEDY)
    first.tool_call("search", expected_s=60.0)
    steps = {"all": 0, "empty": 0}
    real = llm.engine.step

    def step():
        out = real()
        steps["all"] += 1
        steps["empty"] += llm.engine.last_step_idle
        return out

    llm.engine.step = step
    second = llm.session("s1").generate(SECOND, GREEDY)
    assert second.token_ids == alone
    # It did wait (the scheduler held it back), for half a second: a backoff doubling
    # from 1 ms to 50 ms takes ~15 idle steps (before the fix: thousands).
    assert 0 < steps["empty"] < 100
    assert steps["all"] - steps["empty"] == GREEDY.max_tokens
    llm.engine.manager.check_integrity()


class Engine:
    """What the backoff reads: a clock, the last step's time and the wake time."""

    def __init__(self, now: float, last_step: float, wake: float) -> None:
        self.now, self.last_step_time, self.wake_time = now, last_step, wake

    def clock(self) -> float:
        return self.now


def test_the_backoff_doubles_to_its_cap_and_stops_at_the_wake_time():
    backoff = AdmissionBackoff(0.05)
    idle = Engine(now=10.0, last_step=10.0, wake=float("inf"))
    waits = [backoff.next_wait(idle) for _ in range(8)]
    assert waits == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05]
    # A wake time ahead cuts the wait short; one already acted on by the step does not.
    assert backoff.next_wait(Engine(now=10.0, last_step=10.0, wake=10.01)) == pytest.approx(0.01)
    assert backoff.next_wait(Engine(now=10.0, last_step=10.0, wake=9.0)) == 0.05
    # Its time has come: step again at once, and no wait is counted.
    counted = backoff.num_waits
    assert backoff.next_wait(Engine(now=10.02, last_step=10.0, wake=10.01)) == 0.0
    assert backoff.num_waits == counted
    backoff.reset()
    assert backoff.next_wait(idle) == 0.001


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_a_cap_that_is_not_positive_is_refused(bad):
    with pytest.raises(ValueError, match="max_wait_s"):
        AdmissionBackoff(bad)
