"""Prometheus metrics of kvsaga-serve, in a registry of their own (one per app, so tests can
build several apps in one process).

Cache and queue figures are read from the engine thread's snapshot (`scrape`,
`AsyncEngine.fresh_snapshot`; the manager itself is never touched from the scrape thread):
taken for the scrape, so exact when read, where the thread is between steps (idle); the
last one at once where it is in a step, taken when it went idle or at most about a second
plus that step ago (kvsaga/serve/engine_snapshot.py); a scrape never waits for a step.
Latency histograms are observed by the request handlers. Every series carries the
`model_name` label, as vLLM's do.

`compat="vllm"` adds, under vLLM's names, the series that vLLM-aware routers (llm-d's
endpoint picker, production-stack's router) and the usual Grafana dashboards read: queue and
batch sizes, KV cache usage (current and pre-v1 names), prefix-cache queries and hits, token
counters, requests by `finished_reason` (`request_success`: stop, length, abort, error),
preemptions, TTFT / inter-token / end-to-end histograms and `cache_config_info`.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from kvsaga.manager_types import CacheStats
from kvsaga.serve.async_engine import AsyncEngine

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# Why a submitted request ended, as vLLM's `finished_reason` label names it: the engine's
# finish (stop, length), or the request cut off (abort: its client left or its session was
# ended) or failed (error: the engine failed, or stopped, while it ran).
FINISHED_REASONS = ("stop", "length", "abort", "error")


class TokenCounts:
    """Tokens and requests the handlers have seen, for the counters and the periodic log."""

    def __init__(self) -> None:
        self.generation_tokens = 0
        self.finished_requests = 0
        self.ended = dict.fromkeys(FINISHED_REASONS, 0)  # submitted requests, by reason


class _Latency:
    """One latency histogram under kvsaga's name and, with vLLM compat, vLLM's name(s) too;
    `observe` records into all of them (and counts what it is told to count)."""

    def __init__(self, registry: CollectorRegistry, names: list[str], doc: str,
                 buckets: tuple[float, ...], model_name: str, count: str | None,
                 counts: TokenCounts) -> None:
        self.children = [
            Histogram(n, doc, ["model_name"], registry=registry, buckets=buckets).labels(model_name)
            for n in names
        ]
        self.count = count
        self.counts = counts

    def observe(self, seconds: float, times: int = 1) -> None:
        """Record `seconds` `times` times (each counted)."""
        for _ in range(times):
            for h in self.children:
                h.observe(seconds)
        if self.count is not None:
            setattr(self.counts, self.count, getattr(self.counts, self.count) + times)


def _evictions(st: CacheStats, policy: str, labels: list[str],
               lv: list[str]) -> CounterMetricFamily:
    """`kvsaga:evictions` by action: `offload` (copied to the host tier), `kept_on_host`
    (the host tier held a clean copy already: none made, it stays there) and `discard` (no
    host copy). A victim with a host copy counted as a discard before `kept_on_host`."""
    ev = CounterMetricFamily("kvsaga:evictions", "KV blocks evicted from the GPU tier, by "
                             "policy and action.", labels=[*labels, "policy", "action"])
    ev.add_metric([*lv, policy, "discard"], st.discarded_blocks)
    ev.add_metric([*lv, policy, "offload"], st.offloaded_blocks)
    ev.add_metric([*lv, policy, "kept_on_host"], st.kept_on_host_blocks)
    return ev


class _EngineCollector(Collector):
    """Turns the engine snapshot into gauges and counters at each scrape."""

    def __init__(self, engine: AsyncEngine, model_name: str, compat: str | None,
                 counts: TokenCounts) -> None:
        self.engine = engine
        self.model_name = model_name
        self.compat = compat
        self.counts = counts

    def collect(self) -> Iterator:
        snap = self.engine.snapshot
        if snap is None:  # still loading
            return
        st = snap.cache
        labels = ["model_name"]
        lv = [self.model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(lv, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(lv, value)
            return c

        yield gauge("kvsaga:kv_cache_usage_perc", "Share of KV blocks in use (0-1).", st.usage)
        yield gauge("kvsaga:kv_blocks_total", "KV blocks in the GPU tier.", st.num_gpu_blocks)
        yield gauge("kvsaga:kv_blocks_used", "KV blocks referenced by running requests.",
                    st.num_used_blocks)
        yield gauge("kvsaga:kv_blocks_evictable", "Cached KV blocks nobody references.",
                    st.num_evictable_blocks)
        yield gauge("kvsaga:kv_blocks_free", "Empty KV blocks.", st.num_free_blocks)
        yield counter("kvsaga:prefix_cache_queries", "Prompt tokens looked up in the cache.",
                      st.queried_tokens)
        yield counter("kvsaga:prefix_cache_hits", "Prompt tokens found in the cache.",
                      st.hit_tokens)
        yield counter("kvsaga:generation_tokens", "Tokens generated.",
                      self.counts.generation_tokens)
        yield self._ended("kvsaga:request_success", labels, lv)
        host_hits = st.host_hit_tokens
        src = CounterMetricFamily("kvsaga:cached_tokens", "Prompt tokens served from the cache, "
                                  "by the tier they came from.", labels=[*labels, "source"])
        src.add_metric([*lv, "gpu"], st.hit_tokens - host_hits)
        src.add_metric([*lv, "host"], host_hits)
        yield src
        yield _evictions(st, snap.policy, labels, lv)
        off = CounterMetricFamily("kvsaga:offload_bytes", "KV bytes copied between GPU and host.",
                                  labels=[*labels, "direction"])
        off.add_metric([*lv, "gpu_to_host"], st.offloaded_blocks * snap.bytes_per_block)
        off.add_metric([*lv, "host_to_gpu"], st.loaded_blocks * snap.bytes_per_block)
        yield off
        yield gauge("kvsaga:host_blocks_cached", "KV blocks held in the host tier.",
                    st.num_host_cached_blocks)
        sess = GaugeMetricFamily("kvsaga:sessions", "Agent sessions by state.",
                                 labels=[*labels, "state"])
        sess.add_metric([*lv, "running"], st.num_running_sessions)
        sess.add_metric([*lv, "paused"], st.num_paused_sessions)
        yield sess
        yield gauge("kvsaga:sessions_retained", "Paused sessions whose KV is kept in the cache.",
                    st.num_paused_sessions)
        yield gauge("kvsaga:num_requests_running", "Requests in the running batch.",
                    snap.num_running)
        yield gauge("kvsaga:num_requests_waiting", "Requests queued for the batch.",
                    snap.num_waiting)
        yield counter("kvsaga:num_preemptions", "Requests preempted for lack of KV blocks.",
                      snap.num_preemptions)
        governor = self.engine.governor
        if governor is not None:  # a CPU engine under `--cpu-host auto`
            yield gauge("kvsaga:cpu_threads", "Threads of torch's team on the engine thread "
                        "(sized to the cores other processes leave).", governor.threads)
            yield gauge("kvsaga:cpu_foreign_cores", "Cores' worth of CPU other processes used "
                        "on the engine's cores, over the governor's last window.",
                        governor.foreign_cores)
            yield counter("kvsaga:cpu_thread_changes", "Times the governor resized the team.",
                          governor.changes)
            if governor.quota_cores is not None:  # a container's CPU limit
                yield gauge("kvsaga:cpu_quota_cores", "The CPU quota (cgroup CFS bandwidth) "
                            "of the server's process, in cores, at the governor's last "
                            "window; the team stays within it, rounded up to cores.",
                            governor.quota_cores)
        yield from self._steps(snap, labels, lv)
        if self.compat == "vllm":
            yield from self._vllm(snap, gauge, counter)

    def _steps(self, snap, labels: list[str], lv: list[str]) -> Iterator:
        """Where the engine thread's time goes (`kvsaga.engine.step_times`): steps, batch
        sizes and tokens by kind of step, step seconds by kind and phase, idle seconds."""
        times = snap.step_times
        fams = {
            "steps": ("kvsaga:engine_steps", "Engine steps, by kind (decode, prefill, "
                      "mixed, empty: the scheduler ran nothing).", times.steps),
            "seqs": ("kvsaga:engine_step_seqs", "Sequences run in engine steps, by kind "
                     "(divided by the steps: the mean batch).", times.seqs),
            "tokens": ("kvsaga:engine_step_tokens", "Tokens computed in engine steps, by "
                       "kind.", times.tokens),
        }
        for name, doc, values in fams.values():
            c = CounterMetricFamily(name, doc, labels=[*labels, "kind"])
            for kind, v in values.items():
                c.add_metric([*lv, kind], v)
            yield c
        sec = CounterMetricFamily("kvsaga:engine_step_seconds", "Wall seconds in engine "
                                  "steps, by kind and phase (schedule, transfer, forward, "
                                  "output).", labels=[*labels, "kind", "phase"])
        for kind, phases in times.seconds.items():
            for phase, v in phases.items():
                sec.add_metric([*lv, kind, phase], v)
        yield sec
        idle = CounterMetricFamily("kvsaga:engine_idle_seconds", "Wall seconds the engine "
                                   "thread waited with no unfinished request.", labels=labels)
        idle.add_metric(lv, self.engine.idle_s)
        yield idle

    def _ended(self, name: str, labels: list[str], lv: list[str]) -> CounterMetricFamily:
        """Submitted requests by `finished_reason`, as vLLM counts them (its aborted and
        failed requests too); summed over stop and length, the finished ones."""
        c = CounterMetricFamily(name, "Requests that ended, by finished_reason (stop, "
                                "length; abort: cut off; error: the engine failed).",
                                labels=[*labels, "finished_reason"])
        for reason, n in self.counts.ended.items():
            c.add_metric([*lv, reason], n)
        return c

    def _vllm(self, snap, gauge, counter) -> Iterator:
        """The gauges and counters under vLLM's names (its histograms are `_Latency`'s)."""
        st = snap.cache
        yield gauge("vllm:num_requests_running", "Requests in the running batch.",
                    snap.num_running)
        yield gauge("vllm:num_requests_waiting", "Requests queued for the batch.",
                    snap.num_waiting)
        yield gauge("vllm:kv_cache_usage_perc", "Share of KV blocks in use (0-1).", st.usage)
        yield gauge("vllm:gpu_cache_usage_perc", "Share of KV blocks in use (0-1; the name "
                    "before vLLM v1).", st.usage)
        yield counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the cache.",
                      st.queried_tokens)
        yield counter("vllm:prefix_cache_hits", "Prompt tokens found in the cache.",
                      st.hit_tokens)
        yield counter("vllm:gpu_prefix_cache_queries", "Prompt tokens looked up in the cache "
                      "(the name before vLLM 0.9).", st.queried_tokens)
        yield counter("vllm:gpu_prefix_cache_hits", "Prompt tokens found in the cache (the "
                      "name before vLLM 0.9).", st.hit_tokens)
        yield counter("vllm:prompt_tokens", "Prompt tokens looked up (prefilled or cached).",
                      st.queried_tokens)
        yield counter("vllm:generation_tokens", "Tokens generated.",
                      self.counts.generation_tokens)
        yield self._ended("vllm:request_success", ["model_name"], [self.model_name])
        yield counter("vllm:num_preemptions", "Requests preempted for lack of KV blocks.",
                      snap.num_preemptions)
        info = InfoMetricFamily("vllm:cache_config", "KV cache configuration.",
                                labels=["model_name"])
        info.add_metric([self.model_name], {"block_size": str(snap.block_size),
                             "num_gpu_blocks": str(st.num_gpu_blocks),
                             "enable_prefix_caching": "True",
                             "eviction_policy": snap.policy})
        yield info


class ServerMetrics:
    """The app's registry and the histograms that handlers observe.

    Args:
        engine: whose snapshot the gauges read.
        model_name: the `model_name` label of every series.
        compat: "vllm" to add vLLM's metric names as well.
    """

    def __init__(self, engine: AsyncEngine, model_name: str, compat: str | None = None) -> None:
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=True)
        self.counts = TokenCounts()
        self.registry.register(_EngineCollector(engine, model_name, compat, self.counts))
        vllm = compat == "vllm"

        def latency(name: str, vllm_names: list[str], doc: str, buckets, count: str | None):
            names = [f"kvsaga:{name}"] + ([f"vllm:{n}" for n in vllm_names] if vllm else [])
            return _Latency(self.registry, names, doc, buckets, model_name, count, self.counts)

        # The first token and each later one are each one generated token.
        self.ttft = latency("time_to_first_token_seconds", ["time_to_first_token_seconds"],
                            "Time from arrival to the first token.", _TTFT_BUCKETS,
                            "generation_tokens")
        self.itl = latency("inter_token_latency_seconds",
                           ["inter_token_latency_seconds", "time_per_output_token_seconds"],
                           "Time between successive tokens.", _ITL_BUCKETS, "generation_tokens")
        self.e2e = latency("e2e_request_latency_seconds", ["e2e_request_latency_seconds"],
                           "Time from arrival to the last token.", _TTFT_BUCKETS,
                           "finished_requests")

    def request_ended(self, reason: str) -> None:
        """Count a submitted request's end (`reason`: one of `FINISHED_REASONS`)."""
        self.counts.ended[reason] += 1

    def render(self) -> bytes:
        """The exposition text from the engine's last snapshot (`scrape` takes a new one)."""
        return generate_latest(self.registry)

    async def scrape(self) -> bytes:
        """The exposition text, the engine figures as fresh as `AsyncEngine.fresh_snapshot`
        gives them without waiting for a step."""
        await self.engine.fresh_snapshot()
        return self.render()
