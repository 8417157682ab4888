"""kvsaga-serve's `stop_reason`, as vLLM's OpenAI server gives it (0.32, measured:
findings/s57/servestop.md): the stop string that matched or the stop token id that ended
the answer, null for an EOS (even one listed in stop_token_ids, unless `ignore_eos`) and
for a length finish. Completions carry it on every choice, streamed chunks too (null
until the end); chat responses on their choice, chat streams on the finishing chunk only.
Two stop strings completing at the same character: the one listed first. Tiny model,
scripted sampler (the one request running says the script token by token)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from kvsaga.engine.sampling import SamplerOutput
from kvsaga.serve.app import build_app

from .conftest import MODEL, LiveServer, make_engine, settings

SCRIPT: list[int] = []  # what the next request says (set by each test)
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture(scope="module")
def scripted(tiny_dir: Path) -> Iterator[LiveServer]:
    engine = make_engine(tiny_dir)

    def sample(logits, params, gens=None):
        (req,) = engine.requests.values()
        return SamplerOutput(torch.tensor([SCRIPT[len(req.output_ids)]]), torch.zeros(1))

    engine.runner.sampler = sample
    with LiveServer(build_app(engine, settings())) as s:
        yield s


def _ids(server: LiveServer, text: str) -> list[int]:
    return server.app.state.server.serving().sessions.tokenizer.encode(
        text, add_special_tokens=False)


def _eos(server: LiveServer) -> int:
    return server.app.state.server.serving().sessions.tokenizer.eos_token_ids[0]


def _body(path: str, **fields) -> dict:
    prompt = ({"messages": [{"role": "user", "content": "hi"}]} if path == CHAT
              else {"prompt": "hi"})
    return {"model": MODEL, "max_tokens": 8, **prompt, **fields}


def _post(server: LiveServer, path: str, body: dict) -> dict:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _stream(server: LiveServer, path: str, body: dict) -> list[dict]:
    """The choices of the stream's chunks, as sent."""
    choices = []
    with httpx.stream("POST", f"{server.url}{path}", json={**body, "stream": True},
                      timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices += json.loads(line[6:])["choices"]
    return choices


def _text(choice: dict) -> str:
    return choice["message"]["content"] if "message" in choice else choice["text"]


def _delta(choice: dict) -> str:
    return choice["delta"].get("content") or "" if "delta" in choice else choice["text"]


def _cases(server: LiveServer) -> list[tuple[list[int], dict, str, str, object]]:
    """(script, request fields, text, finish_reason, stop_reason)."""
    say = _ids(server, "xaSTOPq")
    eos = _eos(server)
    return [
        (say, {"stop": ["STOP"]}, "xa", "stop", "STOP"),
        (say, {"stop_token_ids": [say[2]]}, "xa", "stop", say[2]),
        (_ids(server, "xa") + [eos], {}, "xa", "stop", None),
        # The EOS listed as a stop token still ends as the EOS (vLLM checks it first) ...
        (_ids(server, "xa") + [eos], {"stop_token_ids": [eos]}, "xa", "stop", None),
        # ... but as a stop token where the EOS is ignored.
        (_ids(server, "xa") + [eos], {"stop_token_ids": [eos], "ignore_eos": True}, "xa",
         "stop", eos),
        (say, {"max_tokens": 3, "stop": ["Q"]}, "xaS", "length", None),
    ]


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_the_response_says_what_ended_it(scripted, path):
    for script, fields, text, finish, reason in _cases(scripted):
        SCRIPT[:] = script
        (choice,) = _post(scripted, path, _body(path, **fields))["choices"]
        got = (_text(choice), choice["finish_reason"], choice["stop_reason"])
        assert got == (text, finish, reason), fields
        assert type(choice["stop_reason"]) is type(reason)  # an id stays a JSON number
    scripted.wait_idle()


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_a_stream_says_it_in_its_last_chunk(scripted, path):
    for script, fields, text, finish, reason in _cases(scripted):
        SCRIPT[:] = script
        choices = _stream(scripted, path, _body(path, **fields))
        *running, last = choices
        assert "".join(_delta(c) for c in choices) == text, fields
        assert (last["finish_reason"], last["stop_reason"]) == (finish, reason), fields
        for c in running:  # completions: null until the end; chat: left out (vLLM's)
            assert c["finish_reason"] is None
            assert c.get("stop_reason", "absent") == ("absent" if path == CHAT else None)
    scripted.wait_idle()


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
@pytest.mark.parametrize(("stop", "text"), [(["b", "ab"], "xa"), (["ab", "b"], "x")])
def test_two_stop_strings_ending_together_go_by_list_order(scripted, path, stop, text):
    """ "b" completes "b" and "ab" at once: the first listed cuts (vLLM's rule; kvsaga cut
    at the earliest start, "x", whatever the order)."""
    SCRIPT[:] = _ids(scripted, "xabq")
    (choice,) = _post(scripted, path, _body(path, stop=stop))["choices"]
    assert (_text(choice), choice["stop_reason"]) == (text, stop[0])
    choices = _stream(scripted, path, _body(path, stop=stop))
    assert "".join(_delta(c) for c in choices) == text
    assert choices[-1]["stop_reason"] == stop[0]
    scripted.wait_idle()
