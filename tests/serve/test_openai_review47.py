"""The OpenAI surface review of session 47 (findings/s47/openai.md): logprob offsets past
special tokens, the sampled token in legacy top_logprobs, content parts joined by newlines,
tool_choice without tools, stream_options keys, unparsable bodies named, 64-bit seeds,
GET /v1/models/{id} and numeric strings refused."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch

from kvsaga.engine.detokenizer import IncrementalDetokenizer
from kvsaga.engine.sampling import SamplingParams
from kvsaga.engine.tokenizer import Tokenizer
from kvsaga.serve.protocol import ChatCompletionRequest, TextOffsets, completion_logprobs
from kvsaga.serve.routes.completions import render_chat

from .conftest import MODEL, LiveServer

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
TEXT = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
SPECIAL = ("<s>", "</s>")  # the tiny tokenizer's special tokens (ids 0 and 1)


def _post(server: LiveServer, body: dict, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def _error(r: httpx.Response, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def _check_offsets(text: str, lp: dict) -> int:
    """Each whole-character token of the text starts at its offset (a token holding part of
    a character is spelled "bytes:..."); a special token, not in the text, sits where the
    text goes on after it. Returns how many tokens after a special one were checked."""
    offsets = lp["text_offset"]
    assert offsets == sorted(offsets) and offsets[-1] <= len(text), (offsets, len(text))
    checked, after = 0, False
    for token, off in zip(lp["tokens"], offsets, strict=True):
        after = after or token in SPECIAL
        if token not in SPECIAL and not token.startswith("bytes:"):
            assert text[off:].startswith(token), (token, off, text[off:off + 20])
            checked += after
    return checked


def test_text_offsets_skip_the_special_tokens_the_text_skips(tiny_dir):
    """`</s>` and `<s>` mid-answer (as under ignore_eos) are left out of the text, but their
    spelling was counted: every later offset pointed past the text."""
    tok = Tokenizer.from_hf_dir(tiny_dir)
    enc = [tok.encode(t, add_special_tokens=False) for t in ("ab", "cd", "e")]
    ids = enc[0] + [1] + enc[1] + [0] + enc[2]
    prompt = tok.encode("x", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt)
    detok.add(ids)
    assert detok.text == "abcde"
    lp = completion_logprobs(tok, ids, [-1.0] * len(ids), None, TextOffsets(tok, prompt, 0))
    assert lp.text_offset == [0, 1, 2, 2, 3, 4, 4]
    assert _check_offsets(detok.text, lp.model_dump()) == 3


def test_text_offsets_past_a_special_token_generated_under_ignore_eos(server: LiveServer):
    """End to end: sampled answers that hold a special token before their end."""
    body = {**TEXT, "max_tokens": 64, "temperature": 2.0, "ignore_eos": True, "logprobs": 0}
    found = 0
    for seed in range(40):
        choice = _post(server, {**body, "seed": seed}, "/v1/completions").json()["choices"][0]
        if any(t in SPECIAL for t in choice["logprobs"]["tokens"][:-1]):
            found += 1
            assert _check_offsets(choice["text"], choice["logprobs"]) > 0
    assert found >= 3
    server.wait_idle()


def test_legacy_top_logprobs_hold_the_sampled_token(tiny_dir, server: LiveServer):
    """OpenAI's legacy API returns up to logprobs+1 entries, the sampled token's always; a
    sampled token outside the top k was missing, and logprobs=0 gave top_logprobs null."""
    tok = Tokenizer.from_hf_dir(tiny_dir)
    a, b, c = tok.encode("abc", add_special_tokens=False)
    lp = completion_logprobs(tok, [a, b], [-3.0, -0.5], [[(c, -1.0)], [(b, -0.5)]],
                             TextOffsets(tok, [], 0))
    assert lp.top_logprobs == [{"c": -1.0, "a": -3.0}, {"b": -0.5}]
    lp = completion_logprobs(tok, [a], [-3.0], None, TextOffsets(tok, [], 0))
    assert lp.top_logprobs == [{"a": -3.0}]
    body = {**TEXT, "max_tokens": 4, "logprobs": 0}
    got = _post(server, body, "/v1/completions").json()["choices"][0]["logprobs"]
    assert got["top_logprobs"] == [{t: v} for t, v in zip(got["tokens"],
                                                           got["token_logprobs"], strict=True)]
    server.wait_idle()


def test_text_content_parts_are_joined_by_newlines(tiny_dir):
    """They were joined with nothing: "Summarize this file.def f(): pass"."""
    tok = Tokenizer.from_hf_dir(tiny_dir)
    parts = [{"type": "text", "text": "Summarize this file."},
             {"type": "text", "text": "def f(): pass"}]
    body = ChatCompletionRequest(model=MODEL, messages=[{"role": "user", "content": parts}])
    assert "user: Summarize this file.\ndef f(): pass</s>" in render_chat(tok, body)


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "run_tests"}}])
def test_tool_choice_that_needs_tools_without_tools_is_400(server: LiveServer, choice):
    for tools in (None, []):
        err = _error(_post(server, {**CHAT, "tools": tools, "tool_choice": choice}))
        assert err["param"] == "tool_choice" and "tools" in err["message"]
    for choice in ("auto", "none"):
        assert _post(server, {**CHAT, "tool_choice": choice}).status_code == 200
    server.wait_idle()


def test_stream_options_keys_are_refused_or_warned_like_request_fields(server: LiveServer,
                                                                        caplog):
    """vLLM's continuous_usage_stats (usage in every chunk) was dropped silently."""
    body = {**CHAT, "stream": True}
    err = _error(_post(server, {**body, "stream_options": {
        "include_usage": True, "continuous_usage_stats": True}}))
    assert err["param"] == "stream_options.continuous_usage_stats"
    assert "not supported" in err["message"]
    ok = {"include_usage": True, "continuous_usage_stats": False, "sparkle_level": 2}
    with caplog.at_level("WARNING", logger="kvsaga.serve"):
        for _ in range(2):
            r = _post(server, {**body, "stream_options": ok})
            assert r.status_code == 200, r.text
    warned = [m for m in caplog.messages if "sparkle_level" in m]
    assert len(warned) == 1 and "stream_options.sparkle_level" in warned[0]
    assert not [m for m in caplog.messages if "continuous_usage_stats" in m]
    server.wait_idle()


