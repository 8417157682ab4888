"""The resume signal through kvsaga-serve: the next request of a paused session whose
blocks went to the host tier makes the engine prefetch them before the step runs, and the
answer is the one a server without offload gives."""

from __future__ import annotations

import random
import time
from pathlib import Path

from kvsaga.engine.engine import EngineStats
from kvsaga.serve.app import build_app
from tests.engine.helpers import OffloadSessionBlocksOnly

from .conftest import MODEL, LiveServer, make_engine, settings

FIRST = " ".join(["agent"] * 8)  # ~50 tokens: 3 full blocks
FILLER = list(range(60, 180))  # 120 tokens: with 2 decoded, the whole 8-block GPU tier


def _agent_run(srv: LiveServer) -> tuple[list[str], int, EngineStats, EngineStats]:
    """Step, a tool pause while a one-shot request fills the GPU tier, and the next step.

    Returns:
        The two steps' texts, the second's cached tokens, and the engine's stats before and
        after the second step.
    """
    c = srv.client()
    greedy = {"model": MODEL, "temperature": 0}
    a = c.completions.create(prompt=FIRST, max_tokens=12, **greedy, extra_body={
        "session_id": "s1", "ignore_eos": True,
        "kvsaga": {"tool": "run_tests", "expected_s": 30.0}})
    c.completions.create(prompt=FILLER, max_tokens=2, **greedy, extra_body={"ignore_eos": True})
    srv.wait_idle()
    before = srv.call(lambda e: e.stats())
    b = c.completions.create(prompt=FIRST + a.choices[0].text + " result ok.", max_tokens=12,
                             **greedy, extra_body={"session_id": "s1", "ignore_eos": True})
    srv.wait_idle()
    after = srv.call(lambda e: e.stats())
    texts = [a.choices[0].text, b.choices[0].text]
    return texts, b.usage.prompt_tokens_details.cached_tokens, before, after


def test_next_request_prefetches_offloaded_session_and_answers_the_same(tiny_dir: Path):
    bpb = make_engine(tiny_dir, kv_memory_bytes=2**20).spec.bytes_per_block
    with LiveServer(build_app(make_engine(tiny_dir), settings())) as srv:
        reference, ref_cached, _, _ = _agent_run(srv)
    assert ref_cached >= 48
    rng = random.Random(1)
    engine = make_engine(tiny_dir, kv_memory_bytes=8 * bpb, host_memory_bytes=16 * bpb,
                         policy=OffloadSessionBlocksOnly(),
                         transfer_delay=lambda: time.sleep(0.01 + rng.random() / 100))
    with LiveServer(build_app(engine, settings())) as srv:
        texts, cached, before, after = _agent_run(srv)
    assert before.cache.offloaded_blocks >= 3 and before.cache.prefetched_blocks == 0
    # The hint loaded the session's blocks back before its step looked them up: all of its
    # hits were on the GPU tier.
    assert after.cache.prefetched_blocks >= 3
    assert after.cache.host_hit_tokens == before.cache.host_hit_tokens
    assert cached >= 48
    assert texts == reference
