"""/metrics: open by default (or behind the key), `model_name` on every series, the vLLM
names that routers and dashboards read; the periodic status line of the log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from kvsaga import KVCacheManager, KVSpec
from kvsaga.serve import metrics
from kvsaga.serve.app import build_app
from kvsaga.serve.stats_log import StatsLogger
from tests.serve.conftest import MODEL, LiveServer, make_engine, settings
from tests.serve.test_session_race import _Hold, _queued, _run, _sessions, _until

# What llm-d's endpoint picker, production-stack's router and vLLM's Grafana dashboard read.
VLLM_NAMES = [
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc", "vllm:prefix_cache_queries", "vllm:prefix_cache_hits",
    "vllm:gpu_prefix_cache_queries", "vllm:gpu_prefix_cache_hits", "vllm:prompt_tokens",
    "vllm:generation_tokens", "vllm:request_success", "vllm:num_preemptions",
    "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
    "vllm:time_per_output_token_seconds", "vllm:e2e_request_latency_seconds",
    "vllm:cache_config_info",
]


def _families(url: str) -> dict:
    text = httpx.get(f"{url}/metrics", timeout=60).text
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_every_series_is_labelled_and_vllm_names_are_there(server: LiveServer, client):
    r = client.completions.create(model=MODEL, prompt="metrics please", max_tokens=4,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 4
    fams = _families(server.url)
    for name in VLLM_NAMES:
        assert name in fams, name
    for fam in fams.values():
        if fam.name.startswith(("kvsaga:", "vllm:")):
            for sample in fam.samples:
                assert sample.labels.get("model_name") == MODEL, sample
    gen = fams["kvsaga:generation_tokens"].samples[0].value
    assert gen >= 4 and fams["vllm:generation_tokens"].samples[0].value == gen
    ttft = {s.name: s.value for s in fams["vllm:time_to_first_token_seconds"].samples}
    assert ttft["vllm:time_to_first_token_seconds_count"] >= 1


def test_metrics_auth_puts_metrics_behind_the_key(tiny_dir: Path):
    app = build_app(make_engine(tiny_dir), settings(api_keys=("k",), metrics_auth=True))
    with LiveServer(app) as s:
        assert httpx.get(f"{s.url}/metrics", timeout=60).status_code == 401
        ok = httpx.get(f"{s.url}/metrics", headers={"Authorization": "Bearer k"}, timeout=60)
        assert ok.status_code == 200
        assert httpx.get(f"{s.url}/health", timeout=60).status_code == 200


def test_status_line_reports_the_interval_and_stays_quiet_when_idle(server: LiveServer,
                                                                    client: openai.OpenAI):
    server.wait_idle()
    now = [0.0]
    aengine = server.app.state.engine
    logger = StatsLogger(aengine, server.app.state.server.metrics.counts,
                         clock=lambda: now[0])

    def line() -> str | None:  # as `StatsLogger.run` reads it: from a fresh snapshot
        server.call(aengine._publish)
        return logger.line()

    now[0] = 10.0
    line()  # absorbs whatever earlier tests did
    now[0] = 20.0
    assert line() is None  # idle: nothing to say
    prompt = "the same prompt, twice over, to hit the prefix cache on the second request"
    for _ in range(2):
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0,
                                  extra_body={"ignore_eos": True})
    server.wait_idle()
    now[0] = 30.0
    text = line()
    assert text is not None
    assert "generation throughput 1.0 tokens/s" in text  # 10 tokens in 10 s
    assert "running 0 reqs, waiting 0 reqs" in text
    rate = float(text.split("prefix cache hit rate ")[1].split("%")[0])
    assert 0 < rate < 100


def test_engine_time_split_by_kind_and_phase(server: LiveServer, client):
    before = _families(server.url)

    def value(fams, name, **labels):
        return sum(s.value for s in fams[name].samples
                   if all(s.labels.get(k) == v for k, v in labels.items()))

    client.completions.create(model=MODEL, prompt="where does the time go", max_tokens=5,
                              temperature=0, extra_body={"ignore_eos": True})
    server.wait_idle()
    after = _families(server.url)
    kinds = {s.labels["kind"] for s in after["kvsaga:engine_steps"].samples}
    assert kinds == {"decode", "prefill", "mixed", "empty"}
    phases = {s.labels["phase"] for s in after["kvsaga:engine_step_seconds"].samples}
    assert phases == {"schedule", "transfer", "forward", "output"}
    # Alone on the server: one prefill step samples the first token, four decodes the rest.
    steps = {k: value(after, "kvsaga:engine_steps", kind=k)
             - value(before, "kvsaga:engine_steps", kind=k) for k in kinds}
    assert steps["prefill"] >= 1 and steps["decode"] >= 4
    new_tokens = (value(after, "kvsaga:engine_step_tokens", kind="decode")
                  - value(before, "kvsaga:engine_step_tokens", kind="decode"))
    assert new_tokens >= 4
    fwd = (value(after, "kvsaga:engine_step_seconds", phase="forward")
           - value(before, "kvsaga:engine_step_seconds", phase="forward"))
    assert fwd > 0
    assert value(after, "kvsaga:engine_idle_seconds") >= value(before, "kvsaga:engine_idle_seconds")


def test_evictions_of_blocks_the_host_tier_holds_are_not_counted_as_discards():
    """`kvsaga:evictions{action="discard"}` was evicted minus offloaded blocks: a victim
    whose clean host copy made a new copy needless counted as a discard though it stays on
    the host and is hit there. Now it is `action="kept_on_host"`."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 4, clock=lambda: 0.0, num_host_blocks=8)
    a = [*range(12), 1]  # 3 full blocks and a tail of 1
    m.begin_step("a", a)
    m.allocate_slots("a", 13)
    m.finish_step("a")
    for sid, first in [("f", 100), ("g", 200)]:  # each pushes the cache out
        m.begin_step(sid, list(range(first, first + 16)))
        m.allocate_slots(sid, 16)
        m.end_session(sid)
        m.take_transfers()
        if sid == "f":  # a's 3 blocks offloaded, its tail discarded; back on the GPU
            assert m.prefetch("a") == 3  # (their host copies stay)
            m.take_transfers()
    st = m.stats()
    # g evicted a's 3 prefetched blocks (copies on the host already) and f's 4 (offloaded).
    assert (st.num_evicted_blocks, st.offloaded_blocks, st.kept_on_host_blocks) == (11, 7, 3)
    fam = metrics._evictions(st, "lru", ["model_name"], ["m"])
    by_action = {s.labels["action"]: s.value for s in fam.samples}
    assert by_action == {"discard": 1, "offload": 7, "kept_on_host": 3}  # before: discard 4
    assert m.begin_step("a", [*a, 5]).num_cached_tokens == 12  # all of a hit on the host



