"""Chat and text completions through the official openai client: plain and streamed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import openai
import pytest

from kvsaga.serve.app import build_app
from kvsaga.serve.protocol import ChatCompletionRequest

from .conftest import MODEL, LiveServer, make_engine, settings

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
    assert httpx.get(f"{server.url}/health", timeout=60).json() == {"status": "ok"}
    text = httpx.get(f"{server.url}/metrics", timeout=60).text
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


def test_chat_logprobs_plain_and_streamed(client: openai.OpenAI, server: LiveServer):
    kw = dict(model=MODEL, messages=CHAT, max_tokens=6, temperature=0, logprobs=True,
              top_logprobs=3, extra_body={"ignore_eos": True})
    r = client.chat.completions.create(**kw)
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].logprob == entry.logprob
        # A token holding part of a character is spelled by its bytes (as vLLM does).
        raw = bytes(entry.bytes)
        try:
            assert entry.token == raw.decode()
        except UnicodeDecodeError:
            assert entry.token == "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
    joined = b"".join(bytes(e.bytes) for e in content)
    assert joined.decode("utf-8", "replace") == r.choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [
        (e.token, round(e.logprob, 4)) for e in content]
    plain = {k: v for k, v in kw.items() if k not in ("logprobs", "top_logprobs")}
    assert client.chat.completions.create(**plain).choices[0].logprobs is None
    # top_logprobs without logprobs: refused, as OpenAI and vLLM refuse it (it was ignored)
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client.chat.completions.create(**{**kw, "logprobs": False})
    server.wait_idle()


def test_completion_echo_and_logprobs(client: openai.OpenAI, server: LiveServer):
    prompt = "echo this prompt"
    kw = dict(model=MODEL, prompt=prompt, max_tokens=5, temperature=0,
              extra_body={"ignore_eos": True})
    plain = client.completions.create(**kw).choices[0].text
    echoed = client.completions.create(**kw, echo=True).choices[0].text
    assert echoed == prompt + plain
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        **kw, echo=True, stream=True) if c.choices)
    assert streamed == echoed
    lp = client.completions.create(**kw, logprobs=2).choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(len(t) == 2 for t in lp.top_logprobs) and lp.text_offset[0] == 0
    with pytest.raises(openai.BadRequestError, match="echo with logprobs"):
        client.completions.create(**kw, echo=True, logprobs=1)
    server.wait_idle()


def test_unset_sampling_fields_take_the_models_generation_config(tiny_dir: Path, tmp_path):
    model = tmp_path / "with-gen"
    shutil.copytree(tiny_dir, model)
    (model / "generation_config.json").write_text(json.dumps({"temperature": 0.0, "top_k": 5}))
    app = build_app(make_engine(model), settings())
    with LiveServer(app):
        srv = app.state.server.serving()
        body = ChatCompletionRequest(model=MODEL, messages=CHAT)
        p = srv._params(body, 10, None)
        assert (p.temperature, p.top_k, p.top_p) == (0.0, 5, 1.0)
        p = srv._params(ChatCompletionRequest(model=MODEL, messages=CHAT, temperature=0.7), 10, 4)
        assert (p.temperature, p.top_k, p.max_tokens) == (0.7, 5, 4)
