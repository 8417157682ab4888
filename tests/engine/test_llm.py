"""The engine end to end on a tiny random Llama: batching, prefix hits, preemption and
agent sessions must never change greedy output."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from kvsaga.engine.context import TokenContext, encode_continuing
from kvsaga.engine.llm import LLM, resolve_dtype
from kvsaga.engine.sampling import SamplingParams
from kvsaga.errors import InvalidRequest

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = [
    [5, 17, 33, 2, 9],
    list(range(40, 77)),
    [100 + (i * 7) % 150 for i in range(23)],
    [3],
    list(range(200, 250)),
]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def make_llm(model_dir, **kw) -> LLM:
    kw.setdefault("kv_memory_bytes", 4 * 2**20)
    return LLM(str(model_dir), device="cpu", progress=False, **kw)


@pytest.fixture(scope="module")
def alone(model_dir):
    """Greedy tokens of each prompt run by itself in a fresh engine."""
    out = []
    for p in PROMPTS:
        llm = make_llm(model_dir)
        out.append(llm.generate(p, GREEDY)[0].token_ids)
    return out


def test_batch_matches_each_prompt_alone(model_dir, alone):
    llm = make_llm(model_dir, max_num_batched_tokens=32)  # forces chunked prefill too
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outs] == alone
    assert all(o.finish_reason == "length" and len(o.token_ids) == 12 for o in outs)
    llm.engine.manager.check_integrity()
    assert llm.engine.manager.stats().num_used_blocks == 0


def test_prefix_cache_hit_gives_cold_tokens(model_dir, alone):
    llm = make_llm(model_dir)
    first = llm.generate(PROMPTS[4], GREEDY)[0]
    again = llm.generate(PROMPTS[4], GREEDY)[0]
    assert first.num_cached_tokens == 0
    assert again.num_cached_tokens == 48  # 3 full blocks of the 50-token prompt
    assert again.token_ids == first.token_ids == alone[4]


def test_preemption_under_a_tiny_pool_gives_same_tokens(model_dir, alone):
    llm = make_llm(model_dir, kv_memory_bytes=None)
    spec = llm.engine.spec
    # Room for 7 blocks: fcfs admits the first four prompts, and decoding must preempt.
    llm = make_llm(model_dir, kv_memory_bytes=7 * spec.bytes_per_block, scheduler="fcfs")
    outs = llm.generate(PROMPTS, GREEDY)
    assert llm.engine.scheduler.num_preemptions > 0
    assert [o.token_ids for o in outs] == alone
    llm.engine.manager.check_integrity()
    # The workflow scheduler reserves decode room instead: no preemption, same tokens.
    llm = make_llm(model_dir, kv_memory_bytes=7 * spec.bytes_per_block)
    outs = llm.generate(PROMPTS, GREEDY)
    assert llm.engine.scheduler.name == "workflow"
    assert llm.engine.scheduler.num_preemptions == 0
    assert [o.token_ids for o in outs] == alone
    llm.engine.manager.check_integrity()


def test_session_steps_hit_their_own_context(model_dir):
    llm = make_llm(model_dir)
    s = llm.session()
    a = s.generate("hello agent", GREEDY)
    s.tool_call("grep", expected_s=0.05)
    b = s.generate(" tool result: 42.", GREEDY)
    assert b.num_cached_tokens >= len(s.context_ids) - len(b.token_ids) - 20
    assert b.num_cached_tokens > a.num_prompt_tokens
    # The same full context, cold, gives the same tokens.
    cold = make_llm(model_dir).generate(s.context_ids[: b.num_prompt_tokens], GREEDY)[0]
    assert cold.token_ids == b.token_ids
    s.end()
    assert llm.engine.manager.stats().num_paused_sessions == 0
    llm.engine.manager.check_integrity()


def test_requests_that_can_never_fit_are_rejected(model_dir):
    llm = make_llm(model_dir)
    with pytest.raises(InvalidRequest, match="context limit"):
        llm.generate(list(range(300)) * 2, GREEDY)
    with pytest.raises(InvalidRequest, match="vocabulary"):
        llm.generate([10**6], GREEDY)
    with pytest.raises(InvalidRequest, match="empty"):
        llm.generate([[]], GREEDY)
    s = llm.session(salt="tenant-a")
    s.generate("hi", GREEDY)
    with pytest.raises(InvalidRequest, match="another salt"):
        llm.engine.add_request([5, 6], GREEDY, session_id=s.session_id, salt="tenant-b")
    assert llm.engine.manager.stats().num_used_blocks == 0


def test_stop_strings_and_max_tokens(model_dir, alone):
    llm = make_llm(model_dir)
    full = llm.generate(PROMPTS[1], GREEDY)[0]
    assert len(full.text) > 2
    stop = full.text[2:4]
    cut = llm.generate(PROMPTS[1], SamplingParams(max_tokens=12, temperature=0, stop=[stop]))[0]
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert full.text.startswith(cut.text)


def test_session_offloaded_during_pause_resumes_with_identical_output(model_dir):
    import random
    import time

    probe = make_llm(model_dir)
    bpb = probe.engine.spec.bytes_per_block
    rng = random.Random(0)
    llm = make_llm(
        model_dir,
        kv_memory_bytes=8 * bpb,
        host_memory_bytes=16 * bpb,
        transfer_delay=lambda: time.sleep(rng.random() / 1000),
    )
    s = llm.session()
    s.generate(" ".join(["agent"] * 8), GREEDY)  # ~50 tokens: 3 full blocks
    s.tool_call("run_tests", expected_s=30.0)
    # Another session needs the whole GPU tier: the paused session's blocks go to host.
    other = llm.generate(
        list(range(60, 180)), SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    )
    assert other[0].finish_reason == "length"
    stats = llm.engine.manager.stats()
    assert stats.offloaded_blocks >= 3
    b = s.generate(" result ok.", GREEDY)
    stats = llm.engine.manager.stats()
    assert stats.loaded_blocks >= 3 and stats.host_hit_tokens >= 48
    assert b.num_cached_tokens >= 48
    cold = make_llm(model_dir).generate(s.context_ids[: b.num_prompt_tokens], GREEDY)[0]
    assert cold.token_ids == b.token_ids
    llm.engine.manager.check_integrity()


def test_streamed_deltas_never_show_a_stop_string(model_dir):
    llm = make_llm(model_dir)
    full = llm.generate(PROMPTS[1], GREEDY)[0]
    stop = full.text[3:6]
    eng = llm.engine
    req = eng.add_request(PROMPTS[1], SamplingParams(max_tokens=12, temperature=0, stop=[stop]))
    deltas = []
    while not req.finished:
        deltas += [o.delta for o in eng.step() if o.request_id == req.request_id]
    streamed = "".join(deltas)
    assert streamed == req.text and stop not in streamed
    assert full.text.startswith(streamed)


def test_a_stop_token_never_completes_a_stop_string(model_dir):
    """The model says "x", "a", "b", with stop=["ab"] and "b" a stop token: as in vLLM, the
    stop token ends the request without its text, so "ab" never appears and the "a" held
    back (a stop string's possible beginning) is released: "xa", streamed too. (Before
    session 56 the stop token's text was searched and the text cut to "x".)"""
    from kvsaga.engine.sampling import SamplerOutput

    eng = make_llm(model_dir).engine
    script = eng.tokenizer.encode("xab", add_special_tokens=False)
    b = eng.tokenizer.encode("b", add_special_tokens=False)
    assert len(script) == 3 and b == script[2:]
    eng.runner.sampler = lambda logits, params, gens=None: SamplerOutput(
        torch.tensor([script[len(req.output_ids)]]), torch.zeros(1))
    req = eng.add_request([5, 6, 7], SamplingParams(max_tokens=10, temperature=0, stop=["ab"],
                                                    stop_token_ids=b))
    deltas = []
    while not req.finished:
        deltas += [o.delta for o in eng.step() if o.request_id == req.request_id]
    assert req.output_ids == script and req.finish_reason == "stop"
    assert req.text == "".join(deltas) == "xa"
    eng.manager.check_integrity()


# -- exact-token conversations on the real model (its BPE re-splits pasted-back answers) --


@pytest.fixture(scope="module")
def smol(gguf_path):
    return LLM(str(gguf_path), device="cpu", dtype="float32", progress=False)


SHORT = SamplingParams(max_tokens=24, temperature=0)


def test_session_chat_step_hits_the_whole_previous_context(smol):
    """Every token whose K/V the session holds (all but the last generated one) is a hit."""
    s = smol.session()
    s.chat("List the files to inspect.", SHORT)
    before = s.context_ids
    s.tool_call("read_file", expected_s=0.2)
    b = s.chat("Contents: def main(): pass", SHORT)
    assert s.context_ids[: len(before)] == before  # the step extended the exact ids
    assert b.num_cached_tokens == len(before) - 1
    s.end()
    smol.engine.manager.check_integrity()


def test_llm_chat_multi_turn_hits_the_previous_turns_full_blocks(smol):
    bs = smol.engine.spec.block_size
    messages = [{"role": "user", "content": "Name three colors."}]
    first = smol.chat(messages, SHORT)
    held = first.num_prompt_tokens + len(first.token_ids) - 1  # the last token has no K/V
    messages += [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And three animals?"},
    ]
    second = smol.chat(messages, SHORT)
    assert second.num_cached_tokens == held // bs * bs


def test_a_pasted_back_answer_keeps_the_ids_the_model_generated(smol):
    """The model's split of ' Paris' into two tokens survives the next turn's prompt, where
    re-tokenizing the text would merge it (and miss the cache from there on)."""
    tok = smol.tokenizer
    prompt_text = tok.apply_chat_template([{"role": "user", "content": "Capital?"}], True)
    prompt = tok.encode(prompt_text, add_special_tokens=False)
    whole = tok.encode(" Paris", add_special_tokens=False)
    split = [*tok.encode(" Par", False), *tok.encode("is", False)]
    assert split != whole and tok.decode(split) == tok.decode(whole)
    out = split + tok.encode("<|im_end|>", add_special_tokens=False)
    ctx = TokenContext.of_step(tok, prompt, prompt_text, out)
    follow = ctx.text + "\n<|im_start|>user\nWhy?<|im_end|>\n"
    ids = encode_continuing(tok, [None, ctx], follow, False)
    assert ids[: len(prompt) + len(out)] == prompt + out
    assert tok.decode(ids, skip_special_tokens=False) == follow
    # A text that does not extend the context is tokenized afresh.
    assert encode_continuing(tok, [ctx], "hello", False) == tok.encode("hello", False)


# -- defaults and arguments as users write them -------------------------------------------


def test_dtype_names_are_accepted_as_vllm_accepts_them(model_dir):
    assert make_llm(model_dir, dtype="float32").engine.dtype == torch.float32
    assert make_llm(model_dir, dtype="auto").engine.dtype == torch.float32  # CPU default
    with pytest.raises(InvalidRequest, match="dtype 'fp8'.*bfloat16"):
        resolve_dtype("fp8")
    with pytest.raises(InvalidRequest, match="dtype torch.int8"):
        resolve_dtype(torch.int8)


def test_sampling_defaults_come_from_generation_config(model_dir, tmp_path):
    plain = make_llm(model_dir).default_params()
    assert (plain.temperature, plain.top_p, plain.top_k) == (1.0, 1.0, 0)  # OpenAI's
    shutil.copytree(model_dir, tmp_path / "m")
    gen = {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 7, "eos_token_id": 1}
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps(gen))
    llm = make_llm(tmp_path / "m")
    d = llm.default_params()
    assert (d.temperature, d.top_p, d.top_k, d.max_tokens) == (0.6, 0.9, 0, 7)
    assert llm.default_params(temperature=0.0, top_p=None).temperature == 0.0
    assert llm.default_params(top_p=None).top_p == 0.9  # None leaves the default
    assert len(llm.generate([5, 6, 7], llm.default_params(ignore_eos=True))[0].token_ids) == 7
    assert len(llm.generate([5, 6, 7])[0].token_ids) >= 1  # no params: the model's defaults


