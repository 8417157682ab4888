"""`add_request`'s ids and params (review s50 engine findings 5 and 6).

5: engine-made ids shared the callers' namespace: a one-shot request joined (then ended) a
caller's session named "oneshot-req-N", a caller's "req-0" made the next engine-made id
fail, and a request_id of "" was silently replaced.
6: a SamplingParams whose fields were set after construction was not checked again (only
`n`): max_tokens=0, temperature=-1 or top_p=0 (every token masked: NaN) ran."""

from __future__ import annotations

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
from kvsaga.errors import InvalidRequest

PROMPT = [(7 + 13 * i) % 250 + 3 for i in range(50)]


@pytest.fixture
def engine(tiny_model_dir) -> LLMEngine:
    return LLMEngine(str(tiny_model_dir("llama_gqa4_untied")), device="cpu", progress=False,
                     kv_memory_bytes=4 << 20)


def greedy(n: int = 4) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def drain(engine: LLMEngine) -> None:
    for _ in range(200):
        if not engine.has_unfinished():
            return
        engine.step()
    raise AssertionError("the engine did not drain")


def test_a_one_shot_request_never_joins_a_callers_session_of_its_name(engine):
    a = engine.add_request(PROMPT, greedy(), request_id="mine", session_id="oneshot-req-0")
    drain(engine)
    assert "oneshot-req-0" in engine.manager.sessions  # paused, the caller's
    before = list(engine.manager.sessions["oneshot-req-0"].token_ids)
    b = engine.add_request(PROMPT + a.output_ids + [5], greedy())
    assert b.request_id == "req-0" and b.session_id != "oneshot-req-0" and not b.resumed
    drain(engine)
    s = engine.manager.sessions["oneshot-req-0"]  # still there, untouched
    assert not s.is_running and s.token_ids == before
    assert b.session_id not in engine.manager.sessions  # the one-shot's ended with it
    engine.manager.check_integrity()


def test_a_one_shot_name_of_a_waiting_callers_session_is_skipped_too(engine):
    """A caller's session "oneshot-req-0" is only queued (its step waits: unknown to the
    manager, busy in the engine) when a one-shot request gets the engine-made id "req-0":
    the one-shot's session must not be the caller's (review s50 diff-engine finding 8:
    the old test never made this collision)."""
    a = engine.add_request(PROMPT, greedy(), request_id="x", session_id="oneshot-req-0")
    assert "oneshot-req-0" not in engine.manager.sessions  # waiting: busy in the engine
    b = engine.add_request(PROMPT[:25], greedy())
    assert b.request_id == "req-0" and b.session_id == "oneshot-req-0.1"
    drain(engine)
    assert all(r.finish_reason == "length" for r in (a, b))
    assert "oneshot-req-0" in engine.manager.sessions  # the caller's, paused
    assert "oneshot-req-0.1" not in engine.manager.sessions  # ended with its request


def test_engine_made_ids_skip_a_callers_id_in_flight(engine):
    x = engine.add_request(PROMPT, greedy(), request_id="req-0")
    y = engine.add_request(PROMPT[:20], greedy())
    assert y.request_id not in ("req-0", "") and x.session_id != y.session_id
    with pytest.raises(InvalidRequest, match="already in flight"):
        engine.add_request(PROMPT[:30], greedy(), request_id="req-0")
    drain(engine)
    assert x.finish_reason == y.finish_reason == "length"


def test_an_empty_request_id_is_refused(engine):
    with pytest.raises(InvalidRequest, match="request_id must be a non-empty str or None"):
        engine.add_request(PROMPT, greedy(), request_id="")
    assert not engine.requests and not engine.has_unfinished()


@pytest.mark.parametrize(("name", "value"), [
    ("max_tokens", 0), ("temperature", -1.0), ("top_p", 0.0), ("top_k", -2),
    ("stop", 5), ("stop_token_ids", [-1]), ("ignore_eos", "no"), ("logprobs", -1),
    ("seed", "7"), ("n", 0),
])
def test_params_set_to_a_bad_value_after_construction_are_refused(engine, name, value):
    p = greedy()
    setattr(p, name, value)
    with pytest.raises(InvalidRequest, match=f"SamplingParams.{name} ") as got:
        engine.add_request(PROMPT, p)
    assert got.value.field == name
    assert not engine.requests and not engine.has_unfinished()


def test_params_set_after_construction_are_normalized_as_at_construction(engine):
    p = greedy()
    p.stop, p.top_k = "zz", -1
    r = engine.add_request(PROMPT, p)
    assert r.params.stop == ("zz",) and r.params.top_k == 0  # not matched char by char
    drain(engine)
    assert r.finish_reason in ("length", "stop")
