"""Session 51 mutation testing of kvsaga-serve (findings/s51/mutserve.md): the limits that
`Serving` checks before a request is queued, at their boundaries. Each test here kills a
mutant that the suite let live (a comparison moved by one, a cap or a header dropped); they
drive `Serving` directly over a stand-in engine, so no model is loaded."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from kvsaga.serve.errors import APIError
from kvsaga.serve.protocol import ChatCompletionRequest, CompletionRequest
from kvsaga.serve.serving import Serving
from kvsaga.serve.settings import ServerSettings

MSGS = [{"role": "user", "content": "hi"}]


def _serving(max_model_len: int = 10, max_num_seqs: int = 2, **kwargs) -> Serving:
    """A `Serving` over a stand-in engine: only what `_params` and `_check_capacity` read."""
    inner = SimpleNamespace(
        max_num_seqs=max_num_seqs,
        config=SimpleNamespace(generation=SimpleNamespace(as_dict=dict)),
    )
    engine = SimpleNamespace(engine=inner, num_in_flight=0)
    return Serving(engine, sessions=None, metrics=None, settings=ServerSettings(**kwargs),
                   max_model_len=max_model_len, model_name="m")


def _chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=MSGS, **fields)


def _text(**fields) -> CompletionRequest:
    return CompletionRequest(model="m", prompt="hi", **fields)


def _refusal(call) -> APIError:
    with pytest.raises(APIError) as info:
        call()
    return info.value


# -- context room -------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param"), [(_chat(), "messages"), (_text(), "prompt")])
def test_a_prompt_filling_the_context_is_refused_naming_the_prompt_field(body, param):
    """Killed mutants: `room < 1` -> `room < 0` (a prompt of exactly the context went on with
    max_tokens 0, refused as a bad max_tokens with no code); the param fixed to "prompt"."""
    s = _serving(max_model_len=10)
    err = _refusal(lambda: s._params(body, 10, None))
    assert (err.status, err.param, err.code) == (400, param, "context_length_exceeded"), err
    assert "10 tokens" in err.message
    # One token shorter leaves room for exactly one token.
    assert s._params(body, 9, None).max_tokens == 1


@pytest.mark.parametrize(("body", "asked"), [
    (_chat(), "max_tokens"), (_chat(max_completion_tokens=4), "max_completion_tokens"),
    (_text(), "max_tokens")])
def test_max_tokens_is_cut_to_the_room_and_refused_only_past_the_context(body, asked):
    """Killed mutant: `requested > room` -> `>=` (a request that fits to the last token was
    refused). Session 56 (oaifix): past the room it is cut to fit, as vLLM does; only a
    max_tokens above the whole context is refused, naming the field sent."""
    s = _serving(max_model_len=10)
    assert s._params(body, 4, 6).max_tokens == 6
    assert s._params(body, 4, 7).max_tokens == 6
    assert s._params(body, 4, 10).max_tokens == 6
    err = _refusal(lambda: s._params(body, 4, 11))
    assert (err.status, err.param, err.code) == (400, asked, "context_length_exceeded"), err
    assert err.message.startswith(f"{asked}=11 ")


# -- the server's max_tokens limit ------------------------------------------------------------


def test_max_tokens_at_the_servers_limit_is_taken_and_one_over_is_refused():
    """Killed mutant: `requested > cap` -> `>=`."""
    s = _serving(max_model_len=100, max_tokens_limit=5)
    assert s._params(_text(), 3, 5).max_tokens == 5
    err = _refusal(lambda: s._params(_text(), 3, 6))
    assert (err.status, err.param, err.code) == (400, "max_tokens", None), err
    assert "limit of 5" in err.message


def test_an_unset_max_tokens_takes_the_smallest_of_default_room_and_limit():
    """Killed mutant: the limit left out of the default (`min(default, room)`): a request
    without max_tokens could generate past --max-tokens-limit."""
    s = _serving(max_model_len=100, max_tokens_limit=3, default_max_tokens=50)
    assert s._params(_text(), 10, None).max_tokens == 3
    s = _serving(max_model_len=100, max_tokens_limit=70, default_max_tokens=50)
    assert s._params(_text(), 10, None).max_tokens == 50
    s = _serving(max_model_len=100, max_tokens_limit=95, default_max_tokens=200)
    assert s._params(_text(), 10, None).max_tokens == 90  # the room
    # Unset --default-max-tokens (session 56): vLLM's 16 for completions, the room for chat,
    # each still under the limit.
    s = _serving(max_model_len=100)
    assert (s._params(_text(), 10, None).max_tokens, s._params(_chat(), 10, None).max_tokens) \
        == (16, 90)
    s = _serving(max_model_len=100, max_tokens_limit=12)
    assert (s._params(_text(), 10, None).max_tokens, s._params(_chat(), 10, None).max_tokens) \
        == (12, 12)
    s = _serving(max_model_len=20)
    assert s._params(_text(), 10, None).max_tokens == 10  # the room, under 16


# -- the queue --------------------------------------------------------------------------------


def test_the_queue_takes_batch_plus_queue_requests_then_429s_with_retry_after():
    """Killed mutants: `num_in_flight >= max_in_flight` -> `>` (one request over), the
    bound computed one high, and the Retry-After header dropped."""
    s = _serving(max_num_seqs=2, max_queue=3, retry_after_s=7)
    assert s.max_in_flight == 5
    s.engine.num_in_flight = 4
    s._check_capacity()  # the fifth is taken
    s.engine.num_in_flight = 5
    err = _refusal(s._check_capacity)
    assert (err.status, err.code) == (429, "queue_full"), err
    assert err.headers == {"Retry-After": "7"}
    assert "5 requests in flight" in err.message


# -- fields checked before anything happens ----------------------------------------------------


def test_echo_with_logprobs_zero_is_refused_too():
    """Killed mutant: `num_top_logprobs() is not None` -> truthiness (`logprobs: 0`, the
    sampled token's logprob, slipped past the check that echo and logprobs are exclusive)."""
    for k in (0, 2):
        err = _refusal(lambda k=k: Serving._check_fields(_text(echo=True, logprobs=k)))
        assert (err.status, err.param) == (400, "echo"), err
    Serving._check_fields(_text(echo=True))
    Serving._check_fields(_text(logprobs=0))


# -- the engine's refusal ----------------------------------------------------------------------


def test_an_engine_refusal_names_the_clients_session_id_not_the_engines():
    """Killed mutant: the engine's message passed on as it is, naming the session by the
    server's tenant-prefixed id (`engine_sid`), which the client never sent. Driven through
    `_submit` with an engine that refuses the add as the engine names sessions (by repr)."""
    from kvsaga.errors import InvalidRequest
    from kvsaga.serve.serving import Prompt

    engine_sid, sid = "tenant-0123:caf\u00e9", "caf\u00e9"
    ctx = object()

    async def submit(ids, params, **kwargs):
        assert kwargs["session_id"] == engine_sid
        raise InvalidRequest(f"session {engine_sid!r} was opened with another salt "
                             f"({engine_sid})")

    s = _serving(max_model_len=100)
    s.engine.submit = submit
    s.sessions = SimpleNamespace(get=lambda key: ctx if key == engine_sid else None)
    coro = s._submit(_text(), Prompt(None, ids=[1, 2, 3]), ctx, False, engine_sid, None,
                     sid, "cmpl-1", None, [])
    err = _refusal(lambda: asyncio.run(coro))
    assert (err.status, err.param) == (422, "prompt"), err
    assert err.message == f"session {sid!r} was opened with another salt ({sid})"