def test_decode_steps_go_through_one_batched_decode_step(model_dir, alone, monkeypatch):
    """Once every running request decodes, each step hands the manager its tokens in one
    `decode_step` (#14) instead of an append and an allocation per request; the output is
    unchanged, and a step with a prefill chunk in it falls back to one call per request."""
    llm = make_llm(model_dir, max_num_batched_tokens=32)
    mgr = llm.engine.manager
    calls = {"decode_step": [], "append_tokens": 0}
    real_decode, real_append = mgr.decode_step, mgr.append_tokens

    def decode_step(sids, toks, **kw):
        calls["decode_step"].append(len(sids))
        return real_decode(sids, toks, **kw)

    def append_tokens(sid, toks):
        calls["append_tokens"] += 1
        return real_append(sid, toks)

    monkeypatch.setattr(mgr, "decode_step", decode_step)
    monkeypatch.setattr(mgr, "append_tokens", append_tokens)
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outs] == alone
    assert max(calls["decode_step"]) == len(PROMPTS)  # the whole batch in one call
    # 11 tokens of each request need a slot; the batched calls covered most of them.
    assert sum(calls["decode_step"]) + calls["append_tokens"] == 11 * len(PROMPTS)
    assert calls["append_tokens"] < sum(calls["decode_step"])
    mgr.check_integrity()
    assert mgr.stats().num_used_blocks == 0


