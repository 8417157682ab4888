"""What the session-50 hand-back tests share: a prompt, greedy sampling and a tiny engine."""

from __future__ import annotations

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams

PROMPT = [(7 + 13 * i) % 250 + 3 for i in range(50)]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def tiny_engine(tiny_model_dir, **kw) -> LLMEngine:
    """The tiny GQA model on CPU with 4 MiB of KV (a few dozen blocks)."""
    return LLMEngine(str(tiny_model_dir("llama_gqa4_untied")), device="cpu", progress=False,
                     kv_memory_bytes=4 << 20, **kw)

