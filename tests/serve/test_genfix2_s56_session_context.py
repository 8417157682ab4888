"""Session 56 lane genfix2 (findings/s56/diffgen.md LOW-1): kvsaga-serve records a session's
context up to what the returned text holds, as AgentSession does (`TokenContext.after`).

Since a stop token's text left the returned text (e8ff66fb), a session step recorded with its
whole output matched a next prompt built from the returned text only up to the prompt: the
answer's exact ids were dropped and the answer re-tokenized from text (cached tokens lost
where the model's ids are not the normal tokenization of its text). Tiny model, scripted
sampler (the one request running says the script token by token)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from kvsaga.engine.sampling import SamplerOutput
from kvsaga.serve.app import build_app

from .conftest import MODEL, LiveServer, make_engine, settings

SCRIPT: list[int] = []  # what the next request says (set by each test)


@pytest.fixture(scope="module")
def scripted(tiny_dir: Path) -> Iterator[LiveServer]:
    engine = make_engine(tiny_dir)

    def sample(logits, params, gens=None):
        (req,) = engine.requests.values()
        return SamplerOutput(torch.tensor([SCRIPT[len(req.output_ids)]]), torch.zeros(1))

    engine.runner.sampler = sample
    with LiveServer(build_app(engine, settings())) as s:
        yield s


def _post(server: LiveServer, path: str, body: dict) -> dict:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _tokens(server: LiveServer, sid: str):
    ctx = server.app.state.server.serving().sessions.get(f"anon/{sid}")
    assert ctx is not None
    return ctx.tokens


def _ids(server: LiveServer, text: str) -> list[int]:
    return server.app.state.server.serving().sessions.tokenizer.encode(
        text, add_special_tokens=False)


def test_a_stop_token_ended_step_keeps_the_answers_ids_for_the_next_prompt(scripted):
    SCRIPT[:] = _ids(scripted, "xab")
    stop = SCRIPT[2]
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 8, "session_id": "g2-stop",
            "stop_token_ids": [stop]}
    out = _post(scripted, "/v1/completions", body)
    assert out["choices"][0]["text"] == "xa" and out["choices"][0]["finish_reason"] == "stop"
    tokens = _tokens(scripted, "g2-stop")
    nxt = "hi" + "xa" + " more"
    covered, ids = tokens.known_prefix(nxt)
    # Old: only the prompt ("hi") matched: the context's text held the stop token's "b".
    assert covered == len("hixa")
    assert ids == tokens.token_ids[: len(tokens.token_ids) - 1]
    assert ids[-2:] == SCRIPT[:2]
    SCRIPT[:] = _ids(scripted, "yz")
    out2 = _post(scripted, "/v1/completions", {**body, "prompt": nxt, "stop_token_ids": None,
                                               "max_tokens": 2})
    assert out2["usage"]["prompt_tokens"] == len(ids) + len(_ids(scripted, " more"))
    scripted.wait_idle()


def test_a_stop_string_ended_step_keeps_the_ids_before_the_cut(scripted):
    SCRIPT[:] = _ids(scripted, "xaSTOPq")
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 8, "session_id": "g2-str",
            "stop": ["STOP"]}
    out = _post(scripted, "/v1/completions", body)
    assert out["choices"][0]["text"] == "xa"
    covered, ids = _tokens(scripted, "g2-str").known_prefix("hixa more")
    assert covered == len("hixa") and ids[-2:] == SCRIPT[:2]
    scripted.wait_idle()


def test_a_chat_steps_eos_stays_in_the_context(scripted):
    """Guard (passes on the old code too): a chat step's EOS closes the assistant's turn, as
    the chat template renders the answer the client sends back; it stays."""
    eos = scripted.app.state.server.serving().sessions.tokenizer.eos_token_ids[0]
    SCRIPT[:] = _ids(scripted, "xa") + [eos]
    out = _post(scripted, "/v1/chat/completions",
                {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                 "max_tokens": 8, "session_id": "g2-chat"})
    assert out["choices"][0]["message"]["content"] == "xa"
    tokens = _tokens(scripted, "g2-chat")
    assert tokens.token_ids[-1] == eos and tokens.kept_len == 0
    scripted.wait_idle()