def test_request_success_counts_every_end_by_finished_reason(tiny_dir: Path):
    """A finished, a cut-off (its session ended while it queued) and a failed request are
    each counted under their `finished_reason`, kvsaga's and vLLM's name alike; before,
    only finished ones were, and only under vLLM's name."""
    engine = make_engine(tiny_dir)
    real_run, fail = engine.runner.run, []

    def run(chunks):
        if fail:
            fail.pop()
            raise RuntimeError("CUDA error: out of memory (simulated)")
        return real_run(chunks)

    engine.runner.run = run
    body = {"model": MODEL, "prompt": "count me", "max_tokens": 2, "ignore_eos": True}

    async def scenario(app, aengine, client) -> None:
        assert (await client.post("/v1/completions", json=body)).status_code == 200
        hold = _Hold(aengine)
        await hold.wait()
        try:
            cut = await _queued(aengine, client.post(
                "/v1/completions", json={**body, "session_id": "m"}), "the step")
            end = asyncio.create_task(client.post("/v1/sessions/m/end"))
            await _until(lambda: _sessions(app).get("anon/m") is None, "dropped the session")
        finally:
            hold.release.set()
        assert (await end).status_code == 200 and (await cut).status_code == 400
        fail.append(True)
        assert (await client.post("/v1/completions", json=body)).status_code == 500
        fams = {f.name: f for f in text_string_to_metric_families(
            (await client.get("/metrics")).text)}
        for name in ("kvsaga:request_success", "vllm:request_success"):
            got = {s.labels["finished_reason"]: s.value for s in fams[name].samples
                   if s.name.endswith("_total")}
            assert got == {"stop": 0, "length": 1, "abort": 1, "error": 1}, (name, got)

    _run(engine, scenario, metrics_compat="vllm")


async def _scrape(aengine, client) -> tuple[dict, object]:
    """The /metrics families and the manager's stats, read after a command on the engine
    thread (a scrape takes its figures on the engine thread, between steps)."""
    st = await aengine.call(lambda e: e.manager.stats())
    text = (await client.get("/metrics")).text
    return {f.name: f for f in text_string_to_metric_families(text)}, st


