"""A failed LLMEngine construction leaves a caller's policy instance free for the retry.

Review s49 (gatediff finding 3): the engine's manager bound the policy before the steps that
can still fail (the KV storage allocation, a CUDA OOM; the host tier; graph capture; the
scheduler), so after such a failure the instance pointed at a manager no caller received,
and the natural retry with a smaller `kv_memory_bytes` was refused as "already bound"."""

from __future__ import annotations

import pytest

from kvsaga.engine import engine as engine_module
from kvsaga.engine.engine import LLMEngine
from kvsaga.errors import InvalidRequest
from kvsaga.policy import make_policy


def test_a_retry_after_the_kv_allocation_failed_takes_the_same_policy(tiny_model_dir,
                                                                      monkeypatch):
    model = str(tiny_model_dir("llama_gqa4_untied"))
    real = engine_module.KVStorage

    def oom(*a, **k):
        raise MemoryError("simulated: out of memory allocating the KV cache")

    monkeypatch.setattr(engine_module, "KVStorage", oom)
    p = make_policy("lru")
    with pytest.raises(MemoryError, match="simulated"):
        LLMEngine(model, device="cpu", progress=False, policy=p, kv_memory_bytes=8 << 20)
    assert p.view is None
    monkeypatch.setattr(engine_module, "KVStorage", real)
    engine = LLMEngine(model, device="cpu", progress=False, policy=p, kv_memory_bytes=4 << 20)
    assert p.view is engine.manager and engine.manager.pool.observer is p


def test_a_bad_scheduler_setting_after_the_bind_leaves_the_policy_unbound(tiny_model_dir,
                                                                          monkeypatch):
    """The scheduler is the last thing built: its failure unbinds the policy too."""
    def refuse(*a, **k):
        raise InvalidRequest("simulated: the scheduler refused its settings")

    monkeypatch.setattr(engine_module, "Scheduler", refuse)
    p = make_policy("saga")
    with pytest.raises(InvalidRequest, match="simulated"):
        LLMEngine(str(tiny_model_dir("llama_gqa4_untied")), device="cpu", progress=False,
                  policy=p, kv_memory_bytes=4 << 20)
    assert p.view is None
