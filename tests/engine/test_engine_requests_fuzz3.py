"""`LLMEngine.add_request` with bad arguments: each is refused at once with an
`InvalidRequest` naming what was wrong, nothing is queued, and the engine goes on serving
(the same greedy tokens, every block given back). Before these checks, a salt, tool or
expected_s of the wrong type was accepted and raised later, inside `step()`: the bad
request stayed queued (every later step raised) or its session's blocks stayed held."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.llm import LLM
from kvsaga.engine.sampling import SamplingParams
from kvsaga.errors import InvalidRequest
from tests.engine.helpers import TINY_VOCAB

GREEDY = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
PROBE = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]  # 17: two blocks


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


@pytest.fixture(scope="module")
def engine(model_dir) -> LLMEngine:
    return LLMEngine(str(model_dir), device="cpu", progress=False, kv_memory_bytes=4 * 2**20)


def _drain(engine: LLMEngine, req) -> None:
    for _ in range(200):
        if req.finished:
            return
        engine.step()
    raise AssertionError(f"request {req.request_id} did not finish in 200 steps")


def _state(engine: LLMEngine) -> tuple:
    sched = engine.scheduler
    return (sorted(engine.requests), [r.request_id for r in sched.waiting],
            [r.request_id for r in sched.running], engine.manager.stats(),
            sorted(engine.manager.sessions))


def _serves(engine: LLMEngine, expected: list[int] | None = None) -> list[int]:
    """Run one plain request through; the manager's books hold and no block stays used."""
    req = engine.add_request(PROBE, GREEDY)
    _drain(engine, req)
    engine.manager.check_integrity()
    assert engine.manager.stats().num_used_blocks == 0
    assert not engine.has_unfinished()
    if expected is not None:
        assert req.output_ids == expected
    return req.output_ids


@pytest.fixture(scope="module")
def expected(engine) -> list[int]:
    return _serves(engine)


BAD = [
    # (prompt, params, kwargs, words the message must hold)
    ([5, -1], GREEDY, {}, "vocabulary"),
    ([5, TINY_VOCAB], GREEDY, {}, "vocabulary"),
    ([], GREEDY, {}, "empty"),
    ([5, 6.0], GREEDY, {}, "not an int"),
    ([5, True], GREEDY, {}, "not an int"),
    ([5, torch.tensor(True)], GREEDY, {}, "not an int"),
    ([5, np.float32(3)], GREEDY, {}, "not an int"),
    ([5, None], GREEDY, {}, "not an int"),
    ("hello", GREEDY, {}, "tokenizer"),
    (b"hi", GREEDY, {}, "prompt_ids"),
    (None, GREEDY, {}, "prompt_ids"),
    (7, GREEDY, {}, "prompt_ids"),
    ([5, 6], {"max_tokens": 3}, {}, "SamplingParams"),
    ([5, 6], {}, {}, "SamplingParams"),
    ([5, 6], "greedy", {}, "SamplingParams"),
    # n > 1 was accepted and one completion came back, silently
    ([5, 6], SamplingParams(max_tokens=2, n=2), {}, "SamplingParams.n=2"),
    ([5, 6], GREEDY, {"salt": 7}, "salt"),
    ([5, 6], GREEDY, {"session_id": "s-salt", "salt": 7.5}, "salt"),
    ([5, 6], GREEDY, {"session_id": 5}, "session_id"),
    ([5, 6], GREEDY, {"session_id": ["s"]}, "session_id"),
    # "" made a one-shot session that was never ended (it held its context until the
    # idle sweep)
    ([5, 6], GREEDY, {"session_id": ""}, "session_id must be a non-empty str"),
    ([5, 6], GREEDY, {"request_id": 7}, "request_id"),
    ([5, 6], GREEDY, {"workflow": 3}, "workflow"),
    ([5, 6], GREEDY, {"session_id": "s-tool", "tool": 3}, "tool"),
    ([5, 6], GREEDY, {"session_id": "s-exp", "expected_s": -1.0}, "expected_s"),
    ([5, 6], GREEDY, {"session_id": "s-exp", "expected_s": float("nan")}, "expected_s"),
    ([5, 6], GREEDY, {"session_id": "s-exp", "expected_s": "5"}, "expected_s"),
    ([5, 6], GREEDY, {"session_id": "s-last", "last_step": "no"}, "last_step"),
    ([5, 6], GREEDY, {"last_step": 1}, "last_step"),
]


