"""`LLM.generate`'s cleanup after a failure aborts every request of the call even when one
abort raises (review s50 diff-engine, finding 3): it stopped at that abort, and the call's
later requests stayed in the engine, holding blocks, to run inside the next call."""

from __future__ import annotations

import pytest

from kvsaga.engine.llm import LLM
from kvsaga.engine.sampling import SamplingParams
from kvsaga.policy import make_policy

PROMPT = [(7 + 13 * i) % 250 + 3 for i in range(50)]


def test_a_failing_abort_in_the_cleanup_does_not_orphan_the_calls_later_requests(
        tiny_model_dir):
    p = make_policy("lru")
    llm = LLM(str(tiny_model_dir("llama_gqa4_untied")), device="cpu", progress=False,
              kv_memory_bytes=4 << 20, max_num_batched_tokens=32, policy=p)
    real, left = p.session_ended, [2]

    def session_ended(session, *a, **k):  # fails twice for the first prompt's session
        if session.session_id == "oneshot-req-0" and left[0]:
            left[0] -= 1
            raise RuntimeError("session_ended failed (simulated)")
        return real(session, *a, **k)
    p.session_ended = session_ended
    # The first prompt ends at its 2nd token (its hand-back raises: the step raises) while
    # the second is still prefilling in chunks; the cleanup's abort of the first retries
    # its hand-back, which raises again.
    greedy = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    with pytest.raises(RuntimeError, match="simulated"):
        llm.generate([PROMPT[:10], PROMPT * 2], greedy)
    e = llm.engine
    assert e.requests == {}  # the second prompt's request was aborted too
    assert not e.scheduler.has_work and not e.scheduler.running
    e.manager.check_integrity()
    out = llm.generate([PROMPT[:20]], greedy)  # (retries the first's hand-back: it works)
    assert out[0].finish_reason == "length"
    assert not e._ended and e.manager.stats().num_used_blocks == 0


@pytest.mark.parametrize("exc", [ValueError("the caller's on_output bug"), KeyboardInterrupt()])
def test_a_failing_abort_in_the_cleanup_does_not_replace_the_callers_error(tiny_model_dir, exc):
    """(review s50 diff-engine2, finding 4) The cleanup's abort error replaced the call's
    own error (a Ctrl-C became the hook's RuntimeError); now it is a note on it."""
    p = make_policy("lru")
    llm = LLM(str(tiny_model_dir("llama_gqa4_untied")), device="cpu", progress=False,
              kv_memory_bytes=4 << 20, policy=p)
    real, left = p.session_ended, [0]

    def session_ended(session, *a, **k):
        if left[0]:
            left[0] -= 1
            raise RuntimeError("session_ended failed (simulated)")
        return real(session, *a, **k)
    p.session_ended = session_ended

    def on_output(out):
        left[0] = 1  # the cleanup's first abort raises
        raise exc
    greedy = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    with pytest.raises(type(exc)) as info:
        llm.generate([PROMPT[:20], PROMPT[:30]], greedy, on_output=on_output)
    assert info.value is exc
    assert any("session_ended failed (simulated)" in n for n in exc.__notes__)
    e = llm.engine
    assert e.requests == {}  # every request of the call was stopped
    out = llm.generate([PROMPT[:10]], greedy)  # (retries the pending hand-back: it works)
    assert out[0].finish_reason == "length"
    assert not e._ended and e.manager.stats().num_used_blocks == 0
    e.manager.check_integrity()
