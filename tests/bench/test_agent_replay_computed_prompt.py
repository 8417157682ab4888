"""bench/agent_replay.py's computed prompt tokens: the servers' own prefix-cache counters
(queries minus hits) differenced between the scrape after the warm-up and the one at the end,
so that recomputation after a preemption, which the responses' usage leaves out (its cached
count is fixed at a request's first schedule), is in kvsaga-serve's figure; vLLM's counter
counts first admissions only, which the figure and the table header say. Canned /metrics
texts, no server. Also: scraped seconds stay floats (they were int()ed)."""

from __future__ import annotations

from tests.bench.test_agent_replay import _load_script


def _mods():
    _load_script()  # puts bench/ (the replay package) on sys.path
    from replay import report, servers
    from replay.client import PolicyResult, StepRecord

    return report, servers, PolicyResult, StepRecord


def _result(n: int, **kw):
    _, _, PolicyResult, StepRecord = _mods()
    r = PolicyResult("x", **kw)
    for i in range(n):
        r.records.append(StepRecord(f"s{i}", 0, 0.0, 1.0, prompt_tokens=100, cached_tokens=0,
                                    completion_tokens=10))
        r.task_s.append(1.0)
    return r


KVSAGA_TEXT = """\
# HELP kvsaga:prefix_cache_queries_total Prompt tokens looked up in the cache.
# TYPE kvsaga:prefix_cache_queries_total counter
kvsaga:prefix_cache_queries_total{{model_name="replay"}} {q}
# HELP kvsaga:prefix_cache_hits_total Prompt tokens found in the cache.
# TYPE kvsaga:prefix_cache_hits_total counter
kvsaga:prefix_cache_hits_total{{model_name="replay"}} {h}
# HELP kvsaga:engine_step_seconds_total Wall seconds in engine steps.
# TYPE kvsaga:engine_step_seconds_total counter
kvsaga:engine_step_seconds_total{{model_name="replay",kind="decode",phase="forward"}} 12.75
kvsaga:engine_step_seconds_total{{model_name="replay",kind="prefill",phase="forward"}} 0.5
# HELP kvsaga:num_preemptions_total Requests preempted for lack of KV blocks.
# TYPE kvsaga:num_preemptions_total counter
kvsaga:num_preemptions_total{{model_name="replay"}} 3.0
"""

VLLM_TEXT = """\
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{{engine="0",model_name="replay"}} {q}
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{{engine="0",model_name="replay"}} {h}
# HELP vllm:request_queue_time_seconds Histogram of time spent in WAITING phase for request.
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_sum{{engine="0",model_name="replay"}} 3.25
vllm:request_queue_time_seconds_count{{engine="0",model_name="replay"}} 4.0
"""


def test_computed_prompt_tokens_from_the_servers_counters_over_the_replay() -> None:
    report, servers, _, _ = _mods()
    start = servers.parse_metrics(KVSAGA_TEXT.format(q=5.0, h=0.0), servers.KVSAGA_METRICS)
    end = servers.parse_metrics(KVSAGA_TEXT.format(q=1805.0, h=1200.0), servers.KVSAGA_METRICS)
    assert start["prefix_cache_query_tokens"] == 5.0
    assert end["engine_step_s"] == 13.25  # label sets summed
    # usage says 2 x (100 - 0) = 200 first-attempt misses; the server computed 600 (a
    # preempted step's recomputation is in its counters, not in the responses' usage)
    s = report.summarize(_result(2, engine="kvsaga", metrics=end, metrics_start=start), 0, 16)
    assert s["prefill_tokens"] == 200
    assert s["computed_prompt_tokens"] == (1805 - 5) - (1200 - 0) == 600
    assert s["computed_prompt_counts"] == "all attempts"
    assert s["engine_step_s"] == 13.25 and isinstance(s["engine_step_s"], float)
    assert s["preemptions"] == 3 and isinstance(s["preemptions"], int)

    v0 = servers.parse_metrics(VLLM_TEXT.format(q=2.0, h=0.0), servers.VLLM_METRICS)
    v1 = servers.parse_metrics(VLLM_TEXT.format(q=902.0, h=500.0), servers.VLLM_METRICS)
    sv = report.summarize(_result(2, engine="vllm", metrics=v1, metrics_start=v0), 0, 16)
    assert sv["computed_prompt_tokens"] == 400
    assert sv["computed_prompt_counts"] == "first admissions"
    assert sv["queue_s"] == 3.25
    # no start scrape: no figure rather than one with the warm-up in it
    assert "computed_prompt_tokens" not in report.summarize(
        _result(1, engine="kvsaga", metrics=end), 0, 16)


def test_the_counter_names_are_the_servers_own() -> None:
    """The names scraped are those kvsaga-serve exports (a counter family's samples end in
    _total) and those vLLM's PrometheusStatLogger registers."""
    _, servers, _, _ = _mods()
    from pathlib import Path

    src = (Path(__file__).resolve().parents[2] / "kvsaga/serve/metrics.py").read_text()
    for name in ("kvsaga:prefix_cache_queries", "kvsaga:prefix_cache_hits"):
        assert f'"{name}"' in src and f"{name}_total" in servers.KVSAGA_METRICS
    for name in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits"):
        assert f"{name}_total" in servers.VLLM_METRICS
    assert set(servers.COMPUTED_PROMPT_COUNTS) == {"kvsaga", "vllm"}


def test_table_header_says_what_the_computed_column_counts() -> None:
    report, _, _, _ = _mods()
    base = {"prefill_tokens": 10, "cached_share": 0.5, "step_latency_mean_s": 1.0,
            "step_latency_p95_s": 1.0, "task_time_mean_s": 1.0, "task_time_p95_s": 1.0,
            "errors": 0}
    k = {**base, "computed_prompt_tokens": 12, "computed_prompt_counts": "all attempts"}
    v = {**base, "computed_prompt_tokens": 10, "computed_prompt_counts": "first admissions"}
    head = report.markdown_table({"kvsaga-serve:ttl": k})[0]
    assert "prefill tok (first-attempt misses)" in head
    assert "computed prompt tok (all attempts)" in head
    both = report.markdown_table({"vllm": v, "kvsaga-serve:ttl": k})
    assert ("computed prompt tok (kvsaga-serve: all attempts; vLLM: first admissions, not "
            "comparable)") in both[0]
    assert "| vllm | 10 | 10 |" in both[2] and "| kvsaga-serve:ttl | 10 | 12 |" in both[3]
    assert "| old | 10 | - |" in report.markdown_table({"old": base})[2]