def test_decode_steps_build_no_whole_context(model_dir, alone, monkeypatch):
    """A decode step read `all_token_ids` (a new prompt + output list) four times a request
    (allocation, `completes_context`, the runner's ids, the length check): host time that
    grew with the context at every step. Lengths and slices now do; the tokens agree."""
    from kvsaga.engine.request import Request

    llm = make_llm(model_dir)
    built = [0]
    real = Request.all_token_ids

    def counted(req):
        built[0] += 1
        return real.fget(req)

    monkeypatch.setattr(Request, "all_token_ids", property(counted))
    eng = llm.engine
    reqs = [eng.add_request(p, GREEDY) for p in PROMPTS]
    eng.step()  # the prefills: the admission's lookup and `begin_step` take the context
    admitted = built[0]
    assert 0 < admitted <= 2 * len(PROMPTS)
    eng.step()
    assert built[0] == admitted  # before: 4 more a request
    while eng.has_unfinished():
        eng.step()
    assert [r.output_ids for r in reqs] == alone
    assert built[0] == admitted


def test_context_slice_is_the_slice_of_the_context():
    from kvsaga.engine.request import Request

    req = Request("r", "s", [1, 2, 3], SamplingParams(), 0.0)
    req.output_ids = [4, 5]
    whole = req.all_token_ids
    for start in range(6):
        for stop in range(start, 6):
            assert req.context_slice(start, stop) == whole[start:stop]