@pytest.mark.parametrize("prompt,params,kwargs,words", BAD,
                         ids=[f"{i}-{c[3]}" for i, c in enumerate(BAD)])
def test_bad_request_is_refused_and_changes_nothing(engine, expected, prompt, params, kwargs,
                                                    words):
    before = _state(engine)
    with pytest.raises(InvalidRequest, match=words):
        engine.add_request(prompt, params, **kwargs)
    assert _state(engine) == before
    _serves(engine, expected)


def test_bad_hint_on_a_paused_sessions_next_step(engine, expected):
    """The session's second step with a bad hint is refused; the session stays paused with
    its cache, and a good second step then hits it."""
    first = engine.add_request(PROBE, GREEDY, session_id="agent", tool="grep", expected_s=2.0)
    _drain(engine, first)
    context = PROBE + first.output_ids + [30, 31]
    for kw in ({"tool": 3}, {"expected_s": -2}, {"salt": 1}, {"last_step": None}):
        before = _state(engine)
        with pytest.raises(InvalidRequest):
            engine.add_request(context, GREEDY, session_id="agent", **kw)
        assert _state(engine) == before
    second = engine.add_request(context, GREEDY, session_id="agent", last_step=True)
    _drain(engine, second)
    assert second.num_cached_tokens >= 16
    assert "agent" not in engine.manager.sessions
    _serves(engine, expected)


def test_numpy_and_torch_integer_ids_are_their_values(engine, expected):
    """Integer scalars from a tokenizer's arrays count as the ints they hold (they were
    refused as "outside the vocabulary"); the request runs as the plain list would."""
    for ids in (np.array(PROBE), list(np.array(PROBE, dtype=np.int32)), torch.tensor(PROBE)):
        req = engine.add_request(ids, GREEDY)
        assert req.prompt_ids == PROBE and all(type(t) is int for t in req.prompt_ids)
        _drain(engine, req)
        assert req.output_ids == expected
    _serves(engine, expected)


def test_abort_of_unknown_finished_or_twice(engine, expected):
    engine.abort("never-seen")
    done = engine.add_request(PROBE, GREEDY)
    _drain(engine, done)
    engine.abort(done.request_id)  # finished: a no-op
    assert done.finish_reason == "length"
    waiting = engine.add_request(PROBE, GREEDY)
    engine.abort(waiting.request_id)
    engine.abort(waiting.request_id)
    assert waiting.finish_reason == "abort"
    running = engine.add_request(PROBE, GREEDY, session_id="mid")
    engine.step()
    engine.abort(running.request_id)
    engine.abort(running.request_id)
    assert running.finish_reason == "abort"
    assert engine.end_session("mid") == []
    _serves(engine, expected)


def test_llm_generate_with_one_bad_prompt_queues_none(model_dir):
    """`LLM.generate` refusing its second prompt leaves the first unqueued too (it stayed
    queued and ran, unread, inside the next call)."""
    llm = LLM(str(model_dir), device="cpu", progress=False, kv_memory_bytes=4 * 2**20)
    with pytest.raises(InvalidRequest, match="vocabulary"):
        llm.generate([PROBE, [5, 10**6]], GREEDY)
    assert not llm.engine.has_unfinished() and not llm.engine.requests
    assert llm.engine.manager.stats().num_running_sessions == 0
    seen = set()  # the request ids of every output the engine steps make in the next call
    step = llm.engine.step

    def recording_step():
        outputs = step()
        seen.update(out.request_id for out in outputs)
        return outputs

    llm.engine.step = recording_step
    (out,) = llm.generate(PROBE, GREEDY)
    assert seen == {out.request_id}  # the refused call's first prompt did not run here


def test_agent_session_bad_tool_call_is_refused_at_once(model_dir):
    """A bad `tool_call` raises there, not at the next step, and the session goes on."""
    llm = LLM(str(model_dir), device="cpu", progress=False, kv_memory_bytes=4 * 2**20)
    s = llm.session()
    with pytest.raises(InvalidRequest, match="tool"):
        s.tool_call(5)
    with pytest.raises(InvalidRequest, match="expected_s"):
        s.tool_call("run", expected_s=-1)
    s.tool_call("run", expected_s=3.0)  # before the first step: kept for it
    with pytest.raises(InvalidRequest, match="last_step"):
        s.generate("hi", GREEDY, last_step="yes")
    assert s._pending_tool == ("run", 3.0)  # the refused step did not consume it
    out = s.generate("hi", GREEDY)
    assert out.finish_reason == "length"
    assert llm.engine.manager.session(s.session_id).hint.tool == "run"
    s.end()
    llm.engine.manager.check_integrity()


