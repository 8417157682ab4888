"""Session 51 mutation testing of kvsaga-serve (findings/s51/mutserve.md): the /metrics
exposition (`kvsaga.serve.metrics`) over a stand-in engine whose figures all differ, so a
series that reads the wrong figure shows it. Each test kills a mutant that the suite let
live (the live tests run a tiny model whose host tier, loads and idle time are zero)."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from kvsaga.engine.engine import EngineStats
from kvsaga.engine.step_times import KINDS, PHASES, StepTimes
from kvsaga.manager_types import CacheStats
from kvsaga.serve.metrics import ServerMetrics


def _stats() -> EngineStats:
    cache = CacheStats(num_gpu_blocks=100, num_free_blocks=11, num_used_blocks=13,
                       num_evictable_blocks=17, queried_tokens=1000, hit_tokens=600,
                       num_evicted_blocks=40, num_running_sessions=3, num_paused_sessions=5,
                       num_host_blocks=50, num_host_cached_blocks=19, host_hit_tokens=250,
                       offloaded_blocks=7, loaded_blocks=9, prefetched_blocks=2,
                       kept_on_host_blocks=4)
    times = StepTimes(steps={k: i + 1 for i, k in enumerate(KINDS)},
                      seqs={k: 10 * (i + 1) for i, k in enumerate(KINDS)},
                      tokens={k: 100 * (i + 1) for i, k in enumerate(KINDS)},
                      seconds={k: {p: 0.5 for p in PHASES} for k in KINDS})
    return EngineStats(cache=cache, num_waiting=2, num_running=6, num_preemptions=8,
                       policy="lru", block_size=16, bytes_per_block=1024, step_times=times)


def _metrics(compat: str | None = "vllm") -> tuple[ServerMetrics, SimpleNamespace]:
    """Over a stand-in for what the collector reads of `AsyncEngine`."""
    engine = SimpleNamespace(snapshot=_stats(), governor=None, idle_s=12.5)
    return ServerMetrics(engine, "m", compat), engine


def _samples(text: bytes) -> dict[tuple, float]:
    """{(sample name, sorted labels without model_name): value}."""
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_name"))
            out[(s.name, labels)] = s.value
    return out


def test_engine_figures_each_come_from_their_own_field():
    """Killed mutants: cached tokens from the GPU counted with the host's (hit - host_hit
    left out); host-to-GPU bytes from the offloaded blocks; vLLM's prompt tokens from the
    hits; evictable blocks from the free ones; cache_config's GPU blocks; the preemptions
    and the idle seconds fixed; the step families left out."""
    m, _ = _metrics()
    s = _samples(m.render())
    assert s[("kvsaga:cached_tokens_total", (("source", "gpu"),))] == 350
    assert s[("kvsaga:cached_tokens_total", (("source", "host"),))] == 250
    assert s[("kvsaga:offload_bytes_total", (("direction", "host_to_gpu"),))] == 9 * 1024
    assert s[("kvsaga:offload_bytes_total", (("direction", "gpu_to_host"),))] == 7 * 1024
    assert s[("vllm:prompt_tokens_total", ())] == 1000
    assert s[("kvsaga:kv_blocks_evictable", ())] == 17
    assert s[("kvsaga:kv_blocks_free", ())] == 11
    assert s[("kvsaga:num_preemptions_total", ())] == 8
    assert s[("vllm:num_preemptions_total", ())] == 8
    assert s[("kvsaga:engine_idle_seconds_total", ())] == 12.5
    info = [k for k in s if k[0] == "vllm:cache_config_info"]
    assert len(info) == 1 and ("num_gpu_blocks", "100") in info[0][1], info
    assert ("block_size", "16") in info[0][1]
    for i, kind in enumerate(KINDS):
        assert s[("kvsaga:engine_steps_total", (("kind", kind),))] == i + 1
        assert s[("kvsaga:engine_step_tokens_total", (("kind", kind),))] == 100 * (i + 1)
    assert s[("kvsaga:engine_step_seconds_total", (("kind", "mixed"), ("phase", "forward")))] \
        == 0.5


def test_a_latency_observed_several_times_is_counted_each_time():
    """Killed mutants: `observe(seconds, times)` recording one sample; the inter-token and
    end-to-end histograms not counting generated tokens and finished requests (the
    periodic status line and `generation_tokens` read those counts)."""
    m, _ = _metrics()
    m.ttft.observe(0.02)
    m.itl.observe(0.003, times=4)
    m.e2e.observe(1.5)
    assert m.counts.generation_tokens == 5
    assert m.counts.finished_requests == 1
    s = _samples(m.render())
    assert s[("kvsaga:inter_token_latency_seconds_count", ())] == 4
    assert s[("vllm:time_per_output_token_seconds_count", ())] == 4
    assert s[("kvsaga:inter_token_latency_seconds_bucket", (("le", "0.005"),))] == 4
    assert s[("kvsaga:time_to_first_token_seconds_count", ())] == 1
    assert s[("kvsaga:e2e_request_latency_seconds_count", ())] == 1
    assert s[("kvsaga:generation_tokens_total", ())] == 5