def test_bad_chat_messages_and_params_are_refused_before_anything_runs(model_dir):
    llm = make_llm(model_dir)
    calls = [
        (lambda: llm.chat([], GREEDY), "messages must not be empty"),
        (lambda: llm.chat("hello", GREEDY), r"messages must be a list of message dicts.*got str"),
        (lambda: llm.chat({"role": "user", "content": "hi"}, GREEDY), "got dict"),
        (lambda: llm.chat(["hello"], GREEDY), r"messages\[0\] must be a dict with a 'role'"),
        (lambda: llm.chat([{"role": "user", "content": "hi"}], {"max_tokens": 4}),
         r"params must be a SamplingParams or None, got dict.*default_params"),
        (lambda: llm.generate([5, 6], {"max_tokens": 4}), "got dict"),
        (lambda: llm.generate([5, 6], 0.5), "got float"),
    ]
    for call, message in calls:
        with pytest.raises(InvalidRequest, match=message):
            call()
    s = llm.session()
    s.tool_call("read_file", expected_s=1.0)
    with pytest.raises(InvalidRequest, match="message must not be empty"):
        s.chat([], GREEDY)
    with pytest.raises(InvalidRequest, match="got dict"):
        s.generate("hi", {"max_tokens": 4})
    assert s._pending_tool == ("read_file", 1.0)  # a refused step keeps the pending hint
    assert s.messages == [] and s.context is None and not llm._chat_contexts
    assert llm.engine.manager.stats().queried_tokens == 0
    assert llm.generate([5, 6], GREEDY)[0].token_ids  # the engine still serves


def _team_in_call(llm: LLM, prompt: list[int]) -> tuple[set[int], int]:
    """(torch's counts the call's steps ran on, as `on_output` sees them on the calling
    thread; that thread's count once the call returned)."""
    seen: set[int] = set()
    llm.generate(prompt, GREEDY, on_output=lambda out: seen.add(torch.get_num_threads()))
    return seen, torch.get_num_threads()


