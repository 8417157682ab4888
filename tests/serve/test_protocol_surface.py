"""The OpenAI protocol surface (protofix lane): what kvsaga-serve cannot honour is refused by
name rather than dropped, nullable fields take null, errors name the request field, and
logprobs carry each token's own bytes."""

from __future__ import annotations

import json

import httpx
import pytest

from kvsaga.engine.tokenizer import Tokenizer
from kvsaga.serve.errors import APIError
from kvsaga.serve.protocol import (
    ChatCompletionRequest,
    TextOffsets,
    chat_logprobs,
    completion_logprobs,
)
from kvsaga.serve.routes.completions import render_chat

from .conftest import MODEL, TOOL_TEMPLATE, LiveServer

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
TEXT = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
TOOLS = [{"type": "function", "function": {"name": "read", "parameters": {}}}]
CALL = {"id": "c1", "type": "function",
        "function": {"name": "read", "arguments": '{"path": "a.py"}'}}
CALLED = [{"role": "user", "content": "fix it"},
          {"role": "assistant", "content": None, "tool_calls": [CALL]},
          {"role": "tool", "tool_call_id": "c1", "content": "ok"}]


def _post(server: LiveServer, body: dict, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=30)


def _error(r: httpx.Response) -> dict:
    assert r.status_code == 400, r.text
    return r.json()["error"]


def test_tools_and_tool_calls_the_template_never_reads_are_refused(server: LiveServer):
    """The tiny model's template (like SmolLM2's) reads neither `tools` nor `tool_calls`:
    both were dropped silently, so the model answered without seeing them."""
    err = _error(_post(server, {**CHAT, "tools": TOOLS}))
    assert err["param"] == "tools" and "chat template cannot render tools" in err["message"]
    err = _error(_post(server, {**CHAT, "messages": CALLED}))
    assert err["param"] == "messages.1.tool_calls"
    assert "chat template cannot render tool_calls" in err["message"]
    # Nothing to drop: an empty list of tools or of calls is served.
    assert _post(server, {**CHAT, "tools": []}).status_code == 200
    empty = [CALLED[0], {"role": "assistant", "content": "x", "tool_calls": []}]
    assert _post(server, {**CHAT, "messages": empty}).status_code == 200
    server.wait_idle()


def test_tool_call_arguments_reach_the_template_as_json_objects(tool_server: LiveServer):
    """OpenAI sends `arguments` as a JSON string; `arguments | tojson` in a tool-aware
    template encoded it a second time (escaped quotes). It is parsed first, as vLLM does."""
    r = _post(tool_server, {**CHAT, "messages": CALLED, "tools": TOOLS})
    assert r.status_code == 200, r.text
    expected = ('<tools>{"type": "function", "function": {"name": "read", "parameters": {}}}'
                '</tools><s>user: fix it</s><s>assistant: <call>read {"path": "a.py"}</call>'
                '</s><s>tool: ok</s>')
    ids = tool_server.call(lambda e: e.tokenizer.encode(expected, add_special_tokens=False))
    assert r.json()["usage"]["prompt_tokens"] == len(ids)
    # Arguments the model wrote malformed stay in the history: served (as {}), not a 400
    # that would fail every later turn of the session.
    bad = json.loads(json.dumps(CALLED))
    bad[1]["tool_calls"][0]["function"]["arguments"] = '{"path": '
    assert _post(tool_server, {**CHAT, "messages": bad}).status_code == 200
    tool_server.wait_idle()


def _render(tiny_dir, source: str | dict, messages: list, tools: list | None = None) -> str:
    """`render_chat` for the tiny tokenizer behind the chat template `source` (or the
    named templates)."""
    tok = Tokenizer(Tokenizer.from_hf_dir(tiny_dir).backend, chat_template=source)
    return render_chat(tok, ChatCompletionRequest(model=MODEL, messages=messages, tools=tools))


def test_tools_render_with_a_tool_use_template(tiny_dir):
    """A model with named templates (Hermes-style "default" and "tool_use"): with tools HF
    renders "tool_use". Only the "default" one was kept and judged, which never reads
    `tools`, so the request was refused (400 "cannot render tools")."""
    named = {"default": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
             "tool_use": TOOL_TEMPLATE}
    chat = [{"role": "user", "content": "fix it"}]
    assert _render(tiny_dir, named, chat) == "fix it"
    assert _render(tiny_dir, named, chat, TOOLS).startswith(
        '<tools>{"type": "function", "function": {"name": "read"')