_ids = st.one_of(
    st.lists(st.integers(0, TINY_VOCAB - 1), min_size=1, max_size=24),
    st.lists(st.one_of(st.integers(-3, TINY_VOCAB + 3), st.booleans(), st.floats(0, 9),
                       st.text(max_size=2), st.none()), max_size=6),
)
_hints = st.fixed_dictionaries({}, optional={
    "session_id": st.one_of(st.sampled_from(["a", "b"]), st.integers(), st.none()),
    "salt": st.one_of(st.sampled_from(["t1", "t2"]), st.binary(max_size=3), st.integers(),
                      st.none()),
    "workflow": st.one_of(st.sampled_from(["default", "swe"]), st.integers()),
    "tool": st.one_of(st.sampled_from(["grep", "pytest"]), st.integers(), st.none()),
    "expected_s": st.one_of(st.floats(allow_nan=True), st.integers(-2, 5), st.none()),
    "last_step": st.one_of(st.booleans(), st.integers(0, 1), st.none()),
})


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(calls=st.lists(st.tuples(_ids, _hints, st.booleans()), min_size=1, max_size=4))
def test_random_requests_refused_or_served(engine, expected, calls):
    """Random mixes of good and bad requests, some aborted after a step: a refused one
    changes nothing, the accepted ones all finish, and the books hold after every step."""
    accepted = []
    for ids, hints, abort in calls:
        before = _state(engine)
        try:
            req = engine.add_request(ids, GREEDY, **hints)
        except InvalidRequest:
            assert _state(engine) == before
            continue
        accepted.append((req, abort))
    engine.step()
    engine.manager.check_integrity()
    for req, abort in accepted:
        if abort:
            engine.abort(req.request_id)
    for _ in range(200):
        if not engine.has_unfinished():
            break
        engine.step()
        engine.manager.check_integrity()
    assert all(req.finished for req, _ in accepted)
    for sid in ("a", "b"):
        engine.end_session(sid)
    assert engine.manager.stats().num_used_blocks == 0
    _serves(engine, expected)


@pytest.mark.parametrize("kwargs,name", [
    ({"max_model_len": 0}, "max_model_len"),  # was taken as "the model's"
    ({"max_model_len": "100"}, "max_model_len"),  # was a TypeError from min()
    ({"policy": 3}, "policy"),  # was AttributeError: 'int' object has no attribute 'bind'
    ({"scheduler_params": [1]}, "scheduler_params"),  # was TypeError (argument after **)
    ({"enforce_eager": "no"}, "enforce_eager"),  # was taken as True
    ({"clock": 5}, "clock"),  # was accepted; the first add_request raised TypeError
])
def test_bad_engine_arguments_are_refused_naming_them(model_dir, kwargs, name):
    with pytest.raises(InvalidRequest, match=name):
        LLMEngine(str(model_dir), device="cpu", progress=False, kv_memory_bytes=4 * 2**20,
                  **kwargs)


@pytest.mark.parametrize("kwargs,name", [
    ({"max_num_seqs": 0}, "max_num_seqs"),
    ({"max_num_seqs": "8"}, "max_num_seqs"),
    ({"max_num_seqs": None}, "max_num_seqs"),
    ({"max_num_batched_tokens": "1024"}, "max_num_batched_tokens"),
    ({"max_num_batched_tokens": 2.5}, "max_num_batched_tokens"),
])
def test_batch_limits_are_refused_before_the_weights_load(monkeypatch, kwargs, name):
    """On CUDA the graphs were built from these before the core scheduler checked them:
    after the weights loaded, they failed there with a TypeError or a ValueError that named
    neither argument. Now both are checked first, on every device."""
    import kvsaga.engine.engine as engine_module

    def load_model(*args, **kw):
        raise AssertionError("the weights were loaded before the arguments were checked")

    monkeypatch.setattr(engine_module, "load_checkpoint", load_model)
    with pytest.raises(InvalidRequest, match=f"{name} must be a positive int"):
        LLMEngine("any", device="cpu", progress=False, **kwargs)


