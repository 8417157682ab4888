"""Session 51 mutation testing of kvsaga-serve (findings/s51/mutserve.md): the request
schemas of `kvsaga.serve.protocol` at their boundaries, validated directly (no server),
each test killing a mutant that the suite let live: a bound moved by one, a no-op value
dropped from a refusal's exceptions, a null read as another default."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kvsaga.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
)

MSGS = [{"role": "user", "content": "hi"}]


def _chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=MSGS, **fields)


def _text(**fields) -> CompletionRequest:
    return CompletionRequest(model="m", prompt="hi", **fields)


def _invalid(make, **fields) -> str:
    """The field path pydantic names for a refused value."""
    with pytest.raises(ValidationError) as info:
        make(**fields)
    return ".".join(str(x) for x in info.value.errors()[0]["loc"])


@pytest.mark.parametrize(("make", "field", "top"), [(_chat, "top_logprobs", 20),
                                                    (_text, "logprobs", 5)])
def test_the_top_logprobs_bounds_are_openais(make, field, top):
    """Killed mutants: chat's `top_logprobs` le 20 and completions' `logprobs` le 5 moved
    up by one (the engine's cost grows with k; OpenAI refuses more)."""
    extra = {"logprobs": True} if make is _chat else {}
    assert make(**extra, **{field: top}).num_top_logprobs() == top
    assert _invalid(make, **extra, **{field: top + 1}) == field


def test_session_id_up_to_256_characters():
    """Killed mutant: the max_length moved (the id goes back in the X-Session-ID header)."""
    assert _chat(session_id="s" * 256).session_id == "s" * 256
    assert _invalid(_chat, session_id="s" * 257) == "session_id"


def test_expected_s_is_refused_below_zero_only():
    """Killed mutant: `ge=0` -> `ge=-1` (the suite tried -3 only)."""
    assert _chat(kvsaga={"expected_s": 0}).kvsaga.expected_s == 0
    assert _invalid(_chat, kvsaga={"expected_s": -0.5}) == "kvsaga.expected_s"


@pytest.mark.parametrize("choice", [
    {"type": "function", "function": {"name": "f"}},
    {"type": "custom", "custom": {"name": "g"}},
])
def test_tool_choice_names_a_function_or_a_custom_tool(choice):
    """Killed mutant: the "custom" form refused (OpenAI's custom tools)."""
    body = _chat(tool_choice=choice, tools=[{"type": "function"}])
    assert body.refused_field() is None
    assert body.unenforced_tool_choice() is not None
    assert _invalid(_chat, tool_choice={**choice, choice["type"]: {}}) == "tool_choice"


def test_tool_choice_required_needs_tools():
    """Killed mutant: "required" taken without tools (OpenAI refuses it)."""
    assert _chat(tool_choice="required").refused_field()[0] == "tool_choice"
    assert _chat(tool_choice="required", tools=[{"type": "function"}]).refused_field() is None


def test_unknown_fields_leave_out_the_known_unhonoured_ones():
    """Killed mutant: every extra reported as unknown (the refused or no-op fields were
    logged as "accepted and ignored")."""
    body = _chat(min_p=0.0, sparkle=1, stream=True,
                 stream_options={"continuous_usage_stats": False, "glow": 2})
    assert body.unknown_fields() == ["sparkle", "stream_options.glow"]


def test_legacy_top_logprobs_are_ordered_most_likely_first():
    """Killed mutant: the dicts sorted least likely first (dict equality ignores order, so
    the live test comparing them with `==` could not see it; OpenAI's are most likely
    first, and clients take the first key as the best alternative)."""
    from types import SimpleNamespace

    from kvsaga.serve.protocol import completion_logprobs

    tokenizer = SimpleNamespace(token_bytes=lambda i: f"t{i}".encode())
    offsets = SimpleNamespace(take=lambda tid, raw: 0)
    lp = completion_logprobs(tokenizer, [1], [-2.0], [[(7, -0.5), (8, -3.0), (9, -1.0)]],
                             offsets)
    assert list(lp.top_logprobs[0].items()) == [("t7", -0.5), ("t9", -1.0), ("t1", -2.0),
                                                 ("t8", -3.0)]