@pytest.mark.parametrize(("arguments", "rendered", "warned"), [
    ('{"path": "a.py"}', '{"path": "a.py"}', False),
    ("", "{}", False),  # a call without parameters
    ("  ", "{}", False),
    (None, "{}", False),
    ("{'path': 'a.py'}", "{}", True),  # malformed by the model
    ('{"path": ', "{}", True),
    ('["a.py"]', "{}", True),  # JSON, but not an object
])
def test_empty_or_malformed_tool_call_arguments_render_as_an_empty_object(
        tiny_dir, caplog, arguments, rendered, warned):
    """Empty or malformed `arguments` were a 400. The model wrote them and the history
    carries them into every later turn, so the whole session failed; as vLLM does, they
    render as {}, and a malformed one is warned about, naming its message."""
    history = json.loads(json.dumps(CALLED))
    history[1]["tool_calls"][0]["function"]["arguments"] = arguments
    with caplog.at_level("WARNING", logger="kvsaga.serve"):
        text = _render(tiny_dir, TOOL_TEMPLATE, history, TOOLS)
    assert f"<call>read {rendered}</call>" in text
    named = [m for m in caplog.messages if "messages[1].tool_calls[0].function.arguments" in m]
    assert bool(named) == warned


# As Llama 3.1's and Mistral v0.3's templates do: `'tool_calls' in message` means a call.
ONE_CALL_TEMPLATE = (
    "{% for m in messages %}{% if 'tool_calls' in m %}{% if m.tool_calls | length != 1 %}"
    "{{ raise_exception('one tool call per turn') }}{% endif %}"
    "<call>{{ m.tool_calls[0].function.name }}</call>{% else %}{{ m['content'] }}{% endif %}"
    "{% endfor %}"
)


def test_an_empty_tool_calls_list_is_dropped(tiny_dir):
    """`tool_calls: []` (no calls, as some clients send every assistant turn) reached the
    template as a key, and a template that tests `'tool_calls' in message` rejected the
    turn (422); it is dropped, as vLLM does."""
    chat = [{"role": "user", "content": "x"},
            {"role": "assistant", "content": "y", "tool_calls": []},
            {"role": "user", "content": "z"}]
    assert _render(tiny_dir, ONE_CALL_TEMPLATE, chat) == "xyz"
    assert _render(tiny_dir, ONE_CALL_TEMPLATE, CALLED) == "fix it<call>read</call>ok"


def test_tools_are_refused_where_the_template_reads_only_a_message_key_named_tools(tiny_dir):
    """A template that reads a system message's `tools` key (Phi-4-mini style) but never
    the `tools` variable counted as reading it, and top-level tools were dropped silently."""
    source = ("{% for m in messages %}{% if 'tools' in m %}{{ m['tools'] }}{% endif %}"
              "{{ m['content'] }}{% endfor %}")
    with pytest.raises(APIError) as e:
        _render(tiny_dir, source, [{"role": "user", "content": "x"}], TOOLS)
    assert e.value.status == 400 and e.value.body()["error"]["param"] == "tools"


@pytest.mark.parametrize(("field", "value", "path"), [
    ("functions", [{"name": "f", "parameters": {}}], "/v1/chat/completions"),
    ("function_call", {"name": "f"}, "/v1/chat/completions"),
    ("modalities", ["text", "audio"], "/v1/chat/completions"),
    ("audio", {"voice": "alloy", "format": "wav"}, "/v1/chat/completions"),
    ("prediction", {"type": "content", "content": "x"}, "/v1/chat/completions"),
    ("reasoning_effort", "low", "/v1/chat/completions"),
    ("min_p", 0.1, "/v1/chat/completions"),
    ("repetition_penalty", 1.2, "/v1/completions"),
    ("min_tokens", 3, "/v1/completions"),
])
def test_known_fields_the_engine_cannot_honour_are_refused_by_name(
        server: LiveServer, field, value, path):
    body = {**(CHAT if "chat" in path else TEXT), field: value}
    err = _error(_post(server, body, path))
    assert err["param"] == field and field in err["message"]


def test_no_op_values_are_served_and_unknown_fields_warned_once(server: LiveServer, caplog,
                                                                 warn_once_reset):
    no_ops = {"min_p": 0, "repetition_penalty": 1.0, "modalities": ["text"],
              "function_call": "auto", "functions": [], "skip_special_tokens": True}
    assert _post(server, {**CHAT, **no_ops}).status_code == 200
    with caplog.at_level("WARNING", logger="kvsaga.serve"):
        for body, path in ((CHAT, "/v1/chat/completions"), (TEXT, "/v1/completions")) * 2:
            r = _post(server, {**body, "frobnicate_level": 3}, path)
            assert r.status_code == 200, r.text
    warned = [m for m in caplog.messages if "frobnicate_level" in m]
    assert len(warned) == 1 and "unknown" in warned[0]
    server.wait_idle()


