"""An interrupt as the manager's `allocate_slots` or `decode_step` returns (on the C++ core,
CPython raises a pending signal as the ManagerCore call returns: the slots allocated, the
books whole, the result lost to the engine) leaves the engine able to step on to the same
greedy tokens (s55 ccut "Remaining", s56 cuts item 5).

Before, the engine's scheduler adapter never learnt of those slots: `schedule`'s take-back
(`_discard_unrun`) discarded only the chunks it had recorded, so the tokens stayed counted as
computed though no pass wrote them (the retry computed past them: other tokens), and a
decode step's tokens, appended to the sessions, were still pending on the requests (the retry
appended them again). Now `Scheduler.allocate` records the chunk's start before the call and
`_append_pending` reads, for each pending request, whether its token got its slot: both are
taken back with the rest. The cut is delivered by a stand-in that runs the real call, then
raises KeyboardInterrupt (where the signal lands), once.
"""

from __future__ import annotations

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
from tests.engine.helpers import drain

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
PROMPTS = [[(7 + 13 * i) % 250 + 3 for i in range(50)],
           [(11 + 5 * i) % 250 + 3 for i in range(37)]]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def make(model_dir) -> LLMEngine:
    return LLMEngine(str(model_dir), device="cpu", progress=False,
                     kv_memory_bytes=4 * 2**20, max_num_batched_tokens=24)


@pytest.fixture(scope="module")
def reference(model_dir) -> list[list[int]]:
    engine = make(model_dir)
    reqs = [engine.add_request(p, GREEDY) for p in PROMPTS]
    drain(engine)
    return [r.output_ids for r in reqs]


def _cut_after(engine: LLMEngine, name: str, at: int) -> list[int]:
    """The manager's `name` raises KeyboardInterrupt as its `at`-th call returns (its effect
    done); returns a list that records each call."""
    real, calls = getattr(engine.manager, name), []

    def cut(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return out

    setattr(engine.manager, name, cut)
    return calls


@pytest.mark.parametrize("name,at", [("allocate_slots", 1), ("allocate_slots", 2),
                                     ("allocate_slots", 4), ("decode_step", 1),
                                     ("decode_step", 3)])
def test_a_cut_as_the_slots_are_returned_steps_on_to_the_same_tokens(model_dir, reference,
                                                                       core, monkeypatch,
                                                                       name, at):
    monkeypatch.setenv("KVSAGA_CORE", core.name)  # (the engine's manager: that core)
    engine = make(model_dir)
    assert (engine.manager._hot is not None) == (core.name == "cpp")
    calls = _cut_after(engine, name, at)
    reqs = [engine.add_request(p, GREEDY) for p in PROMPTS]
    cut = False
    while engine.has_unfinished():
        try:
            engine.step()
        except KeyboardInterrupt:
            assert not cut
            cut = True
            engine.manager.check_integrity()
            assert engine.scheduler._chunks == {} and engine.scheduler._decoded == {}
    assert cut and len(calls) >= at
    assert [r.output_ids for r in reqs] == reference  # was: other tokens, or a raise
    engine.manager.check_integrity()
    assert engine.manager.stats().num_used_blocks == 0


def test_a_decode_step_cut_once_the_tokens_were_appended_appends_none_twice(model_dir, reference,
                                                                            core, monkeypatch):
    """A decode step cut after its appends, before any slot (the Python core's own loop can
    stop there): the tokens are in the contexts, not pending any more; the next step gives
    them their slots (was: appended a second time)."""
    monkeypatch.setenv("KVSAGA_CORE", core.name)
    engine = make(model_dir)
    manager, fired = engine.manager, []

    def decode_step(session_ids, token_ids, *, now=None):
        if fired:
            return type(manager).decode_step(manager, session_ids, token_ids, now=now)
        fired.append(1)
        for sid, tok in zip(session_ids, token_ids, strict=True):
            manager.append_tokens(sid, [tok])
        raise KeyboardInterrupt

    monkeypatch.setattr(manager, "decode_step", decode_step)
    reqs = [engine.add_request(p, GREEDY) for p in PROMPTS]
    while engine.has_unfinished():
        try:
            engine.step()
        except KeyboardInterrupt:
            manager.check_integrity()
        for r in reqs:  # the manager's context: the request's, less a token still pending
            if not r.finished and r.session_id in manager.sessions:
                assert len(manager.session(r.session_id).token_ids) == (
                    r.num_tokens - (r.pending_token is not None))  # was: one token twice
    assert fired
    assert [r.output_ids for r in reqs] == reference
    manager.check_integrity()


@pytest.mark.parametrize("at", [1, 2])
def test_a_flush_cut_as_its_token_is_appended_appends_it_once(model_dir, reference, core,
                                                               monkeypatch, at):
    """A step with a prefill chunk appends each pending token on its own (`flush`); an
    interrupt as that `append_tokens` returns leaves the token appended: the retry does not
    append it a second time (was: the session's context held the token twice;
    review s57 interrupts)."""
    monkeypatch.setenv("KVSAGA_CORE", core.name)
    engine = make(model_dir)
    calls = _cut_after(engine, "append_tokens", at)
    reqs = [engine.add_request(p, GREEDY) for p in PROMPTS]
    cut = False
    while engine.has_unfinished():
        try:
            engine.step()
        except KeyboardInterrupt:
            assert not cut
            cut = True
            engine.manager.check_integrity()
            for r in reqs:  # the manager's context: the request's, less a token pending
                s = engine.manager.sessions.get(r.session_id)
                if not r.finished and s is not None:
                    assert len(s.token_ids) == r.num_tokens - (r.pending_token is not None)
    assert cut and len(calls) >= at
    assert [r.output_ids for r in reqs] == reference
    engine.manager.check_integrity()