def test_an_unparsable_body_says_why(server: LiveServer):
    """Both were "There was an error parsing the body"."""
    headers = {"content-type": "application/json"}
    url = f"{server.url}/v1/chat/completions"
    r = httpx.post(url, content=b'{"model": "\xff"}', headers=headers, timeout=60)
    err = _error(r)
    assert "not valid UTF-8" in err["message"] and "0xff at position 11" in err["message"]
    deep = b"[" * 100_000 + b"]" * 100_000
    err = _error(httpx.post(url, content=deep, headers=headers, timeout=60))
    assert "nested too deeply" in err["message"]


def _draws(seed: int) -> torch.Tensor:
    return torch.rand(8, generator=SamplingParams(seed=seed).make_generator())


def test_seeds_differing_above_bit_31_draw_differently():
    """torch's CPU generator reads 32 bits of the seed: these pairs drew the same."""
    for a, b in ((1, 2**32 + 1), (7, 2**40 + 7), (-1, 2**63 - 1), (5, -(2**63) + 5)):
        assert not torch.equal(_draws(a), _draws(b)), (a, b)
    # Seeds in [-2**32, 2**32) still draw as they did (as torch seeded with them).
    for seed in (0, 7, 2**32 - 1, -1, -(2**32)):
        assert torch.equal(_draws(seed), torch.rand(8, generator=torch.Generator()
                                                    .manual_seed(seed)))
    for seed in (-(2**63), 2**63 - 1):  # the whole int64 range still seeds
        _draws(seed)


def test_models_retrieve(server: LiveServer):
    """`client.models.retrieve` was a 404 "Not Found" (no such route)."""
    card = server.client().models.retrieve(MODEL)
    assert card.id == MODEL and card.object == "model"
    with pytest.raises(openai.NotFoundError) as e:
        server.client().models.retrieve("other/model")
    assert e.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(("field", "value", "kind"), [
    ("max_tokens", "2", "an integer"), ("temperature", "0.5", "a number"),
    ("seed", "3", "an integer"),
])
def test_a_numeric_string_for_a_number_field_is_400(server: LiveServer, field, value, kind):
    """pydantic's lax mode read "2" as 2 (OpenAI: "'2' is not of type 'integer'")."""
    err = _error(_post(server, {**CHAT, field: value}))
    assert err["param"] == field and f"expected {kind}, got a string" in err["message"]
    assert json.loads(_post(server, {**CHAT, "max_tokens": 2}).text)["choices"]
    server.wait_idle()
