"""`include_stop_str_in_output` (vLLM's request field, refused with a 400 before session
57): the stop string that ended the answer stays in its text, cut after it, not before; a
stop token's text stays too; nothing is held back from the stream (vLLM 0.32, measured:
findings/s57/servestop.md). The session's context then holds the kept text's ids, so the
next prompt, built from the text returned, reuses them all. Tiny model, scripted sampler
(the one request running says the script token by token)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from kvsaga.engine.sampling import SamplerOutput, SamplingParams
from kvsaga.errors import InvalidRequest
from kvsaga.serve.app import build_app

from .conftest import MODEL, LiveServer, make_engine, settings

SCRIPT: list[int] = []  # what the next request says (set by each test)


def _scripted(engine):
    def sample(logits, params, gens=None):
        (req,) = engine.requests.values()
        return SamplerOutput(torch.tensor([SCRIPT[len(req.output_ids)]]), torch.zeros(1))

    engine.runner.sampler = sample
    return engine


@pytest.fixture(scope="module")
def scripted(tiny_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(build_app(_scripted(make_engine(tiny_dir)), settings())) as s:
        yield s


def _ids(server: LiveServer, text: str) -> list[int]:
    return server.app.state.server.serving().sessions.tokenizer.encode(
        text, add_special_tokens=False)


def _post(server: LiveServer, body: dict, status: int = 200) -> dict:
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
    assert r.status_code == status, r.text
    return r.json()


def _body(**fields) -> dict:
    return {"model": MODEL, "prompt": "hi", "max_tokens": 8,
            "include_stop_str_in_output": True, **fields}


def test_the_stop_string_and_the_stop_token_stay_in_the_text(scripted):
    say = _ids(scripted, "xaSTOPq")
    eos = scripted.app.state.server.serving().sessions.tokenizer.eos_token_ids[0]
    cases = [
        (say, {"stop": ["STOP"]}, "xaSTOP", "STOP"),
        (say, {"stop": ["ST", "TO"]}, "xaST", "ST"),
        (say, {"stop_token_ids": [say[2]]}, "xaS", say[2]),  # ("S": its text kept)
        (_ids(scripted, "xa") + [eos], {}, "xa", None),  # (the EOS has no text)
        (say, {"stop": ["Q"], "max_tokens": 3}, "xaS", None),
    ]
    for script, fields, text, reason in cases:
        SCRIPT[:] = script
        (choice,) = _post(scripted, _body(**fields))["choices"]
        assert (choice["text"], choice["stop_reason"]) == (text, reason), fields
    scripted.wait_idle()


@pytest.mark.parametrize(("stop", "text"), [(["b", "ab"], "xab"), (["ab", "b"], "xab")])
def test_two_stop_strings_ending_together_keep_the_text_to_their_end(scripted, stop, text):
    SCRIPT[:] = _ids(scripted, "xabq")
    (choice,) = _post(scripted, _body(stop=stop))["choices"]
    assert (choice["text"], choice["stop_reason"]) == (text, stop[0])
    scripted.wait_idle()


def test_the_next_step_reuses_the_kept_stop_tokens_id(scripted):
    """The kept stop token's text is in the answer the client sends back: the session's
    context holds it, ids and text (as a stop token's, `held_text`, from which a raw next
    step continues, left it out: "hixa")."""
    SCRIPT[:] = _ids(scripted, "xaSTOPq")
    stop = SCRIPT[2]
    _post(scripted, _body(session_id="keep-tok", stop_token_ids=[stop]))
    ctx = scripted.app.state.server.serving().sessions.get("anon/keep-tok").tokens
    covered, ids = ctx.known_prefix("hixaS more")
    assert covered == len("hixaS") and ids[-3:] == SCRIPT[:3]
    assert ctx.held_text == "hixaS"  # (what a raw next step continues from)
    SCRIPT[:] = _ids(scripted, "STOP")
    _post(scripted, _body(session_id="keep-str", stop=["TO"]))
    ctx = scripted.app.state.server.serving().sessions.get("anon/keep-str").tokens
    covered, ids = ctx.known_prefix("hiSTO more")
    assert covered == len("hiSTO") and ids[-3:] == SCRIPT[:3]
    assert ctx.held_text == "hiSTO"
    scripted.wait_idle()


def test_a_kept_special_stop_token_is_not_in_the_context(scripted):
    """A special stop token (EOS under `ignore_eos`, listed in `stop_token_ids`) kept by the
    option has no text in the answer: the context ends at the answer's text as without
    the option, so the next prompt reuses the answer's ids (was: `held_text` "hixa</s>",
    only the prompt's ids reused; review s57 diffservestop LOW-1)."""
    eos = scripted.app.state.server.serving().sessions.tokenizer.eos_token_ids[0]
    SCRIPT[:] = _ids(scripted, "xa") + [eos] + _ids(scripted, "qqqqq")
    out = _post(scripted, _body(session_id="keep-eos", stop_token_ids=[eos], ignore_eos=True))
    assert out["choices"][0]["text"] == "xa"
    ctx = scripted.app.state.server.serving().sessions.get("anon/keep-eos").tokens
    assert ctx.held_text == "hixa"
    covered, ids = ctx.known_prefix("hixa more")
    assert covered == len("hixa") and ids[-2:] == SCRIPT[:2]
    scripted.wait_idle()


def test_nothing_is_held_back_from_the_stream(tiny_dir):
    """Each step's delta is its token's text at once: no possible beginning of a stop
    string waits (it would be kept anyway). Without the option, the text waits three
    characters behind ("STOP" less one)."""
    engine = _scripted(make_engine(tiny_dir))
    SCRIPT[:] = engine.tokenizer.encode("xaSTOPq", add_special_tokens=False)
    for keep, deltas in ((True, ["x", "a", "S", "T", "O", "P"]),
                         (False, ["", "", "", "x", "a", ""])):
        params = SamplingParams(max_tokens=8, temperature=0, stop=["STOP"],
                                include_stop_str_in_output=keep)
        req = engine.add_request([5, 6, 7], params)
        got = []
        while not req.finished:
            got += [o.delta for o in engine.step() if o.request_id == req.request_id]
        assert got == deltas and req.text == "".join(deltas)
    engine.manager.check_integrity()


def test_a_value_that_is_not_a_boolean_is_refused(scripted):
    err = _post(scripted, _body(include_stop_str_in_output="yes"), 400)["error"]
    assert "include_stop_str_in_output" in err["message"] + str(err["param"])
    with pytest.raises(InvalidRequest, match="include_stop_str_in_output"):
        SamplingParams(include_stop_str_in_output=1)
