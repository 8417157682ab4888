"""Trace format: round trips, malformed lines, and the token-id synthesizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kvsaga.sim.trace import (
    Session,
    SharedPrefix,
    Step,
    TokenSynthesizer,
    TraceError,
    load_trace,
    output_token_ids,
    prompt_token_ids,
    write_trace,
)


def make_session(sid: str = "s0", group: str = "g", prefix: int = 37, tenant: str | None = None,
                 steps: int = 3) -> Session:
    body = [Step(input_tokens=10 + k, output_tokens=5 + k, tool=f"t{k}", tool_s=0.5 * k)
            for k in range(steps - 1)]
    body.append(Step(input_tokens=7, output_tokens=3))
    return Session(id=sid, workflow="swe", arrival_s=1.25,
                   shared_prefix=SharedPrefix(group, prefix), steps=tuple(body), tenant=tenant)


def good_line() -> dict:
    return make_session().to_dict()


def write_lines(tmp_path, lines: list[str]):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_round_trip(tmp_path):
    sessions = [make_session("a"), make_session("b", tenant="acme", prefix=0, steps=1)]
    path = tmp_path / "t.jsonl"
    write_trace(sessions, path)
    assert load_trace(path) == sessions
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert "tenant" not in json.loads(lines[0])  # optional fields stay out when unset
    assert json.loads(lines[1])["tenant"] == "acme"


def test_blank_lines_are_skipped(tmp_path):
    path = write_lines(tmp_path, ["", json.dumps(good_line()), "   "])
    assert len(load_trace(path)) == 1


@pytest.mark.parametrize(
    ("mutate", "field", "value"),
    [
        (lambda d: d["steps"][1].update(tool_s=-1.0), "steps[1].tool_s", -1.0),
        (lambda d: d["steps"][0].update(input_tokens="12"), "steps[0].input_tokens", "12"),
        (lambda d: d["steps"][0].update(output_tokens=0), "steps[0].output_tokens", 0),
        (lambda d: d["steps"][0].update(input_tokens=True), "steps[0].input_tokens", True),
        (lambda d: d["steps"][2].update(tool="bash"), "steps[2].tool", "bash"),
        (lambda d: d["shared_prefix"].update(tokens=-3), "shared_prefix.tokens", -3),
        (lambda d: d.pop("workflow"), "workflow", None),
        (lambda d: d.update(arrival_s="soon"), "arrival_s", "soon"),
        (lambda d: d.update(steps=[]), "steps", []),
        (lambda d: d.update(tenant=""), "tenant", ""),
        (lambda d: d.update(colour="red"), "colour", "red"),
        (lambda d: d["steps"][0].update(toolz="x"), "steps[0].toolz", "x"),
    ],
)
def test_malformed_field_names_line_field_and_value(tmp_path, mutate, field, value):
    bad = good_line()
    mutate(bad)
    other = good_line()
    other["id"] = "other"
    path = write_lines(tmp_path, [json.dumps(other), json.dumps(bad)])
    with pytest.raises(TraceError) as info:
        load_trace(path)
    err = info.value
    assert err.line == 2
    assert err.field == field
    assert err.value == value
    assert "line 2" in str(err) and field in str(err)


def test_not_json_and_not_object(tmp_path):
    path = write_lines(tmp_path, [json.dumps(good_line()), "{oops"])
    with pytest.raises(TraceError, match="line 2: not valid JSON"):
        load_trace(path)
    path = write_lines(tmp_path, ["[1, 2]"])
    with pytest.raises(TraceError, match="line 1: must be a JSON object"):
        load_trace(path)


def test_duplicate_ids_are_rejected(tmp_path):
    path = write_lines(tmp_path, [json.dumps(good_line())] * 2)
    with pytest.raises(TraceError, match="duplicate session id 's0' \\(first on line 1\\)"):
        load_trace(path)


def test_trace_error_is_a_value_error():
    with pytest.raises(ValueError, match="must be >= 1, got 0"):
        Step(input_tokens=0, output_tokens=1)


def test_prompt_lengths():
    s = make_session(prefix=37)
    # prefix, then in_0 out_0 ... then in_k
    assert s.prompt_length(0) == 37 + 10
    assert s.prompt_length(1) == 37 + 10 + 5 + 11
    assert s.prompt_length(2) == 37 + 10 + 5 + 11 + 6 + 7
    assert s.total_tokens == s.prompt_length(2) + 3
    with pytest.raises(IndexError, match="step index 3 out of range"):
        s.prompt_length(3)


def test_prompts_extend_the_previous_context_exactly():
    s = make_session(steps=5)
    for k in range(1, s.num_steps):
        prev = np.concatenate([prompt_token_ids(s, k - 1), output_token_ids(s, k - 1)])
        cur = prompt_token_ids(s, k)
        assert len(cur) == s.prompt_length(k)
        assert np.array_equal(cur[: len(prev)], prev)
        assert len(cur) - len(prev) == s.steps[k].input_tokens
    assert len(output_token_ids(s, 4)) == s.steps[4].output_tokens


def test_same_group_shares_exactly_the_prefix():
    a = make_session("a", prefix=37, steps=4)
    b = make_session("b", prefix=37, steps=4)
    ta, tb = TokenSynthesizer().token_ids(a), TokenSynthesizer().token_ids(b)
    assert np.array_equal(ta[:37], tb[:37])
    # Past the prefix the two share no position and not even a single token value.
    assert not np.any(ta[37:] == tb[37:])
    assert not set(ta[37:].tolist()) & set(tb[37:].tolist())
    c = make_session("a", group="other", prefix=37)
    assert not np.array_equal(prompt_token_ids(c, 0)[:37], ta[:37])


def test_ids_are_deterministic_read_only_and_in_vocab():
    s = make_session(steps=4)
    synth = TokenSynthesizer(vocab_size=1000, max_cached_sessions=1)
    first = synth.token_ids(s).copy()
    synth.token_ids(make_session("evict-the-cache"))
    assert np.array_equal(synth.token_ids(s), first)  # rebuilt identically
    assert first.min() >= 0 and first.max() < 1000
    ids = synth.prompt_token_ids(s, 2)
    assert ids.dtype == np.int64
    with pytest.raises(ValueError):
        ids[0] = 1
    with pytest.raises(ValueError, match="vocab_size"):
        TokenSynthesizer(vocab_size=1)


def test_long_sessions_draw_their_tokens_once(monkeypatch):
    """50 prompts of a 100k-token session cost one draw of its stream and one of its
    prefix's; each prompt is a view of the one cached array (counted, not timed)."""
    from kvsaga.sim import tokens

    draws = []

    def counted(label, n, vocab_size):
        draws.append(label.split("\0")[0])
        return stream(label, n, vocab_size)

    stream = tokens._stream
    monkeypatch.setattr(tokens, "_stream", counted)
    steps = [Step(2_000, 100, "read_file", 0.1) for _ in range(49)] + [Step(2_000, 100)]
    s = Session("long", "swe", 0.0, SharedPrefix("g", 3_000), tuple(steps))
    assert s.total_tokens > 100_000
    synth = TokenSynthesizer()
    prompts = [synth.prompt_token_ids(s, k) for k in range(s.num_steps)]
    assert sorted(draws) == ["prefix", "session"]
    assert all(np.shares_memory(a, b) for a, b in zip(prompts[:-1], prompts[1:], strict=True))
    assert np.array_equal(prompts[-1], TokenSynthesizer().prompt_token_ids(s, s.num_steps - 1))
