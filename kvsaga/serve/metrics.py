"""Prometheus metrics of kvsaga-serve, in a registry of their own (one per app, so tests can
build several apps in one process).

Cache and queue figures are read at scrape time from the snapshot that the engine thread
publishes after each step (the manager itself is never touched from the scrape thread);
latency histograms are observed by the request handlers.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from kvsaga.serve.async_engine import AsyncEngine

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _EngineCollector(Collector):
    """Turns the engine snapshot into gauges and counters at each scrape."""

    def __init__(self, engine: AsyncEngine, model_name: str, compat: str | None) -> None:
        self.engine = engine
        self.model_name = model_name
        self.compat = compat

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
        host_hits = getattr(st, "host_hit_tokens", 0)
        offloaded = getattr(st, "offloaded_blocks", 0)
        loaded = getattr(st, "loaded_blocks", 0)
        src = CounterMetricFamily("kvsaga:cached_tokens", "Prompt tokens served from the cache, "
                                  "by the tier they came from.", labels=[*labels, "source"])
        src.add_metric([*lv, "gpu"], st.hit_tokens - host_hits)
        src.add_metric([*lv, "host"], host_hits)
        yield src
        ev = CounterMetricFamily("kvsaga:evictions", "KV blocks evicted from the GPU tier, by "
                                 "policy and action.", labels=[*labels, "policy", "action"])
        ev.add_metric([*lv, snap.policy, "discard"], st.num_evicted_blocks - offloaded)
        ev.add_metric([*lv, snap.policy, "offload"], offloaded)
        yield ev
        off = CounterMetricFamily("kvsaga:offload_bytes", "KV bytes copied between GPU and host.",
                                  labels=[*labels, "direction"])
        off.add_metric([*lv, "gpu_to_host"], offloaded * snap.bytes_per_block)
        off.add_metric([*lv, "host_to_gpu"], loaded * snap.bytes_per_block)
        yield off
        yield gauge("kvsaga:host_blocks_cached", "KV blocks held in the host tier.",
                    getattr(st, "num_host_cached_blocks", 0))
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
        if self.compat == "vllm":
            # The names that vLLM-aware routers and dashboards already read.
            yield gauge("vllm:num_requests_running", "Requests in the running batch.",
                        snap.num_running)
            yield gauge("vllm:num_requests_waiting", "Requests queued for the batch.",
                        snap.num_waiting)
            yield gauge("vllm:kv_cache_usage_perc", "Share of KV blocks in use (0-1).", st.usage)
            info = InfoMetricFamily("vllm:cache_config", "KV cache configuration.")
            info.add_metric([], {"block_size": str(snap.block_size),
                                 "num_gpu_blocks": str(st.num_gpu_blocks),
                                 "enable_prefix_caching": "True",
                                 "eviction_policy": snap.policy})
            yield info


class ServerMetrics:
    """The app's registry and the histograms that handlers observe.

    Args:
        engine: whose snapshot the gauges read.
        model_name: the `model_name` label.
        compat: "vllm" to add vLLM's metric names as well.
    """

    def __init__(self, engine: AsyncEngine, model_name: str, compat: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(engine, model_name, compat))
        self.ttft = Histogram(
            "kvsaga:time_to_first_token_seconds", "Time from arrival to the first token.",
            registry=self.registry, buckets=_TTFT_BUCKETS,
        )
        self.itl = Histogram(
            "kvsaga:inter_token_latency_seconds", "Time between successive tokens.",
            registry=self.registry, buckets=_ITL_BUCKETS,
        )
        self.e2e = Histogram(
            "kvsaga:e2e_request_latency_seconds", "Time from arrival to the last token.",
            registry=self.registry, buckets=_TTFT_BUCKETS,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