def test_a_dtype_name_gets_a_message_naming_the_torch_dtypes(model_dir):
    """`LLMEngine(dtype="float32")` (a name, which only `LLM` resolves) was told "unsupported
    compute dtype float32; use float32, ...": the message now names the torch dtypes."""
    with pytest.raises(ValueError, match=r"'float32'.*torch\.float32"):
        LLMEngine(str(model_dir), device="cpu", dtype="float32", progress=False)


def test_a_host_budget_that_holds_no_block_is_refused(model_dir):
    """`host_memory_bytes` under one block ran with no host tier and said nothing
    (`kvsaga-serve --host-memory 1` served without offload); as the GPU budget does, it is
    now refused naming the block size. 0 still means no host tier."""
    kw = {"device": "cpu", "progress": False, "kv_memory_bytes": 4 * 2**20}
    with pytest.raises(InvalidRequest, match=r"host_memory_bytes=1 holds no KV block of \d+"):
        LLMEngine(str(model_dir), host_memory_bytes=1, **kw)
    assert LLMEngine(str(model_dir), host_memory_bytes=0, **kw).transfers is None
    engine = LLMEngine(str(model_dir), host_memory_bytes=2**20, **kw)
    assert engine.manager.stats().num_host_blocks > 0


@pytest.mark.parametrize("call", ["abort", "end_session", "resume_hint"])
@pytest.mark.parametrize("bad", [["s"], {"s": 1}, None, 5])
def test_id_of_the_wrong_type_is_refused_by_name(engine, expected, call, bad):
    """A list id raised TypeError ("unhashable type: 'list'"), None or an int was a silent
    no-op: each is an InvalidRequest naming the argument, and nothing changes."""
    before = _state(engine)
    with pytest.raises(InvalidRequest, match="request_id" if call == "abort" else "session_id"):
        getattr(engine, call)(bad)
    assert _state(engine) == before
    _serves(engine, expected)


@pytest.fixture(scope="module")
def llm(model_dir) -> LLM:
    return LLM(str(model_dir), device="cpu", progress=False, kv_memory_bytes=4 * 2**20)


@pytest.mark.parametrize("prompts", [
    np.array(PROBE),  # was ValueError: the truth value of an array ... is ambiguous
    torch.tensor(PROBE),  # was RuntimeError: Boolean value of Tensor ... is ambiguous
    [np.int64(PROBE[0]), *PROBE[1:]],  # was TypeError: 'numpy.int64' object is not iterable
    tuple(PROBE),
])
def test_llm_generate_takes_one_prompt_of_ids_in_any_integer_form(llm, expected, prompts):
    outs = llm.generate(prompts, GREEDY)
    assert [o.token_ids for o in outs] == [expected]


def test_llm_generate_takes_a_2d_array_as_prompts(llm, expected):
    outs = llm.generate(np.array([PROBE, PROBE]), GREEDY)
    assert [o.token_ids for o in outs] == [expected, expected]


@pytest.mark.parametrize("prompts,words", [
    (5, "prompts must be"),  # was TypeError: 'int' object is not iterable
    (b"hi", "prompts must be"),  # was taken as token ids 104, 105
    ({"a": 1}, "prompts must be"),  # was taken as the text prompt "a"
    ([b"hi"], "each prompt must be"),
    # were TypeError: iteration over a 0-d tensor / array
    (torch.tensor(5), "prompts must be .* got a 0-d Tensor"),
    (np.array(5), "prompts must be .* got a 0-d ndarray"),
    (["hi", torch.tensor(5)], "each prompt must be .* got a 0-d Tensor"),
])
def test_llm_generate_refuses_what_is_not_a_prompt(llm, prompts, words):
    with pytest.raises(InvalidRequest, match=words):
        llm.generate(prompts, GREEDY)
    assert not llm.engine.requests and not llm.engine.has_unfinished()


@pytest.mark.parametrize("kwargs,words", [
    ({"session_id": 5}, "session_id"), ({"session_id": ["s"]}, "session_id"),
    ({"salt": 7}, "salt"), ({"workflow": 3}, "workflow"),
])
def test_llm_session_refuses_bad_ids_when_made(llm, kwargs, words):
    """They were accepted by `LLM.session` and refused only at the session's first step."""
    with pytest.raises(InvalidRequest, match=words):
        llm.session(**kwargs)