def test_stop_token_ids_end_generation(server: LiveServer):
    """A common vLLM extra: it was ignored (the answer ran to max_tokens)."""
    body = {**TEXT, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    first = _post(server, {**body, "logprobs": 0}, "/v1/completions").json()["choices"][0]
    assert first["finish_reason"] == "length"
    # The first generated token that is a whole character: its id is its text's encoding.
    k, token = next((k, t) for k, t in enumerate(first["logprobs"]["tokens"])
                    if t and not t.startswith("bytes:"))
    ids = server.call(lambda e: e.tokenizer.encode(token, add_special_tokens=False))
    assert len(ids) == 1
    r = _post(server, {**body, "stop_token_ids": ids}, "/v1/completions").json()
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] <= k + 1
    # As vLLM: the stop token's text is not in the text (its id is counted in the usage).
    if r["usage"]["completion_tokens"] == k + 1:
        assert r["choices"][0]["text"] == first["text"][: first["logprobs"]["text_offset"][k]]
    err = _error(_post(server, {**body, "stop_token_ids": list(range(65))}, "/v1/completions"))
    assert err["param"] == "stop_token_ids"
    server.wait_idle()


def test_stop_list_is_capped(server: LiveServer):
    """Every stop string is checked per token on the engine thread all requests share."""
    assert _post(server, {**CHAT, "stop": ["a", "b", "c", "d" * 256]}).status_code == 200
    for stop in (["a", "b", "c", "d", "e"], "x" * 257, ["a", "y" * 257]):
        err = _error(_post(server, {**CHAT, "stop": stop}))
        assert err["param"] == "stop"
    server.wait_idle()


def test_explicit_null_means_the_default_where_openai_allows_null(server: LiveServer):
    for field in ("n", "stream", "logprobs"):
        r = _post(server, {**CHAT, field: None})
        assert r.status_code == 200, (field, r.text)
    for field in ("n", "stream", "echo"):
        r = _post(server, {**TEXT, field: None}, "/v1/completions")
        assert r.status_code == 200, (field, r.text)
    server.wait_idle()


@pytest.mark.parametrize(("body", "path", "param", "words"), [
    ({**CHAT, "stop": ""}, "/v1/chat/completions", "stop", "non-empty"),
    ({**CHAT, "stop": 5}, "/v1/chat/completions", "stop", "str or list[str]"),
    ({**TEXT, "prompt": [1.5]}, "/v1/completions", "prompt", "list[int]"),
    ({**CHAT, "messages": [{"role": "user", "content": 5}]}, "/v1/chat/completions",
     "messages.0.content", "str or list[ContentPart]"),
])
def test_errors_name_the_request_field(server: LiveServer, body, path, param, words):
    """They named internals: "SamplingParams.stop" with no param, union branch tags
    (`stop.str`) as the param."""
    err = _error(_post(server, body, path))
    assert err["param"] == param and words in err["message"]
    assert "SamplingParams" not in err["message"]


def _emoji_case(tiny_dir) -> tuple[Tokenizer, str, list[int]]:
    tok = Tokenizer.from_hf_dir(tiny_dir)
    text = "a😀b"
    return tok, text, tok.encode(text, add_special_tokens=False)


def test_logprob_bytes_of_partial_characters_are_the_tokens_own(tiny_dir):
    """The tiny tokenizer is byte-level: the emoji is four tokens, none a character. Their
    `bytes` were those of U+FFFD each (the single token decoded); now the concatenated
    bytes are the text's, and such tokens are spelled "bytes:\\xNN"."""
    tok, text, ids = _emoji_case(tiny_dir)
    assert len(ids) == 6
    lp = chat_logprobs(tok, ids, [-1.0] * 6, [[(i, -1.0)] for i in ids])
    assert b"".join(bytes(e.bytes) for e in lp.content) == text.encode()
    assert lp.content[1].token == "bytes:\\xf0" and lp.content[0].token == "a"
    assert [e.top_logprobs[0].bytes for e in lp.content] == [e.bytes for e in lp.content]


def test_completion_logprobs_offsets_and_distinct_alternatives(tiny_dir):
    tok, text, ids = _emoji_case(tiny_dir)
    offsets = TextOffsets(tok, [], 2)  # after an echoed prompt of two characters
    top = [[(ids[1], -1.0), (ids[2], -2.0), (ids[3], -3.0)]] * 6
    lp = completion_logprobs(tok, ids[:3], [-1.0] * 3, top[:3], offsets)
    lp2 = completion_logprobs(tok, ids[3:], [-1.0] * 3, top[3:], offsets)  # the next chunk
    assert lp.text_offset + lp2.text_offset == [2, 3, 3, 3, 3, 4]
    # Three alternatives, three keys (was one: U+FFFD), and the sampled "a" (legacy
    # top_logprobs hold the sampled token too).
    assert len(lp.top_logprobs[0]) == 4 and "a" in lp.top_logprobs[0]