def _value(fams: dict, sample: str, **labels: str) -> float:
    """The value of the one sample named `sample` with these labels (besides model_name)."""
    name = sample.removesuffix("_total")
    got = [s.value for s in fams[name].samples
           if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(got) == 1, (sample, labels, fams[name].samples)
    return got[0]


def test_cache_and_session_figures_are_the_managers(tiny_dir: Path):
    """After a session's two steps (the second hits the first's context), the prefix-cache
    counters are the manager's queried and hit tokens under both names (a published
    benchmark figure reads them), KV usage is its used share of the blocks, and the session
    shows as paused. Only the names were checked: hits reporting the queries, usage
    reporting 1 - usage or the paused count reporting the running one all passed."""
    body = {"model": MODEL, "prompt": "a step of a session that comes back for more",
            "max_tokens": 4, "ignore_eos": True, "session_id": "m"}

    async def scenario(app, aengine, client) -> None:
        for _ in range(2):
            r = await client.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
        fams, st = await _scrape(aengine, client)
        assert 0 < st.hit_tokens < st.queried_tokens
        for prefix in ("kvsaga", "vllm"):
            assert _value(fams, f"{prefix}:prefix_cache_hits_total") == st.hit_tokens
            assert _value(fams, f"{prefix}:prefix_cache_queries_total") == st.queried_tokens
            assert (_value(fams, f"{prefix}:kv_cache_usage_perc")
                    == st.num_used_blocks / st.num_gpu_blocks)
        assert _value(fams, "vllm:gpu_prefix_cache_hits_total") == st.hit_tokens
        assert _value(fams, "vllm:gpu_cache_usage_perc") == st.num_used_blocks / st.num_gpu_blocks
        assert _value(fams, "kvsaga:sessions", state="paused") == 1
        assert _value(fams, "kvsaga:sessions", state="running") == 0
        assert _value(fams, "kvsaga:sessions_retained") == 1

    _run(make_engine(tiny_dir), scenario, metrics_compat="vllm")


def test_queue_figures_count_the_waiting_requests(tiny_dir: Path):
    """Requests added and not yet stepped are waiting, none running, under both names;
    `num_requests_waiting` reporting the running count passed every test."""
    body = {"model": MODEL, "prompt": "wait in line", "max_tokens": 2, "ignore_eos": True}
    n = 3

    async def scenario(app, aengine, client) -> None:
        hold = _Hold(aengine)
        await hold.wait()
        try:
            tasks = [asyncio.create_task(client.post("/v1/completions", json=body))
                     for _ in range(n)]
            await _until(lambda: aengine.num_in_flight == n, "queued the requests")
            # The scrape's snapshot is taken after the adds, before any step (the engine
            # thread runs its commands, then answers a scrape's refresh before a step).
            scrape = asyncio.create_task(client.get("/metrics"))
            await _until(lambda: aengine._refresh is not None, "asked for the scrape")
        finally:
            hold.release.set()
        fams = {f.name: f for f in text_string_to_metric_families((await scrape).text)}
        for prefix in ("kvsaga", "vllm"):
            assert _value(fams, f"{prefix}:num_requests_waiting") == n
            assert _value(fams, f"{prefix}:num_requests_running") == 0
        for t in tasks:
            assert (await t).status_code == 200

    _run(make_engine(tiny_dir), scenario, metrics_compat="vllm")


def test_preemptions_are_counted(tiny_dir: Path):
    """Three requests admitted together into a pool too small for their decodes (fcfs
    reserves no decode room): the scheduler preempts, and both names count it; vLLM's
    counter reporting 0 passed every test."""
    bytes_per_block = make_engine(tiny_dir).spec.bytes_per_block
    engine = make_engine(tiny_dir, kv_memory_bytes=7 * bytes_per_block, scheduler="fcfs")
    size = engine.spec.block_size
    # Each prompt fills 2 blocks but one token; 12 more tokens need a third block each.
    prompts = [list(range(i * 2 * size, (i + 1) * 2 * size - 1)) for i in range(3)]

    async def scenario(app, aengine, client) -> None:
        hold = _Hold(aengine)
        await hold.wait()
        try:
            tasks = [asyncio.create_task(client.post("/v1/completions", json={
                "model": MODEL, "prompt": p, "max_tokens": 12, "ignore_eos": True}))
                for p in prompts]
            await _until(lambda: aengine.num_in_flight == len(prompts), "queued the requests")
        finally:
            hold.release.set()
        for t in tasks:
            r = await t
            assert r.status_code == 200, r.text
        fams, _ = await _scrape(aengine, client)
        preempted = await aengine.call(lambda e: e.scheduler.num_preemptions)
        assert preempted >= 1
        for prefix in ("kvsaga", "vllm"):
            assert _value(fams, f"{prefix}:num_preemptions_total") == preempted

    _run(engine, scenario, metrics_compat="vllm")