def _new_thread_count() -> int:
    """The count a thread started now begins with (torch.set_num_threads sets it too)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(torch.get_num_threads).result()


def test_llm_calls_run_within_a_cpu_quota_and_poll_its_governor(model_dir, monkeypatch,
                                                                two_threads):
    """The offline path gets what kvsaga-serve's engine thread gets: torch's team within
    the quota (rounded up to cores) in every call, from whichever thread, and under
    KVSAGA_CPU_THREADS=adaptive a governor polled after every step of a call; the calling
    thread has its own count back once the call returns (and after `LLM()`)."""
    from concurrent.futures import ThreadPoolExecutor

    from kvsaga.engine import cpu_threads

    with ThreadPoolExecutor(1) as pool:
        pool.submit(torch.get_num_threads).result()  # a thread started before the LLM
        monkeypatch.setattr(cpu_threads.CpuQuota, "read", lambda self: 1.0)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("KVSAGA_CPU_THREADS", raising=False)
        fixed = make_llm(model_dir)
        assert torch.get_num_threads() == 2 and fixed.governor is None
        assert _team_in_call(fixed, PROMPTS[3]) == ({1}, 2)
        assert pool.submit(_team_in_call, fixed, PROMPTS[3]).result() == ({1}, 2)
        monkeypatch.setenv("KVSAGA_CPU_THREADS", "adaptive")
        llm = make_llm(model_dir)
        assert torch.get_num_threads() == 2
        if llm.governor is None:
            pytest.skip("no /proc/stat here: no governor")
        assert (llm.governor.max_threads, llm.governor.threads) == (
            max(2, cpu_threads.team_ceiling()), 1)
        polls: list[int] = []
        monkeypatch.setattr(llm.governor, "poll", lambda: polls.append(1))
        out = llm.generate(PROMPTS[0], GREEDY)[0]
        assert len(out.token_ids) == 12 and len(polls) >= 12


def test_a_second_llm_on_the_same_thread_keeps_the_quota_in_other_threads(
        model_dir, monkeypatch, two_threads):
    """The first LLM lowered the building thread's count to the quota's; the second, built
    there after it, took that for no change and left other threads' calls on their full
    team, past the quota."""
    from concurrent.futures import ThreadPoolExecutor

    from kvsaga.engine import cpu_threads

    monkeypatch.setattr(cpu_threads.CpuQuota, "read", lambda self: 1.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("KVSAGA_CPU_THREADS", raising=False)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(torch.get_num_threads).result()  # a thread started before the LLMs
        first = make_llm(model_dir)
        first.generate(PROMPTS[0], GREEDY)
        second = make_llm(model_dir)
        assert pool.submit(_team_in_call, second, PROMPTS[3]).result()[0] == {1}


class _Neighbour:
    """A load reader: another process on one of two cores at every window."""

    cpus = frozenset({0, 1})
    window_s = 1.0
    foreign = 1.0

    def sample(self) -> float:
        return self.foreign


def _every_poll_a_window(llm: LLM) -> None:
    llm.governor._period_s = 1e-9  # (1 s for real)
    llm.governor._next = 0.0


def test_a_team_the_governor_shrank_is_not_the_next_llms_ceiling(model_dir, monkeypatch,
                                                                  two_threads):
    """Beside a busy neighbour the governor takes a thread off inside the call; the caller
    and threads started later keep two, and a later LLM on a host now free may use both
    (its ceiling was the count the first one left, for good)."""
    from kvsaga.engine import cpu_threads

    load = _Neighbour()
    monkeypatch.setattr(cpu_threads.ForeignLoad, "open", classmethod(lambda cls: load))
    monkeypatch.setattr(cpu_threads.CpuQuota, "read", lambda self: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("KVSAGA_CPU_THREADS", "adaptive")
    busy = make_llm(model_dir)
    _every_poll_a_window(busy)
    seen, after = _team_in_call(busy, PROMPTS[0])
    assert 1 in seen and busy.governor.threads == 1
    assert after == 2 and _new_thread_count() == 2
    load.foreign = 0.0  # the neighbour has gone
    free = make_llm(model_dir)
    assert free.governor.max_threads == max(2, cpu_threads.team_ceiling())
    _every_poll_a_window(free)
    for _ in range(2):  # two windows that agree
        free.generate(PROMPTS[0], GREEDY)
    assert free.governor.threads == 2 and torch.get_num_threads() == 2


# -- steps a session cannot mix, text that is not Unicode, template arguments ------------


def test_chat_after_a_raw_step_is_refused_and_changes_nothing(model_dir):
    """`chat` re-renders the session's messages, which do not hold what `generate` added:
    it dropped that text silently (and recomputed the context), where each step promises to
    extend the last one's exact ids. Now it is refused; `generate` after `chat` still
    extends the context."""
    llm = make_llm(model_dir)
    short = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    s = llm.session()
    s.chat("hi", short)
    after_chat = s.context_ids
    s.generate("tool result: 42\n", short)
    assert s.context_ids[: len(after_chat)] == after_chat
    before = (s.context_ids, list(s.messages), llm.engine.manager.stats().queried_tokens)
    with pytest.raises(InvalidRequest, match=r"holds raw text from generate\(\).*new session"):
        s.chat("and now?", short)
    assert (s.context_ids, s.messages, llm.engine.manager.stats().queried_tokens) == before
    out = s.generate("more", short)  # the raw text goes on
    assert out.num_prompt_tokens > len(before[0])
    s.end()
    llm.engine.manager.check_integrity()


def test_lone_surrogates_are_refused_naming_where(model_dir, monkeypatch):
    """A str holding a lone surrogate (bytes that are not UTF-8, read with surrogateescape)
    made the tokenizer raise `TypeError: TextInputSequence must be str`."""
    from kvsaga.engine.chat_template import ChatTemplate

    llm = make_llm(model_dir)
    bad = "caf\udce9"
    where = r" holds a lone surrogate '\\udce9' at character 4, which is not Unicode text"
    s = llm.session()
    calls = [
        (lambda: llm.generate(bad, GREEDY), "prompt"),
        (lambda: llm.generate(["ok", bad], GREEDY), "prompt"),
        (lambda: llm.chat([{"role": "user", "content": bad}], GREEDY),
         r"messages\[0\]\['content'\]"),
        (lambda: s.chat(bad, GREEDY), "message"),
        (lambda: s.chat([{"role": "user", "content": "ok"}, {"role": "user", "content": bad}],
                        GREEDY), r"message\[1\]\['content'\]"),
        (lambda: s.generate(bad, GREEDY), "text"),
    ]
    for call, label in calls:
        with pytest.raises(InvalidRequest, match=f"^{label}{where}"):
            call()
    # Text nested in a content list reaches the prompt through the template alone.
    parts = "{% for m in messages %}{% for p in m['content'] %}{{ p['text'] }}{% endfor %}" \
            "{% endfor %}"
    monkeypatch.setattr(llm.tokenizer, "chat_template", ChatTemplate(parts, {}))
    nested = [{"role": "user", "content": [{"type": "text", "text": bad}]}]
    with pytest.raises(InvalidRequest, match=f"^the rendered chat prompt{where}"):
        llm.chat(nested, GREEDY)
    assert s.context is None and s.messages == [] and not llm._chat_contexts
    assert llm.engine.manager.stats().queried_tokens == 0


def test_chat_takes_add_generation_prompt(model_dir, monkeypatch):
    """`add_generation_prompt=False` (vLLM's `LLM.chat` takes it) raised a TypeError: it
    reached the template call beside the positional True."""
    llm = make_llm(model_dir)
    seen = []
    real = llm.tokenizer.apply_chat_template

    def spy(messages, add_generation_prompt=True, **kwargs):
        seen.append(add_generation_prompt)
        return real(messages, add_generation_prompt, **kwargs)

    monkeypatch.setattr(llm.tokenizer, "apply_chat_template", spy)
    msgs = [{"role": "user", "content": "hi"}]
    assert llm.chat(msgs, GREEDY, add_generation_prompt=False).token_ids
    assert llm.chat(msgs, GREEDY).token_ids
    assert seen == [False, True]
    with pytest.raises(InvalidRequest, match="add_generation_prompt must be True or False"):
        llm.chat(msgs, GREEDY, add_generation_prompt="no")


def test_an_answer_cut_inside_a_character_keeps_its_whole_characters(model_dir):
    """An answer cut by max_tokens inside a multi-byte character decodes to text ending in
    U+FFFD, which the next turn's prompt (the answer's text without it) never starts with:
    only the prompt's ids were reused. Now its ids up to the last whole character are."""
    from kvsaga.engine.tokenizer import Tokenizer

    tok = Tokenizer.from_hf_dir(model_dir)  # byte-level: "é" is two tokens
    prompt_text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], True)
    prompt = tok.encode(prompt_text, add_special_tokens=False)
    out = tok.encode("ok é", add_special_tokens=False)[:-1]  # the first byte of "é" only
    ctx = TokenContext.of_step(tok, prompt, prompt_text, out)
    assert ctx.text.endswith("\ufffd")
    follow = prompt_text + "ok </s><s>user: more</s>"
    assert ctx.known_prefix(follow) == (len(prompt_text) + 3, prompt + out[:3])
    ids = encode_continuing(tok, [ctx], follow, False)
    assert tok.decode(ids, skip_special_tokens=False) == follow
    # An answer wholly inside one character leaves the prompt's ids.
    lone = TokenContext.of_step(tok, prompt, prompt_text, out[-1:])
    assert lone.known_prefix(prompt_text + "</s>") == (len(prompt_text), prompt)
