"""Chat and text completions through the official openai client: plain and streamed."""

from __future__ import annotations

import httpx
import openai

from .conftest import MODEL, LiveServer

CHAT = [{"role": "user", "content": "Say something about caches."}]


def test_chat_completion(client: openai.OpenAI, server: LiveServer):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 0 and 1 <= u.completion_tokens <= 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens >= 0
    server.wait_idle()


def test_chat_stream_matches_plain(client: openai.OpenAI, server: LiveServer):
    msgs = [{"role": "user", "content": "Stream me a greedy answer."}]
    plain = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 10
    # The same prompt again: every full block of it is a hit.
    assert usage.prompt_tokens_details.cached_tokens >= (usage.prompt_tokens - 1) // 16 * 16
    server.wait_idle()


def test_completion_plain_and_stream(client: openai.OpenAI, server: LiveServer):
    r = client.completions.create(model=MODEL, prompt="The cache", max_tokens=6, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.usage.completion_tokens == 6
    stream = client.completions.create(model=MODEL, prompt="The cache", max_tokens=6,
                                       temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    ids = client.completions.create(model=MODEL, prompt=[0, 40, 41, 42], max_tokens=2)
    assert ids.usage.prompt_tokens == 4
    server.wait_idle()


def test_raw_sse_ends_with_done(server: LiveServer):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"


def test_models_health_metrics(client: openai.OpenAI, server: LiveServer):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "kvsaga:kv_cache_usage_perc", "kvsaga:prefix_cache_queries_total",
        "kvsaga:prefix_cache_hits_total",
        'kvsaga:cached_tokens_total{model_name="tiny",source="gpu"}',
        "kvsaga:evictions_total", "kvsaga:offload_bytes_total", "kvsaga:sessions",
        "kvsaga:num_requests_running", "kvsaga:num_requests_waiting",
        "kvsaga:time_to_first_token_seconds_bucket", "kvsaga:inter_token_latency_seconds_bucket",
        "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
        "vllm:cache_config_info",
    ):
        assert name in text, name
