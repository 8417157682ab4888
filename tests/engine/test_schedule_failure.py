"""A core scheduler that raises inside `Scheduler.schedule`, after it had slots allocated:
the adapter's per-step maps (keyed by request id) are emptied, the slots no pass will write
are taken back (as for a failed forward pass), and the engine steps on to the same tokens.
Before the fix the maps kept that step's entries, keyed by id(request), and the allocations
stayed counted as computed."""

from __future__ import annotations

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
from tests.engine.helpers import drain

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
PROMPT = [(7 + 13 * i) % 250 + 3 for i in range(50)]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def make(model_dir) -> LLMEngine:
    return LLMEngine(str(model_dir), device="cpu", progress=False, kv_memory_bytes=4 * 2**20,
                     max_num_batched_tokens=24)


@pytest.fixture(scope="module")
def reference(model_dir) -> list[int]:
    engine = make(model_dir)
    req = engine.add_request(PROMPT, GREEDY)
    drain(engine)
    return req.output_ids


@pytest.mark.parametrize("failing", [1, 2, 5], ids=["first-chunk", "second-chunk", "decode"])
def test_a_raising_core_schedule_is_taken_back(model_dir, reference, failing):
    engine = make(model_dir)
    adapter = engine.scheduler
    real, calls, keys = adapter.core.schedule, [0], []

    def schedule(now, executor):
        out = real(now, executor)
        calls[0] += 1
        if calls[0] == failing:
            keys.append(set(executor._chunks))
            raise RuntimeError("a bug in the core scheduler")
        return out

    adapter.core.schedule = schedule
    req = engine.add_request(PROMPT, GREEDY)
    for _ in range(failing - 1):
        engine.step()
    known = engine.manager.sessions.get(req.session_id)
    computed = known.num_computed if known is not None else 0
    with pytest.raises(RuntimeError, match="core scheduler"):
        engine.step()
    assert adapter._chunks == {} and adapter._decoded == {}
    assert engine.manager.num_computed_tokens(req.session_id) == computed
    engine.manager.check_integrity()
    drain(engine)
    assert req.output_ids == reference
    engine.manager.check_integrity()
    assert engine.manager.stats().num_used_blocks == 0
    assert keys == [{req.request_id}]  # keyed by request id, not id(request)
